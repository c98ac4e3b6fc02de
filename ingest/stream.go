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
	// ArrivalStamped counts samples stamped RecvT - latency (arrival mode,
	// or device mode without SrcT yet).
	ArrivalStamped uint64 `json:"arrival_stamped"`
	// LastSeq, LastT and LastRecvT describe the last sample processed.
	LastSeq   uint64 `json:"last_seq"`
	LastT     int64  `json:"last_t"`
	LastRecvT int64  `json:"last_recv_t"`
}

// ClockStatus is a stream's current clock figures, for status and metrics.
type ClockStatus struct {
	// Mode is "device" while device time maps the samples, else "arrival".
	Mode      string  `json:"mode"`
	Converged bool    `json:"converged"`
	OffsetNs  int64   `json:"offset_ns"`
	DriftPPM  float64 `json:"drift_ppm"`
	JitterNs  int64   `json:"jitter_ns"`
	// ErrorBoundNs bounds the alignment error of the last sample.
	ErrorBoundNs int64  `json:"error_bound_ns"`
	Jumps        uint64 `json:"jumps"`
	Outliers     uint64 `json:"outliers"`
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
	// order keeps video in decode order (see decodeOrder).
	order decodeOrder
}

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
	return &Stream{desc: d, seq: lastSeq, clock: c, c: StreamCounters{LastSeq: lastSeq}, bounds: &boundHistory{}}, nil
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
// if empty, and updates the counters. SrcT, RecvT, Flags, Lost, Dropped and
// Payload are read, never changed. For video, the stamp is the presentation
// time and T becomes the decode time (see decodeOrder): T never decreases,
// and T + PTSOffset is the stamped presentation time.
//
// Device-mode samples with SrcT != 0 go through the clock estimator;
// arrival-mode samples, and device-mode samples without SrcT (RTSP before
// the first RTCP sender report), are stamped RecvT - Latency. The switch
// between the two in device mode is recorded as a clock event.
func (s *Stream) Process(x *sample.Sample) {
	s.seq++
	x.Seq = s.seq
	if x.Stream == "" {
		x.Stream = s.desc.Stream
	}
	if s.desc.Clock == sample.ClockDevice && x.SrcT != 0 {
		if !s.device {
			s.device = true
			if s.c.ArrivalStamped > 0 {
				s.clock.addEvent(episode.ClockEvent{T: x.RecvT, Kind: EventDeviceTime,
					Detail: "device time available; switched from arrival stamping to the device clock"})
			}
		}
		x.T = s.clock.Align(x.SrcT, x.RecvT)
		s.bounds.add(x.T, s.clock.LastBound())
	} else {
		if s.device {
			s.device = false
			s.clock.addEvent(episode.ClockEvent{T: x.RecvT, Kind: EventArrivalTime,
				Detail: "device time missing; stamping arrival time minus latency"})
		}
		x.T = x.RecvT - s.desc.Latency
		s.c.ArrivalStamped++
		if s.desc.Clock == sample.ClockDevice {
			// A device-clock stream without device time yet: its arrival
			// stamp is off by the unknown network delay.
			s.bounds.add(x.T, max(s.desc.Latency, int64(s.clock.o.JumpThreshold)))
		}
	}
	if s.desc.Kind == sample.KindVideo {
		s.order.apply(x)
	}
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
// latency: the assumption is that the true delay lies in [0, 2·latency].
func (s *Stream) ClockStatus() ClockStatus {
	if !s.device {
		return ClockStatus{Mode: string(sample.ClockArrival), OffsetNs: -s.desc.Latency, ErrorBoundNs: s.desc.Latency,
			Jumps: s.clock.Jumps(), Outliers: s.clock.Outliers()}
	}
	c := s.clock
	return ClockStatus{
		Mode:         modeDevice,
		Converged:    c.Converged(),
		OffsetNs:     c.OffsetNs(),
		DriftPPM:     c.DriftPPM(),
		JitterNs:     c.JitterNs(),
		ErrorBoundNs: c.LastBound(),
		Jumps:        c.Jumps(),
		Outliers:     c.Outliers(),
	}
}

// ClockReport returns the figures for an episode's report: the current
// figures and the clock events with from <= T <= to.
func (s *Stream) ClockReport(from, to int64) episode.ClockReport {
	st := s.ClockStatus()
	return episode.ClockReport{
		Mode:         st.Mode,
		OffsetNs:     st.OffsetNs,
		DriftPPM:     roundTo(st.DriftPPM, 3),
		JitterNs:     st.JitterNs,
		ErrorBoundNs: st.ErrorBoundNs,
		Events:       s.clock.Events(from, to),
	}
}

func roundTo(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}
