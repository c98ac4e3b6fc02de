// Package provenance describes where an uploaded episode came from: the
// software that recorded it, a hash of the configuration (secrets
// redacted), the devices with their kinds, codecs and redacted URLs, each
// stream's clock source and figures, and the gateway's own time-sync state
// read from the kernel (adjtimex). The upload manifest carries it as its
// `provenance` block, covered by the manifest's signature.
//
// Static parts (software, config hash, devices) are built once at daemon
// start by Static; Build adds the per-episode parts. Nothing here holds
// secrets: URLs go through internal/redact, and the config hash is taken
// over config.Print's output, which prints every secret as "<redacted>".
package provenance

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/buildinfo"
	"github.com/episoded/episoded/internal/redact"
)

// Provenance is the manifest's provenance block.
type Provenance struct {
	Software buildinfo.Info `json:"software"`
	// ConfigSHA256 is the sha256 of the effective config as `episoded
	// config check --print` shows it (defaults filled in, secrets
	// redacted), so that two gateways with the same settings and different
	// passwords have the same hash.
	ConfigSHA256 string   `json:"config_sha256"`
	Devices      []Device `json:"devices"`
	Streams      []Stream `json:"streams"`
	// TimeSync is the gateway clock's kernel time-sync state; nil only if
	// the kernel could not be asked.
	TimeSync *episode.TimeSync `json:"time_sync"`
}

// Device is one configured device.
type Device struct {
	ID   string `json:"id"`
	Type string `json:"type"` // rtsp, mqtt, whip
	// URL is the camera URL or the MQTT broker URL, with credentials
	// removed.
	URL    string   `json:"url,omitempty"`
	Topics []string `json:"topics,omitempty"`
	// Format is the configured payload format of an MQTT device.
	Format string `json:"format,omitempty"`
	// Clock is the configured clock source (rtcp, payload, arrival; empty
	// means the default).
	Clock string `json:"clock,omitempty"`
	// Kinds and Codecs are those of the device's streams in this episode.
	Kinds  []string `json:"kinds,omitempty"`
	Codecs []string `json:"codecs,omitempty"`
}

// Stream is one stream's clock source and figures in this episode.
type Stream struct {
	Stream string `json:"stream"`
	Device string `json:"device,omitempty"`
	Kind   string `json:"kind,omitempty"`
	Codec  string `json:"codec,omitempty"`
	// Source is the stream's source URL or topic (redacted).
	Source string `json:"source,omitempty"`
	// ClockSource is the clock the samples were stamped with: "device"
	// (mapped from the device clock), "arrival", or "unknown" when the
	// report states none.
	ClockSource string `json:"clock_source"`
	// Clock holds the estimator's figures (offset, drift, jitter, bound).
	Clock                 episode.ClockReport `json:"clock"`
	AlignmentErrorBoundMs float64             `json:"alignment_error_bound_ms"`
}

// StreamInfo is what the recorder knows of a stream beyond its report:
// its device and source (from the stream descriptor).
type StreamInfo struct {
	Device, Source string
}

// Static is the part of the provenance that does not change while the
// daemon runs.
type Static struct {
	Software     buildinfo.Info
	ConfigSHA256 string
	Devices      []Device
}

// Config is what NewStatic needs of the effective configuration;
// *config.Config implements it. (The config package imports the components
// and this package, never the reverse.)
type Config interface {
	// Print returns the config as `episoded config check --print` shows
	// it: defaults filled in, every secret "<redacted>".
	Print() ([]byte, error)
	// ProvenanceDevices lists the configured devices, URLs redacted.
	ProvenanceDevices() []Device
}

// NewStatic builds the static part from the effective config.
func NewStatic(cfg Config) (*Static, error) {
	printed, err := cfg.Print()
	if err != nil {
		return nil, fmt.Errorf("provenance: %w", err)
	}
	sum := sha256.Sum256(printed)
	return &Static{Software: buildinfo.Get(), ConfigSHA256: hex.EncodeToString(sum[:]), Devices: cfg.ProvenanceDevices()}, nil
}

// Build returns the provenance of episode e. info gives each stream's
// device and source (may be nil); ts is the time-sync state to state when
// e carries none (read at upload).
func (s *Static) Build(e episode.Episode, info func(stream string) StreamInfo, ts func() *episode.TimeSync) *Provenance {
	p := &Provenance{Software: s.Software, ConfigSHA256: s.ConfigSHA256, Devices: []Device{}, Streams: []Stream{}}
	byDevice := map[string]*Device{}
	for _, d := range s.Devices {
		d.Topics = slices.Clone(d.Topics)
		p.Devices = append(p.Devices, d)
	}
	for i := range p.Devices {
		byDevice[p.Devices[i].ID] = &p.Devices[i]
	}
	for _, q := range e.Quality {
		st := Stream{Stream: q.Stream, Kind: q.Kind, Codec: q.Codec, ClockSource: cmp.Or(q.Clock.ClockSource, q.Clock.Mode, "unknown"),
			Clock: q.Clock, AlignmentErrorBoundMs: q.AlignmentErrorBoundMs}
		if info != nil {
			in := info(q.Stream)
			st.Device, st.Source = in.Device, redact.URL(in.Source)
		}
		if d := byDevice[st.Device]; d != nil {
			if st.Kind != "" && !slices.Contains(d.Kinds, st.Kind) {
				d.Kinds = append(d.Kinds, st.Kind)
			}
			if st.Codec != "" && !slices.Contains(d.Codecs, st.Codec) {
				d.Codecs = append(d.Codecs, st.Codec)
			}
		}
		p.Streams = append(p.Streams, st)
	}
	for i := range p.Devices {
		slices.Sort(p.Devices[i].Kinds)
		slices.Sort(p.Devices[i].Codecs)
	}
	p.TimeSync = e.TimeSync
	if p.TimeSync == nil && ts != nil {
		p.TimeSync = ts()
	}
	return p
}
