package ingest

import (
	"fmt"
	"math"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
)

// StreamCounters are a stream's running totals since the Stream was made.
type StreamCounters struct {
	Samples uint64 `json:"samples"`
	Bytes   uint64 `json:"bytes"`
	// Discontinuities counts samples flagged sample.Discontinuity.
	Discontinuities uint64 `json:"discontinuities"`
	// Lost and Dropped sum the samples' Lost and Dropped fields.
	Lost    uint64 `json:"lost"`
	Dropped uint64 `json:"dropped"`
	// DecodeErrors counts samples flagged sample.DecodeError.
	DecodeErrors uint64 `json:"decode_errors"`
	// ArrivalStamped counts samples stamped at arrival: arrival mode, or
	// device mode without SrcT yet, with its device time held back, or on
	// arrival fallback (the last three are flagged sample.ArrivalTime).
	ArrivalStamped uint64 `json:"arrival_stamped"`
	// ClockHeld counts samples whose device time the clock held back (a
	// wild value, a step not yet confirmed, or no offset agreed yet) while
	// the stream was on device time.
	ClockHeld uint64 `json:"clock_held"`
	// Reordered counts samples whose aligned time would have gone back
	// before their predecessor's and was raised to it (see Process).
	Reordered uint64 `json:"reordered"`
	// LastSeq, LastT and LastRecvT describe the last sample processed.
	LastSeq   uint64 `json:"last_seq"`
	LastT     int64  `json:"last_t"`
	LastRecvT int64  `json:"last_recv_t"`
}

// ClockStatus is a stream's current clock figures, for status and metrics.
type ClockStatus struct {
	// Mode is "device" while device time maps the samples, else "arrival".
	Mode string `json:"mode"`
	// Source is where the stream's times come from (SourceDevice or
	// SourceArrival) and SourceReason why, when a device-clock stream is on
	// arrival time (or "configured" for arrival mode).
	Source       string  `json:"clock_source"`
	SourceReason string  `json:"clock_source_reason,omitempty"`
	Converged    bool    `json:"converged"`
	OffsetNs     int64   `json:"offset_ns"`
	DriftPPM     float64 `json:"drift_ppm"`
	JitterNs     int64   `json:"jitter_ns"`
	// ErrorBoundNs bounds the alignment error of the last sample.
	ErrorBoundNs int64  `json:"error_bound_ns"`
	Jumps        uint64 `json:"jumps"`
	Outliers     uint64 `json:"outliers"`
	// Events counts clock events by kind since the stream was made.
	Events map[string]uint64 `json:"events,omitempty"`
}

// Stream is the per-stream ingest pipeline: it numbers samples and stamps
// their aligned time. It is on the hot path (tens of nanoseconds, no
// allocation per sample); it is not safe for concurrent use.
type Stream struct {
	desc   sample.Descriptor
	seq    uint64
	clock  *Clock
	device bool // the last sample was stamped from device time
	c      StreamCounters
	// bounds holds the error bounds of device-mode samples as stamped.
	bounds *boundHistory
	trust  trust
	jit    arrivalJitter
	// cad measures the stream's cadence: the typical interval between the
	// device times of consecutive samples taken by the clock.
	cad   arrivalJitter
	haveT bool
	lastT int64 // the last aligned time stamped (T never decreases)
	// lastRecv is the arrival time of the last sample.
	lastRecv int64
	// hedges are the samples of a run above the envelope not yet
	// confirmed as a step: their T and the bound they had if it is one.
	hedges  [pendCap]struct{ t, b int64 }
	nhedges int
	// prevSrc is the device time (decode time for video) of the last
	// sample that had one.
	haveSrc  bool
	prevSrc  int64
	prevSrcT int64
	// early follows the samples stamped through the line before the
	// estimate converged (see settleEarly).
	early struct {
		on       bool
		fromT    int64 // T of the first of them
		maxOff   int64 // the largest offset of the line used
		maxBound int64 // the largest bound stated for them
		widened  int64 // how far the line has moved earlier since
	}
	// bound is the error bound of the last sample as stamped (T, and for
	// video the presentation time T + PTSOffset), with every widening.
	bound int64
	// behind: the last T was held back behind the clock's line to keep T
	// continuous after a step (see Process).
	behind bool
	// vid follows a video stream's frame reordering (B-frames); see
	// Process.
	vid struct {
		depth int64 // the largest PTSOffset seen: the reordering delay
		n     int   // frames seen, up to depthFrames
		haveT bool
		lastT int64 // the last decode T stamped
	}
}

