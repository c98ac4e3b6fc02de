package lifecycle

import (
	"cmp"
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

// Sink is the devices.Sink every device writes into. Per sample it
// numbers and stamps it (ingest.Stream), appends it to storage (with the
// device's durable callback), publishes video to the live tap, and notes
// activity on the sample's cell.
//
// Devices call Write from their own goroutines; each stream's ingest state
// is guarded by its own mutex (streamState.mu), held across Process and
// Append so that a stream's samples reach storage in seq order. Append
// queues the sample in memory (storage commits it on its own goroutine);
// it blocks only under storage's backpressure, for at most its
// AppendTimeout. See the package doc for the lock order.
//
// When storage refuses a sample (full, or overloaded past its bounded
// wait), its seq is taken back, the refusal is counted and logged (once per
// burst), the stream's next stored sample is flagged sample.Refused (so the
// quality report accounts the gap to storage; the refused span is also
// kept, in memory, for a gap that no stored sample ends: storage refused
// until the window's end), and Write returns the error
// to the device, which knows what the loss means: a camera marks its next
// stored frame with Discontinuity and the dropped count; an MQTT device
// withholds the acknowledgement so the broker redelivers the message.
type Sink struct {
	store *storage.Store
	// appendFn is store.Append (a seam for tests of refusals).
	appendFn func([]sample.Sample, func(error)) error
	log      *slog.Logger
	live     interface {
		Publish(d sample.Descriptor, s sample.Sample)
	}
	// cells are told about each sample's cell (idle timeout) and each new
	// stream of a cell; set once by New, before any device runs.
	cells *Cells

	refused *prometheus.CounterVec

	// mu guards the stream map only (lookups and inserts); nothing else
	// is taken under it.
	mu struct {
		sync.Mutex
		streams map[string]*streamState
	}
}

type streamState struct {
	// mu guards the stream's ingest state and the fields below; held
	// across Process and Append (seq order).
	mu   sync.Mutex
	proc *ingest.Stream
	cell string
	// one passes a sample to Append without allocating a slice per call.
	one [1]sample.Sample
	// rejectLogged limits the refusal log to one line per burst.
	rejectLogged time.Time
	// refused: storage refused a sample since the last stored one; the
	// next stored sample is flagged sample.Refused.
	refused bool
	// refusals are the spans (aligned time of the samples refused) over
	// which storage refused samples, the last one open while refused, at
	// most maxRefusals: the quality report accounts a gap no stored
	// sample ends (refused until the window's end) to storage. Kept in
	// memory: a report rebuilt after a restart has only the flags.
	refusals []ingest.Interval
}

const maxRefusals = 256

// refuseLocked notes that the sample at t was refused. The caller holds
// st.mu.
func (st *streamState) refuseLocked(t int64) {
	if st.refused && len(st.refusals) > 0 {
		last := &st.refusals[len(st.refusals)-1]
		last.From, last.To = min(last.From, t), max(last.To, t)
		return
	}
	if len(st.refusals) == maxRefusals {
		st.refusals = append(st.refusals[:0], st.refusals[1:]...)
	}
	st.refusals = append(st.refusals, ingest.Interval{From: t, To: t})
}

// refusalsLocked returns the refusal spans overlapping [from, to]. The
// caller holds st.mu.
func (st *streamState) refusalsLocked(from, to int64) []ingest.Interval {
	var out []ingest.Interval
	for _, iv := range st.refusals {
		if iv.From <= to && from <= iv.To {
			out = append(out, iv)
		}
	}
	return out
}

// clockOptions tune every stream's clock estimator. The estimator sees
// only capture-to-arrival delays, so it cannot tell a device's clock offset
// from the smallest delay it ever sees (the LAN hop, a broker, the
// gateway's receive path): aligned times are late by that minimum. The
// error floor, added to every stated bound, allows for it; 0.5 ms covers a
// LAN hop and a broker for payloads up to a few hundred KB, as measured in
// the end-to-end test (internal/e2e).
var clockOptions = ingest.ClockOptions{ErrorFloor: 500 * time.Microsecond}

// NewSink returns the sink writing into store. It starts nothing.
func NewSink(store *storage.Store, o SinkOptions) *Sink {
	o.EnsureDefaults()
	p := &Sink{store: store, appendFn: store.Append, log: o.Logger.With("component", "lifecycle.sink"), live: o.Live}
	p.mu.streams = map[string]*streamState{}
	p.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "episoded_pipeline_refused_samples_total",
		Help: "Samples storage refused (full or overloaded), by stream and reason.",
	}, []string{"stream", "reason"})
	if o.Registerer != nil {
		o.Registerer.MustRegister(p.refused, newStreamCollector(p))
	}
	return p
}

