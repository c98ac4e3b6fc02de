package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// pipeline is the devices.Sink every device writes into. Per sample it
// numbers and stamps it (ingest.Stream), appends it to storage (with the
// device's durable callback), publishes video to the live tap, and notes
// activity on the sample's cell.
//
// Devices call Write from their own goroutines; each stream's ingest state
// is guarded by its own mutex, held across Process and Append so that a
// stream's samples reach storage in seq order.
//
// When storage refuses a sample (full, or overloaded past its bounded
// wait), its seq is taken back, the refusal is counted and logged (once per
// burst), the stream's next stored sample is flagged sample.Refused (so the
// quality report accounts the gap to storage), and Write returns the error
// to the device, which knows what the loss means: a camera marks its next stored frame with Discontinuity and
// the dropped count; an MQTT device withholds the acknowledgement so the
// broker redelivers the message.
type pipeline struct {
	store *storage.Store
	// appendFn is store.Append (a seam for tests of refusals).
	appendFn func([]sample.Sample, func(error)) error
	log      *slog.Logger
	// live receives every video sample (the WHEP live tap); may be nil.
	live interface {
		Publish(d sample.Descriptor, s sample.Sample)
	}
	// observe notes a sample on a cell (idle timeout); may be nil.
	observe func(cell string, recvT int64)
	// cellOf maps a device id to its cell ("" if none).
	cellOf func(device string) string
	// onStream is told about each new stream of a cell; may be nil.
	onStream func(cell, stream string)
	now      func() time.Time

	refused *prometheus.CounterVec

	mu struct {
		sync.Mutex
		streams map[string]*streamState
	}
}

type streamState struct {
	mu   sync.Mutex
	proc *ingest.Stream
	cell string
	// rejectLogged limits the refusal log to one line per burst.
	rejectLogged time.Time
	// refused: storage refused a sample since the last stored one; the
	// next stored sample is flagged sample.Refused.
	refused bool
}

// clockOptions tune every stream's clock estimator. The estimator sees
// only capture-to-arrival delays, so it cannot tell a device's clock offset
// from the smallest delay it ever sees (the LAN hop, a broker, the
// gateway's receive path): aligned times are late by that minimum. The
// error floor, added to every stated bound, allows for it; 0.5 ms covers a
// LAN hop and a broker for payloads up to a few hundred KB, as measured in
// the end-to-end test (internal/e2e).
var clockOptions = ingest.ClockOptions{ErrorFloor: 500 * time.Microsecond}

func newPipeline(store *storage.Store, log *slog.Logger, reg prometheus.Registerer) *pipeline {
	p := &pipeline{store: store, appendFn: store.Append, log: log.With("component", "pipeline"), now: time.Now}
	p.mu.streams = map[string]*streamState{}
	p.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "episoded_pipeline_refused_samples_total",
		Help: "Samples storage refused (full or overloaded), by stream and reason.",
	}, []string{"stream", "reason"})
	if reg != nil {
		reg.MustRegister(p.refused, newStreamCollector(p))
	}
	return p
}

// Describe implements devices.Sink: it stores the descriptor (a new version
// when it changed) and creates or updates the stream's ingest state,
// continuing seq from storage after a restart.
func (p *pipeline) Describe(d sample.Descriptor) error {
	d.Since = p.now().UnixNano()
	stored, err := p.store.PutDescriptor(d)
	if err != nil {
		return fmt.Errorf("store descriptor of %s: %w", d.Stream, err)
	}
	p.mu.Lock()
	st := p.mu.streams[d.Stream]
	p.mu.Unlock()
	if st != nil {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.proc.SetDescriptor(stored, p.now().UnixNano())
	}
	var lastSeq uint64
	if last, err := p.store.LastSample(d.Stream); err == nil {
		lastSeq = last.Seq
	} else if !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("read last sample of %s: %w", d.Stream, err)
	}
	proc, err := ingest.NewStream(stored, lastSeq, clockOptions)
	if err != nil {
		return fmt.Errorf("start stream %s: %w", d.Stream, err)
	}
	st = &streamState{proc: proc}
	if p.cellOf != nil {
		st.cell = p.cellOf(d.Device)
	}
	p.mu.Lock()
	if existing := p.mu.streams[d.Stream]; existing != nil {
		p.mu.Unlock()
		return nil // described concurrently; the first one wins
	}
	p.mu.streams[d.Stream] = st
	p.mu.Unlock()
	// Outside p.mu and st.mu: the cells take their own lock. (The cells'
	// worker takes a stream's lock, never under the cell's lock.)
	if p.onStream != nil && st.cell != "" {
		p.onStream(st.cell, d.Stream)
	}
	return nil
}