// maxReorder caps a video stream's reordering delay (see decodeOrder): 1 s
// covers B-pyramids at any frame rate cameras use.
const maxReorder = int64(time.Second)

// depthFrames is how many frames a video stream's reordering depth is
// learned over: the deepest reordering H.264 and H.265 allow is 16
// frames, so by then a frame of the deepest kind has been seen.
const depthFrames = 16

// NewStream returns the pipeline for the stream described by d. lastSeq is
// the last sequence number stored for the stream (0 for a new stream), so
// that numbering continues gaplessly after a restart. opts tune the clock
// estimator used in device mode; the zero value means defaults.
func NewStream(d sample.Descriptor, lastSeq uint64, opts ClockOptions) (*Stream, error) {
	switch d.Clock {
	case sample.ClockDevice, sample.ClockArrival:
	default:
		return nil, fmt.Errorf("ingest: stream %s: unknown clock mode %q", d.Stream, d.Clock)
	}
	if d.Latency < 0 {
		return nil, fmt.Errorf("ingest: stream %s: negative latency %v", d.Stream, time.Duration(d.Latency))
	}
	c, err := NewClock(opts)
	if err != nil {
		return nil, fmt.Errorf("ingest: stream %s: %w", d.Stream, err)
	}
	return &Stream{desc: d, seq: lastSeq, clock: c, c: StreamCounters{LastSeq: lastSeq}, bounds: &boundHistory{},
		trust: trust{o: c.o}, cad: arrivalJitter{periodOnly: true}}, nil
}

// Descriptor returns the stream's current descriptor.
func (s *Stream) Descriptor() sample.Descriptor { return s.desc }

// SetDescriptor replaces the descriptor (new parameter sets, a new latency
// or clock mode). Sequence numbers and the clock estimate carry on; a
// change of clock mode is recorded as a clock event at time now.
func (s *Stream) SetDescriptor(d sample.Descriptor, now int64) error {
	switch d.Clock {
	case sample.ClockDevice, sample.ClockArrival:
	default:
		return fmt.Errorf("ingest: stream %s: unknown clock mode %q", d.Stream, d.Clock)
	}
	if d.Clock != s.desc.Clock {
		s.clock.addEvent(episode.ClockEvent{T: now, Kind: EventMode,
			Detail: fmt.Sprintf("clock mode changed from %s to %s", s.desc.Clock, d.Clock)})
	}
	s.desc = d
	return nil
}

// Process numbers one raw sample from the device and stamps its aligned
// time: it sets Seq (gapless, continuing from lastSeq) and T, fills Stream
// if empty, may add sample.ArrivalTime to Flags, and updates the counters.
// SrcT, RecvT, Lost, Dropped, PTSOffset and Payload are read, never changed.
//
// Video: SrcT is the frame's presentation (capture) time on the device
// clock and PTSOffset its presentation minus decode time (PTS - DTS, 0
// without B-frames). The clock is fed the decode time SrcT - PTSOffset,
// which only increases in the order the camera sends frames, so B-frames
// never look like a clock stepping back; T is then the aligned decode time
// (see decodeOrder), which never decreases, and T + PTSOffset the aligned
// presentation time.
//
// Device-mode samples with SrcT != 0 go through the clock estimator;
// arrival-mode samples, and device-mode samples without SrcT (RTSP before
// the first RTCP sender report), are stamped RecvT - Latency. The switch
// between the two in device mode is recorded as a clock event. A sample
// whose device time the clock holds back (wild, or a step not yet
// confirmed) is stamped at arrival and flagged; a stream whose device
// clock is unusable (see trust) is stamped RecvT - Latency until it is
// consistent again.
//
// Order: per stream, T never decreases. When the estimate would put a
// sample before its predecessor (a step of the device clock not yet
// confirmed, the envelope moving, a gateway clock step), T is raised to
// the predecessor's T, its bound widened by the difference, and counted in
// Reordered. So the stored order (time, then seq) is the arrival order,
// which for video is the decode order, and no export ever shows samples
// out of order.
func (s *Stream) Process(x *sample.Sample) {
	s.seq++
	x.Seq = s.seq
	if x.Stream == "" {
		x.Stream = s.desc.Stream
	}
	if s.desc.Clock == sample.ClockDevice {
		s.jit.add(x.RecvT, x.Flags&sample.Discontinuity != 0 || x.Lost > 0 || x.Dropped > 0)
	}
	video := s.desc.Kind == sample.KindVideo
	bound, jumped := s.stamp(x, video)
	if video {
		bound = s.decodeOrder(x, bound)
	}
	s.bound = bound
	if s.desc.Clock == sample.ClockDevice {
		s.bounds.add(x.T, bound)
		s.hedge(x.T, bound, jumped)
		s.settleEarly(x.T, bound, x.SrcT != 0 && x.Flags&sample.ArrivalTime == 0, jumped)
	}
	s.count(x)
}