// Describe implements devices.Sink: it stores the descriptor (a new version
// when it changed) and creates or updates the stream's ingest state,
// continuing seq from storage after a restart.
func (p *Sink) Describe(d sample.Descriptor) error {
	d.Since = time.Now().UnixNano()
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
		return st.proc.SetDescriptor(stored, time.Now().UnixNano())
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
	if p.cells != nil {
		st.cell = p.cells.cellOf(d.Device)
	}
	p.mu.Lock()
	if existing := p.mu.streams[d.Stream]; existing != nil {
		p.mu.Unlock()
		return nil // described concurrently; the first one wins
	}
	p.mu.streams[d.Stream] = st
	p.mu.Unlock()
	// Outside p.mu and st.mu: the cell takes its own lock.
	if p.cells != nil && st.cell != "" {
		p.cells.AddStream(st.cell, d.Stream)
	}
	return nil
}

// Write implements devices.Sink.
func (p *Sink) Write(s sample.Sample, done func(error)) error {
	p.mu.Lock()
	st := p.mu.streams[s.Stream]
	p.mu.Unlock()
	if st == nil {
		return fmt.Errorf("lifecycle: stream %q was not described", s.Stream)
	}
	st.mu.Lock()
	if st.refused {
		s.Flags |= sample.Refused
	}
	st.proc.Process(&s)
	// One sample per Append, through the stream's own one-element
	// array: storage reads the slice only during the call.
	st.one[0] = s
	err := p.appendFn(st.one[:], done)
	st.one[0] = sample.Sample{}
	if err != nil {
		st.proc.Unprocess(&s)
		st.refuseLocked(s.T)
		st.refused = true
		reason, logNow := p.refusedLocked(st, s.Stream, err)
		st.mu.Unlock()
		if logNow {
			p.log.Warn("storage refused samples", "stream", s.Stream, "reason", reason, "err", err)
		}
		return err
	}
	st.refused = false
	desc := st.proc.Descriptor()
	cell := st.cell
	st.mu.Unlock()

	if p.live != nil && desc.Kind == sample.KindVideo {
		p.live.Publish(desc, s)
	}
	if p.cells != nil && cell != "" {
		p.cells.observe(cell, s.RecvT)
	}
	return nil
}

// refusedLocked counts a refusal and says whether to log it (once per
// burst). The caller holds st.mu.
func (p *Sink) refusedLocked(st *streamState, stream string, err error) (reason string, logNow bool) {
	reason = "error"
	switch {
	case errors.Is(err, storage.ErrFull):
		reason = "full"
	case errors.Is(err, storage.ErrOverloaded):
		reason = "overloaded"
	}
	p.refused.WithLabelValues(stream, reason).Inc()
	if now := time.Now(); now.Sub(st.rejectLogged) > 10*time.Second {
		st.rejectLogged = now
		return reason, true
	}
	return reason, false
}

// stream returns the ingest state of a stream, or nil.
func (p *Sink) stream(name string) *streamState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.streams[name]
}

// StreamStatus is one stream's row in /v1/status.
type StreamStatus struct {
	Stream   string                `json:"stream"`
	Cell     string                `json:"cell,omitempty"`
	Kind     sample.Kind           `json:"kind"`
	Codec    sample.Codec          `json:"codec"`
	Device   string                `json:"device"`
	Counters ingest.StreamCounters `json:"counters"`
	Clock    ingest.ClockStatus    `json:"clock"`
}

// StatusMaxStreams bounds the stream rows of Status (and so of
// /v1/status); StreamCount tells when there are more (each mqtt device's
// max_streams already bounds how many there can be).
const StatusMaxStreams = 500

// StreamCount returns the number of streams described so far.
func (p *Sink) StreamCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mu.streams)
}

// Status returns the first StatusMaxStreams streams by name.
func (p *Sink) Status() []StreamStatus {
	p.mu.Lock()
	names := make([]string, 0, len(p.mu.streams))
	for k := range p.mu.streams {
		names = append(names, k)
	}
	slices.Sort(names)
	if len(names) > StatusMaxStreams {
		names = names[:StatusMaxStreams]
	}
	states := make(map[string]*streamState, len(names))
	for _, k := range names {
		states[k] = p.mu.streams[k]
	}
	p.mu.Unlock()
	out := make([]StreamStatus, 0, len(states))
	for name, st := range states {
		st.mu.Lock()
		d := st.proc.Descriptor()
		out = append(out, StreamStatus{
			Stream: name, Cell: st.cell, Kind: d.Kind, Codec: d.Codec, Device: d.Device,
			Counters: st.proc.Counters(), Clock: st.proc.ClockStatus(),
		})
		st.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b StreamStatus) int { return cmp.Compare(a.Stream, b.Stream) })
	return out
}

// compile-time check
var _ devices.Sink = (*Sink)(nil)
