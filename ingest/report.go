package ingest

import (
	"fmt"
	"math"
	"slices"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
)

// DefaultGapFactor is the default k: an interval over k times a stream's
// expected period counts as a gap.
const DefaultGapFactor = 3.0

// ReportOptions tune a Report.
type ReportOptions struct {
	// GapFactor is the cell's gap_factor. Default DefaultGapFactor; must be
	// at least 1.
	GapFactor float64
	// Clock tunes the estimator that re-derives clock figures from the
	// stored (SrcT, RecvT) pairs. The zero value means defaults.
	Clock ClockOptions
}

const (
	// intervals decided together once this many are known: the first
	// expected period is their median.
	gapSeed = 16
	// the expected period is the median of this many recent intervals.
	gapRing = 32
)

// Report accumulates the quality report of one stream in one episode from
// the episode's stored samples, fed in time order. It needs nothing but the
// stored data, so a report rebuilt after a restart is the same.
//
//   - Counts, bytes, first/last time and mean rate.
//   - Gaps: every sample flagged Discontinuity is one gap, and its Lost and
//     Dropped are summed; samples flagged DecodeError are counted. For
//     telemetry and point-cloud streams, an interval longer than GapFactor
//     times the expected period (the median of recent intervals) is a gap
//     too, unless the later sample already carries Discontinuity. Intervals
//     across a Discontinuity do not feed the median.
//   - Clock: for device-clock streams the (SrcT, RecvT) pairs are fed to a
//     fresh Clock; the figures (offset, drift, jitter, error bound) are
//     those at the last sample. AlignmentErrorBoundMs is the largest
//     per-sample bound while the estimate was converged (or over all
//     samples if it never was); samples around a clock event listed in
//     Events (a jump is held back and stamped at arrival, then the
//     estimator re-converges) can be off by more, up to the jump threshold.
//     Feed the samples of the preceding clock window with Warm first to
//     start it converged. For
//     arrival stamping the bound is the latency plus the arrival jitter (the
//     mean absolute deviation of intervals from the expected period).
//
// Add costs tens of nanoseconds and allocates nothing.
type Report struct {
	desc  sample.Descriptor
	o     ReportOptions
	clock *Clock
	r     episode.StreamReport
	timed bool // time gaps are counted for this kind

	havePrev bool
	prevT    int64

	seed    [gapSeed]int64
	nseed   int
	ring    [gapRing]int64
	nring   int
	ringPos int
	sinceMd int
	median  int64
	devSum  float64
	devN    uint64

	srcSeen     bool
	arrivalSeen bool
	maxBound    int64 // over all samples
	maxConv     int64 // over samples aligned by a converged estimate
	haveConv    bool
	events      []episode.ClockEvent
	override    *episode.ClockReport
}

// NewReport starts the report of the stream described by d.
func NewReport(d sample.Descriptor, o ReportOptions) (*Report, error) {
	if o.GapFactor == 0 {
		o.GapFactor = DefaultGapFactor
	}
	if o.GapFactor < 1 || math.IsNaN(o.GapFactor) {
		return nil, fmt.Errorf("ingest: report %s: gap factor %v: must be at least 1", d.Stream, o.GapFactor)
	}
	c, err := NewClock(o.Clock)
	if err != nil {
		return nil, fmt.Errorf("ingest: report %s: %w", d.Stream, err)
	}
	return &Report{
		desc:  d,
		o:     o,
		clock: c,
		timed: d.Kind == sample.KindTelemetry || d.Kind == sample.KindPointCloud,
		r: episode.StreamReport{
			Stream: d.Stream,
			Kind:   string(d.Kind),
			Codec:  string(d.Codec),
			Clock:  episode.ClockReport{Mode: string(d.Clock)},
		},
	}, nil
}

// Warm feeds a sample from before the episode's window to the clock
// estimator only, so that it is converged when the window starts. Call it
// before the first Add.
func (r *Report) Warm(x *sample.Sample) {
	if r.desc.Clock == sample.ClockDevice && x.SrcT != 0 {
		r.clock.Align(x.SrcT, x.RecvT)
	}
}