// decodeOrder turns a video frame's stamp (in T: the aligned time its
// decode time maps to) into its decode time on the gateway clock, T minus
// the stream's reordering delay, never below the previous frame's T
// (storage keys on T, so the stored order is the camera's order). PTSOffset
// is left as the device gave it, so that T + PTSOffset is the presentation
// time.
//
// Why the reordering delay: a camera sends a frame soon after capturing
// it, but with B-frames it captures (and sends) the later reference frame
// before the frames displayed ahead of it. Measured against decode times,
// every frame then seems to travel that delay longer than it did; it is
// the largest PTS - DTS of the stream (the reference frame sent right after
// capture), learned as frames arrive, and 0 without B-frames.
//
// It returns the bound widened by what T was raised (only while the depth
// is still being learned): the presentation time keeps its offset from T,
// so it moved as much.
func (s *Stream) decodeOrder(x *sample.Sample, bound int64) int64 {
	s.vid.depth = max(s.vid.depth, min(x.PTSOffset, maxReorder))
	if s.vid.n < depthFrames {
		s.vid.n++
		if s.vid.depth > 0 {
			// Reordering, and the depth not learned for sure yet: a
			// later frame may show it deeper, and this frame's
			// presentation time then late by the difference.
			bound = satAdd(bound, maxReorder-s.vid.depth)
		}
	}
	t := satSub(x.T, s.vid.depth)
	if s.vid.haveT && t < s.vid.lastT {
		bound = satAdd(bound, s.vid.lastT-t)
		t = s.vid.lastT
	}
	x.T = t
	s.vid.haveT, s.vid.lastT = true, t
	return bound
}

