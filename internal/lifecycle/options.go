package lifecycle

import (
	"errors"
	"fmt"
	"log/slog"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// Defaults of the cells' quality thresholds (internal/config refers to
// them) and of the store's commit cadence the settle margin allows for.
const (
	DefaultGapFactor         = ingest.DefaultGapFactor
	DefaultMinCoverage       = 0.99
	DefaultMaxAlignmentBound = 5 * time.Millisecond
	DefaultSyncInterval      = storage.DefaultSyncInterval
)

// Options configure the Cells. Zero values take the defaults above
// (EnsureDefaults); Validate reports every problem at once.
type Options struct {
	// Cells are the configured cells.
	Cells []CellOptions
	// Devices are the configured devices. A device names its cell; a
	// device with a fixed Stream adds that stream to its cell's episodes.
	Devices []Device
	// SyncInterval is the store's commit cadence
	// (storage.Options.SyncInterval). An episode's final report waits one
	// second plus this long after its window ends, so that samples still
	// in flight (device latency, the last commit) are in it.
	SyncInterval time.Duration
	// Settled, if set, is called after an episode is stored closed or
	// interrupted with its final report (wake the uploader): on the
	// cell's worker, or in Recover for an episode a crash left open; once
	// per episode. It must not block.
	Settled func(episode.Episode)
	// TimeSync, if set, reads the kernel's time-sync state as an episode
	// closes (provenance).
	TimeSync func() *episode.TimeSync
	// Sources, if set, returns the devices' connection states; Run polls
	// it every second for the offline accounting of the quality report.
	Sources    func() []devices.Status
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// CellOptions configure one cell: its episode timers (ingest.CellOptions)
// and the thresholds of its quality verdict.
type CellOptions struct {
	ID string
	// Preroll and Postroll widen each episode's window.
	Preroll, Postroll time.Duration
	// MaxDuration rolls an episode over into a new, linked one; 0 never,
	// else at least a second.
	MaxDuration time.Duration
	// IdleTimeout stops an episode when no sample arrived on the cell for
	// this long; 0 never.
	IdleTimeout time.Duration
	// GapFactor: a telemetry gap longer than GapFactor times the stream's
	// typical period counts as a gap; at least 1. Default DefaultGapFactor.
	GapFactor float64
	// MinCoverage, MaxAlignmentBound and RequiredStreams are the verdict's
	// thresholds (ingest.QualityOptions).
	MinCoverage       float64
	MaxAlignmentBound time.Duration
	RequiredStreams   []string
}

// Device is what the cells need to know of a configured device.
type Device struct {
	ID string
	// Cell is the id of the device's cell ("" if none: its samples are
	// stored but belong to no episode).
	Cell string
	// Stream is the device's fixed stream id (a camera, a WHIP
	// publisher); "" for devices whose streams appear from their data
	// (MQTT topics).
	Stream string
	// Kind and Codec describe a fixed stream that never produced a sample
	// (no descriptor stored): its report still says what was missing.
	Kind  sample.Kind
	Codec sample.Codec
	// Conn is the connection whose outages silence the device (the MQTT
	// broker it is on); default the device itself.
	Conn string
	// Rate is the nominal sample rate in Hz that coverage is measured
	// against; 0 learns it from the data.
	Rate float64
}

// EnsureDefaults fills zero values with the defaults. It is idempotent.
func (o *Options) EnsureDefaults() {
	if o.SyncInterval == 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	for i := range o.Cells {
		o.Cells[i].EnsureDefaults()
	}
	for i := range o.Devices {
		if o.Devices[i].Conn == "" {
			o.Devices[i].Conn = o.Devices[i].ID
		}
		if o.Devices[i].Stream != "" && o.Devices[i].Kind == "" {
			o.Devices[i].Kind = sample.KindTelemetry
		}
	}
}

// EnsureDefaults fills the cell's zero thresholds with the defaults.
func (o *CellOptions) EnsureDefaults() {
	if o.GapFactor == 0 {
		o.GapFactor = DefaultGapFactor
	}
	if o.MinCoverage == 0 {
		o.MinCoverage = DefaultMinCoverage
	}
	if o.MaxAlignmentBound == 0 {
		o.MaxAlignmentBound = DefaultMaxAlignmentBound
	}
}

// Validate reports every problem with the options in one error.
func (o Options) Validate() error {
	var errs []error
	if o.SyncInterval < 0 {
		errs = append(errs, fmt.Errorf("sync interval %s is negative", o.SyncInterval))
	}
	cells := map[string]bool{}
	for _, c := range o.Cells {
		if cells[c.ID] {
			errs = append(errs, fmt.Errorf("cell %q: duplicate id", c.ID))
		}
		cells[c.ID] = true
		if err := c.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("cell %q: %w", c.ID, err))
		}
	}
	devs := map[string]bool{}
	for _, d := range o.Devices {
		switch {
		case d.ID == "":
			errs = append(errs, errors.New("device: id required"))
		case devs[d.ID]:
			errs = append(errs, fmt.Errorf("device %q: duplicate id", d.ID))
		}
		devs[d.ID] = true
		if d.Cell != "" && !cells[d.Cell] {
			errs = append(errs, fmt.Errorf("device %q: unknown cell %q", d.ID, d.Cell))
		}
		if d.Rate < 0 {
			errs = append(errs, fmt.Errorf("device %q: rate %v is negative", d.ID, d.Rate))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lifecycle options: %w", err)
	}
	return nil
}

// Validate reports every problem with the cell's options in one error
// (joined with errors.Join; each problem starts with the config key, under
// cells[id], it is about). It expects EnsureDefaults to have run.
func (o CellOptions) Validate() error {
	errs := []error{o.machine().Validate()}
	if !(o.GapFactor >= 1) {
		errs = append(errs, fmt.Errorf("gap_factor: must be at least 1 (got %v)", o.GapFactor))
	}
	if !(o.MinCoverage >= 0 && o.MinCoverage <= 1) {
		errs = append(errs, fmt.Errorf("quality.min_coverage: %v is not between 0 and 1", o.MinCoverage))
	}
	if o.MaxAlignmentBound < 0 {
		errs = append(errs, errors.New("quality.max_alignment_bound: must not be negative"))
	}
	for _, pat := range o.RequiredStreams {
		if _, err := path.Match(pat, ""); err != nil || pat == "" {
			errs = append(errs, fmt.Errorf("quality.required_streams: %q is not a stream id or pattern", pat))
		}
	}
	return errors.Join(errs...)
}

// machine returns the options of the cell's state machine.
func (o CellOptions) machine() ingest.CellOptions {
	return ingest.CellOptions{ID: o.ID, Preroll: o.Preroll, Postroll: o.Postroll, MaxDuration: o.MaxDuration, IdleTimeout: o.IdleTimeout}
}

// quality returns the thresholds of the cell's verdict.
func (o CellOptions) quality() ingest.QualityOptions {
	return ingest.QualityOptions{MinCoverage: o.MinCoverage, MaxAlignmentBound: o.MaxAlignmentBound, Required: o.RequiredStreams}
}

// SinkOptions configure the Sink.
type SinkOptions struct {
	// Live receives every video sample (the WHEP live tap); may be nil.
	Live interface {
		Publish(d sample.Descriptor, s sample.Sample)
	}
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// EnsureDefaults fills zero values with the defaults. It is idempotent.
func (o *SinkOptions) EnsureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with the options (there is none to have
// today: every field may be zero).
func (o SinkOptions) Validate() error { return nil }