// Add feeds one of the episode's stored samples. Samples must come in time
// order.
func (r *Report) Add(x *sample.Sample) {
	rep := &r.r
	if rep.Samples == 0 {
		rep.FirstT = x.T
	}
	rep.Samples++
	rep.Bytes += uint64(len(x.Payload))
	rep.LastT = x.T
	disc := x.Flags&sample.Discontinuity != 0
	if disc {
		rep.Gaps++
		rep.Lost += uint64(x.Lost)
		rep.Drops += uint64(x.Dropped)
	}
	if x.Flags&sample.DecodeError != 0 {
		rep.DecodeErrors++
	}

	if r.havePrev {
		iv := x.T - r.prevT
		if !disc {
			r.interval(iv)
		}
	}
	r.havePrev, r.prevT = true, x.T

	if r.desc.Clock == sample.ClockDevice && x.SrcT != 0 {
		if !r.srcSeen && r.arrivalSeen {
			r.event(episode.ClockEvent{T: x.T, Kind: EventDeviceTime,
				Detail: "device time available; switched from arrival stamping to the device clock"})
		}
		r.srcSeen, r.arrivalSeen = true, false
		jumps := r.clock.Jumps()
		r.clock.Align(x.SrcT, x.RecvT)
		if r.clock.Jumps() != jumps {
			evs := r.clock.events
			r.event(evs[len(evs)-1])
		}
		b := r.clock.LastBound()
		r.maxBound = max(r.maxBound, b)
		if r.clock.Converged() && !r.clock.lastHeld {
			r.maxConv = max(r.maxConv, b)
			r.haveConv = true
		}
	} else {
		if r.desc.Clock == sample.ClockDevice && r.srcSeen {
			r.event(episode.ClockEvent{T: x.T, Kind: EventArrivalTime,
				Detail: "device time missing; stamping arrival time minus latency"})
			r.srcSeen = false
		}
		r.arrivalSeen = true
		r.maxBound = max(r.maxBound, r.desc.Latency)
		r.maxConv = max(r.maxConv, r.desc.Latency)
	}
}

func (r *Report) event(e episode.ClockEvent) {
	if len(r.events) < r.clock.o.MaxEvents {
		r.events = append(r.events, e)
	}
}

// interval classifies one interval between consecutive samples that are not
// separated by a known discontinuity.
func (r *Report) interval(iv int64) {
	if r.nseed < gapSeed {
		r.seed[r.nseed] = iv
		r.nseed++
		if r.nseed == gapSeed {
			r.median = medianOf(r.seed[:])
			for _, v := range r.seed {
				r.classify(v)
			}
		}
		return
	}
	r.classify(iv)
}

func (r *Report) classify(iv int64) {
	if r.timed && r.median > 0 && float64(iv) > r.o.GapFactor*float64(r.median) {
		r.r.Gaps++
		r.r.TimeGaps++
		return
	}
	if r.median > 0 {
		r.devSum += math.Abs(float64(iv - r.median))
		r.devN++
	}
	r.ring[r.ringPos] = iv
	r.ringPos = (r.ringPos + 1) % gapRing
	if r.nring < gapRing {
		r.nring++
	}
	r.sinceMd++
	if r.sinceMd >= gapSeed && r.nring >= gapSeed {
		r.sinceMd = 0
		r.median = medianOf(r.ring[:r.nring])
	}
}

func medianOf(v []int64) int64 {
	var tmp [gapRing]int64
	n := copy(tmp[:], v)
	s := tmp[:n]
	slices.Sort(s)
	return s[n/2]
}

// SetClock replaces the re-derived clock figures with the live ones (for
// example Stream.ClockReport at close); the error bound becomes theirs.
func (r *Report) SetClock(c episode.ClockReport) {
	c.Events = slices.Clone(c.Events)
	r.override = &c
}

// Result returns the report so far; call it after the last Add for the
// final report. It may also be called mid-way (a live report): it then
// decides the first intervals with the median of those seen so far.
func (r *Report) Result() episode.StreamReport {
	if r.nseed > 0 && r.nseed < gapSeed {
		// Too few intervals for the seed phase: decide them with their own
		// median once there are at least three.
		if r.nseed >= 3 {
			r.median = medianOf(r.seed[:r.nseed])
			for _, v := range r.seed[:r.nseed] {
				r.classify(v)
			}
		}
		r.nseed = gapSeed // decided
	}
	out := r.r
	out.ExpectedPeriodNs = r.median
	if out.Samples > 1 && out.LastT > out.FirstT {
		out.MeanRateHz = roundTo(float64(out.Samples-1)/(float64(out.LastT-out.FirstT)/1e9), 6)
	}
	var jitter int64
	if r.devN > 0 && r.desc.Kind != sample.KindEvent {
		jitter = int64(r.devSum / float64(r.devN))
	}
	switch {
	case r.override != nil:
		out.Clock = *r.override
		out.AlignmentErrorBoundMs = float64(r.override.ErrorBoundNs) / 1e6
	case r.desc.Clock == sample.ClockDevice && r.srcSeen:
		c := r.clock
		out.Clock = episode.ClockReport{
			Mode:         modeDevice,
			OffsetNs:     c.OffsetNs(),
			DriftPPM:     roundTo(c.DriftPPM(), 3),
			JitterNs:     c.JitterNs(),
			ErrorBoundNs: c.LastBound(),
			Events:       slices.Clone(r.events),
		}
		bound := r.maxBound
		if r.haveConv {
			bound = r.maxConv
		}
		out.AlignmentErrorBoundMs = float64(bound) / 1e6
	default:
		// Arrival stamping, or device mode that never got device time.
		bound := max(r.maxBound, r.desc.Latency) + jitter
		out.Clock = episode.ClockReport{
			Mode:         string(sample.ClockArrival),
			OffsetNs:     -r.desc.Latency,
			JitterNs:     jitter,
			ErrorBoundNs: bound,
			Events:       slices.Clone(r.events),
		}
		out.AlignmentErrorBoundMs = float64(bound) / 1e6
	}
	return out
}