// stamp sets x.T from device or arrival time (see Process); for video the
// device time taken is the decode time, SrcT - PTSOffset, which only
// increases in the order the camera sends frames.
//
// It returns the sample's error bound and whether the clock confirmed a
// step with it.
func (s *Stream) stamp(x *sample.Sample, video bool) (bound int64, jumped bool) {
	arrival := false
	// dsrc is the device-time interval from the previous sample with
	// device time (0 when unknown).
	var dsrc int64
	lineSrc := int64(0)
	if s.desc.Clock == sample.ClockDevice && x.SrcT != 0 {
		src := x.SrcT
		if video {
			src = satSub(src, x.PTSOffset)
		}
		if s.haveSrc {
			dsrc = satSub(src, s.prevSrc)
		}
		lineSrc = src
		if !s.device {
			s.device = true
			if s.c.ArrivalStamped > 0 {
				s.clock.addEvent(episode.ClockEvent{T: x.RecvT, Kind: EventDeviceTime,
					Detail: "device time available; switched from arrival stamping to the device clock"})
			}
		}
		jumps := s.clock.Jumps()
		x.T = s.clock.Align(src, x.RecvT)
		jumped = s.clock.Jumps() != jumps
		bound = s.clock.LastBound()
		held := s.clock.LastHeld()
		if !held && !s.trust.arrival {
			s.cad.add(src, false)
		}
		if ev, ok := s.trust.observe(src, x.RecvT, held, jumped, s.clock); ok {
			s.clock.quiet = false
			s.clock.addEvent(ev)
		}
		s.clock.quiet = s.trust.arrival
		switch {
		case s.trust.arrival:
			x.T, bound, arrival = satSub(x.RecvT, s.desc.Latency), s.fallbackBound(), true
		case held:
			arrival = true
			s.c.ClockHeld++
			x.T = s.heldStamp(x.RecvT, x.T)
			bound = s.coverLine(src, x.RecvT, x.T, bound)
		case (s.clock.fresh() || s.behind) && s.haveT && s.cad.period > 0:
			// Just after a step T must not jump: the line drawn through
			// a few samples lies above the true envelope (their smallest
			// delay), and after a step back the samples before it were
			// stamped early. T follows the stream's cadence, catching up
			// with the line by at most one period per sample (so no
			// interval is long enough for a gap rule), and the bound
			// carries what T is still behind the line.
			if c := satAdd(s.lastT, 2*s.cad.period); c < x.T {
				bound = satAdd(bound, x.T-c)
				x.T, s.behind = c, true
			} else {
				s.behind = false
			}
		}
	} else {
		if s.device {
			s.device = false
			s.clock.addEvent(episode.ClockEvent{T: x.RecvT, Kind: EventArrivalTime,
				Detail: "device time missing; stamping arrival time minus latency"})
		}
		x.T = satSub(x.RecvT, s.desc.Latency)
		arrival = s.desc.Clock == sample.ClockDevice
		if !arrival {
			s.c.ArrivalStamped++
		}
		// A device-clock stream without device time: its arrival stamp is
		// off by the unknown network delay. When the clock has measured
		// the delays, the sample is stamped like a held-back one (the
		// earliest it can have been captured), so that it does not push
		// the samples after it.
		bound = max(s.desc.Latency, int64(s.clock.o.JumpThreshold))
		if arrival && s.clock.haveWindow() {
			x.T = min(x.T, s.heldStamp(x.RecvT, s.clock.arrival(x.RecvT)))
			bound = max(s.desc.Latency, s.clock.arrivalBound())
		}
	}
	if s.haveT && x.T < s.lastT {
		bound = satAdd(bound, s.lastT-x.T)
		x.T = s.lastT
		s.c.Reordered++
	}
	lineStamped := lineSrc != 0 && !arrival
	if lineStamped && dsrc > 0 && s.cad.period > 0 && dsrc <= 2*s.cad.period {
		// Slew: while the estimate lies before the stream's pace (the
		// line moved earlier: lower delays revealed the envelope after a
		// startup backlog or a slow spell), T advances by half the device
		// interval per sample instead of standing still, so that the
		// intervals never collapse (a run of equal T would shrink the
		// median interval and turn every normal one into a gap), and
		// catches up with the estimate at half a period per sample. The
		// bound carries what T is ahead of the estimate.
		if m := satAdd(s.prevSrcT, dsrc/2); x.T < m {
			bound = satAdd(bound, m-x.T)
			x.T = m
		}
	}
	// The slew's reference: the last sample stamped through the line (a
	// sample stamped from arrival may lie later than its capture).
	s.haveSrc, s.prevSrc, s.prevSrcT = lineStamped, lineSrc, x.T
	s.haveT, s.lastT, s.lastRecv = true, x.T, x.RecvT
	if arrival {
		x.Flags |= sample.ArrivalTime
		s.c.ArrivalStamped++
	}
	return bound, jumped
}

// count updates the counters with a stamped sample.
func (s *Stream) count(x *sample.Sample) {
	c := &s.c
	c.Samples++
	c.Bytes += uint64(len(x.Payload))
	if x.Flags&sample.Discontinuity != 0 {
		c.Discontinuities++
	}
	if x.Flags&sample.DecodeError != 0 {
		c.DecodeErrors++
	}
	c.Lost += uint64(x.Lost)
	c.Dropped += uint64(x.Dropped)
	c.LastSeq, c.LastT, c.LastRecvT = x.Seq, x.T, x.RecvT
}