// Write implements devices.Sink.
func (p *pipeline) Write(s sample.Sample, done func(error)) error {
	p.mu.Lock()
	st := p.mu.streams[s.Stream]
	p.mu.Unlock()
	if st == nil {
		return fmt.Errorf("pipeline: stream %q was not described", s.Stream)
	}
	st.mu.Lock()
	if st.refused {
		s.Flags |= sample.Refused
	}
	st.proc.Process(&s)
	err := p.appendFn([]sample.Sample{s}, done)
	if err != nil {
		st.proc.Unprocess(&s)
		st.refused = true
		p.refusedLocked(st, s.Stream, err)
		st.mu.Unlock()
		return err
	}
	st.refused = false
	desc := st.proc.Descriptor()
	cell := st.cell
	st.mu.Unlock()

	if p.live != nil && desc.Kind == sample.KindVideo {
		p.live.Publish(desc, s)
	}
	if p.observe != nil && cell != "" {
		p.observe(cell, s.RecvT)
	}
	return nil
}

func (p *pipeline) refusedLocked(st *streamState, stream string, err error) {
	reason := "error"
	switch {
	case errors.Is(err, storage.ErrFull):
		reason = "full"
	case errors.Is(err, storage.ErrOverloaded):
		reason = "overloaded"
	}
	p.refused.WithLabelValues(stream, reason).Inc()
	if now := p.now(); now.Sub(st.rejectLogged) > 10*time.Second {
		st.rejectLogged = now
		p.log.Warn("storage refused samples", "stream", stream, "reason", reason, "err", err)
	}
}

// stream returns the ingest state of a stream, or nil.
func (p *pipeline) stream(name string) *streamState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.streams[name]
}

// streamStatus is one stream's row in /v1/status.
type streamStatus struct {
	Stream   string                `json:"stream"`
	Cell     string                `json:"cell,omitempty"`
	Kind     sample.Kind           `json:"kind"`
	Codec    sample.Codec          `json:"codec"`
	Device   string                `json:"device"`
	Counters ingest.StreamCounters `json:"counters"`
	Clock    ingest.ClockStatus    `json:"clock"`
}

// statusMaxStreams bounds the stream rows of /v1/status; streams_total
// and streams_truncated tell when there are more (each mqtt device's
// max_streams already bounds how many there can be).
const statusMaxStreams = 500

// streamCount returns the number of streams described so far.
func (p *pipeline) streamCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mu.streams)
}

// status returns the first statusMaxStreams streams by name.
func (p *pipeline) status() []streamStatus {
	p.mu.Lock()
	names := make([]string, 0, len(p.mu.streams))
	for k := range p.mu.streams {
		names = append(names, k)
	}
	slices.Sort(names)
	if len(names) > statusMaxStreams {
		names = names[:statusMaxStreams]
	}
	states := make(map[string]*streamState, len(names))
	for _, k := range names {
		states[k] = p.mu.streams[k]
	}
	p.mu.Unlock()
	out := make([]streamStatus, 0, len(states))
	for name, st := range states {
		st.mu.Lock()
		d := st.proc.Descriptor()
		out = append(out, streamStatus{
			Stream: name, Cell: st.cell, Kind: d.Kind, Codec: d.Codec, Device: d.Device,
			Counters: st.proc.Counters(), Clock: st.proc.ClockStatus(),
		})
		st.mu.Unlock()
	}
	sortBy(out, func(s streamStatus) string { return s.Stream })
	return out
}

// compile-time check
var _ devices.Sink = (*pipeline)(nil)