// hedge settles the bounds of samples stamped through the line while
// they lay far above the envelope: late deliveries (then the line's bound
// holds) or the start of a backward step (then they are off by about their
// residual). When the run is confirmed as a step, the wider bounds are
// recorded; when it ends otherwise, they are forgotten.
func (s *Stream) hedge(t, bound int64, jumped bool) {
	if jumped {
		for _, h := range s.hedges[:s.nhedges] {
			s.bounds.add(h.t, h.b)
		}
		s.nhedges = 0
		return
	}
	cand, owed := s.clock.LastCandidate()
	if !cand || s.trust.arrival {
		s.nhedges = 0
		return
	}
	if owed <= 0 {
		return
	}
	b := satAdd(bound, owed)
	// One entry per second of T is enough: the bound history keeps the
	// largest bound per second.
	if n := s.nhedges; n > 0 && floorDiv(s.hedges[n-1].t, 1e9) == floorDiv(t, 1e9) {
		s.hedges[n-1].b = max(s.hedges[n-1].b, b)
		return
	}
	if s.nhedges < len(s.hedges) {
		s.hedges[s.nhedges] = struct{ t, b int64 }{t, b}
		s.nhedges++
	}
}

// heldStamp is the aligned time of a sample whose device time is not used
// while the clock has measured the delays: the previous sample's T plus
// one typical period (the stream's cadence predicts its capture time; a
// long arrival interval may be a delay as well as a loss, and early is
// safe for order), kept within what its arrival allows: no
// earlier than lo (arrival minus the largest delay measured, the earliest
// it can have been captured) and no later than its arrival. So it neither
// opens a hole in T nor pushes the samples after it; its error is within
// the clock's arrival bound.
func (s *Stream) heldStamp(recv, lo int64) int64 {
	hi := satSub(recv, int64(s.clock.o.MinDelay))
	if !s.haveT || s.cad.period <= 0 {
		return lo
	}
	return max(lo, min(satAdd(s.lastT, s.cad.period), hi))
}

// settleEarly keeps the stated bounds of the samples stamped before the
// estimate converged honest in retrospect: until then the envelope is
// still being found, and when later samples with lower delays move the
// line earlier (the first offset came from a swing of the delays), the
// samples stamped through the old line were late by as much. Their
// bound history (BoundOver, the episode's stated bound) is widened by
// how far the line has moved since; the bounds stated as they were
// stamped cannot be taken back.
func (s *Stream) settleEarly(t, bound int64, line, jumped bool) {
	c := s.clock
	e := &s.early
	if jumped || !c.haveLine || (!e.on && (c.converged || !line)) {
		e.on = false
		return
	}
	off := c.OffsetNs()
	if !e.on {
		e.on, e.fromT, e.maxOff, e.maxBound, e.widened = true, t, off, bound, 0
		return
	}
	if d := satSub(e.maxOff, off); d > e.widened {
		e.widened = d
		s.bounds.widen(e.fromT, t, satAdd(e.maxBound, d))
	}
	if line {
		if off > e.maxOff {
			e.maxOff = off
		}
		e.maxBound = max(e.maxBound, bound)
	}
	if c.converged {
		e.on = false
	}
}

// maxLate is the longest delivery delay a held-back sample is taken to
// possibly have (see coverLine): one whose device time maps further back
// than that before its arrival has a wrong timestamp.
const maxLate = int64(10 * time.Second)

// coverLine widens the bound of a held-back sample stamped at t so that
// it also covers the time the clock's line gives it. A sample above the
// envelope is either late (a stall on the way, a backlog: the line is
// right) or the start of a step back (arrival is right); which one only
// the samples after it tell, so its bound must cover both. Below the
// envelope the line's time is clamped to arrival, within the arrival
// bound already. A device time that maps more than maxLate before
// arrival is no delivery delay but a wrong timestamp: arrival is right.
func (s *Stream) coverLine(src, recv, t, bound int64) int64 {
	c := s.clock
	if !c.haveLine {
		return bound
	}
	line := c.stamp(src, recv)
	if line < satSub(recv, maxLate) {
		return bound
	}
	d := t - line
	if d < 0 {
		d = -d
	}
	return max(bound, satAdd(d, c.Bound(src)))
}

// fallbackBound is the error bound of arrival stamping on a device-clock
// stream on arrival fallback: the configured latency (the assumed delay)
// plus twice the measured arrival jitter plus the error floor, plus how
// much later than its cadence the sample arrived (a stall on the way, or
// the bunch after it); the jump threshold (or that lateness, if more)
// until enough arrivals were measured.
func (s *Stream) fallbackBound() int64 {
	j, ok := s.jit.bound()
	if !ok {
		return max(s.desc.Latency, int64(s.clock.o.JumpThreshold), s.jit.late())
	}
	// Twice the largest recent deviation: a delay beyond the recent
	// largest is rare but not impossible (for exponential delays, twice
	// the largest of 64 is exceeded about once in 5000 samples).
	return satAdd(satAdd(satAdd(int64(s.clock.o.ErrorFloor), s.desc.Latency), 2*j), s.jit.late())
}

// Unprocess takes back the last Process, for a sample that could not be
// stored (storage full or overloaded): the next sample reuses its Seq, so
// the stored seq stays gapless, and the counters forget it. The clock
// estimator keeps the observation, which was a real one. It does nothing
// unless x is the sample Process handled last.
func (s *Stream) Unprocess(x *sample.Sample) {
	if s.seq == 0 || x.Seq != s.seq {
		return
	}
	s.seq--
	c := &s.c
	c.Samples--
	c.Bytes -= uint64(len(x.Payload))
	if x.Flags&sample.Discontinuity != 0 {
		c.Discontinuities--
	}
	if x.Flags&sample.DecodeError != 0 {
		c.DecodeErrors--
	}
	c.Lost -= uint64(x.Lost)
	c.Dropped -= uint64(x.Dropped)
	c.LastSeq = s.seq
}

// BoundOver returns the largest alignment error bound of the device-mode
// samples this Stream stamped with T in [from, to], as stamped (so samples
// stamped before the estimate converged count with their wide bounds), and
// whether its history (the last hour) covers the range and holds any.
func (s *Stream) BoundOver(from, to int64) (int64, bool) {
	if s.desc.Clock != sample.ClockDevice {
		return 0, false
	}
	return s.bounds.max(from, to)
}

// Counters returns the running totals.
func (s *Stream) Counters() StreamCounters { return s.c }

// LastSeq is the sequence number of the last sample processed.
func (s *Stream) LastSeq() uint64 { return s.seq }

// Clock returns the stream's estimator (for inspection; do not feed it).
func (s *Stream) Clock() *Clock { return s.clock }

// ClockStatus returns the current clock figures. In arrival stamping the
// offset is minus the latency and the error bound is the configured
// latency (the assumption is that the true delay lies in [0, 2·latency]);
// on arrival fallback it is the latency plus the measured arrival jitter.
func (s *Stream) ClockStatus() ClockStatus {
	c := s.clock
	st := ClockStatus{Mode: string(sample.ClockArrival), Source: SourceArrival, OffsetNs: -s.desc.Latency,
		ErrorBoundNs: s.desc.Latency, Jumps: c.Jumps(), Outliers: c.Outliers(), Events: c.EventCounts()}
	switch {
	case s.desc.Clock == sample.ClockArrival:
		st.SourceReason = "configured"
	case !s.device:
		st.SourceReason = "no device time yet"
		if s.haveT {
			st.ErrorBoundNs = s.bound
		}
	case s.trust.arrival:
		st.SourceReason = s.trust.reason
		st.ErrorBoundNs = s.bound
	default:
		st.Mode, st.Source = modeDevice, SourceDevice
		st.Converged = c.Converged()
		st.OffsetNs = c.OffsetNs()
		st.DriftPPM = c.DriftPPM()
		st.JitterNs = c.JitterNs()
		// The bound of the last sample as stamped: the clock's, widened
		// where the stream kept T in order or continuous.
		st.ErrorBoundNs = s.bound
	}
	return st
}

// ClockReport returns the figures for an episode's report: the current
// figures, the clock source and the clock events with from <= T <= to.
func (s *Stream) ClockReport(from, to int64) episode.ClockReport {
	st := s.ClockStatus()
	return episode.ClockReport{
		Mode:              st.Mode,
		OffsetNs:          st.OffsetNs,
		DriftPPM:          roundTo(st.DriftPPM, 3),
		JitterNs:          st.JitterNs,
		ErrorBoundNs:      st.ErrorBoundNs,
		Events:            s.clock.Events(from, to),
		ClockSource:       st.Source,
		ClockSourceReason: st.SourceReason,
	}
}

func roundTo(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}
