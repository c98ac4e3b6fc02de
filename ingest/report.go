package ingest

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

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
	// From and To are the episode's window, which coverage is measured
	// against: silence between From and the first sample, and between the
	// last sample and To, is a gap. With To <= From there is no window: no
	// edge gaps, and the span of the samples is measured instead.
	From, To int64
	// Period is the stream's nominal sample period in ns (1e9 / the
	// configured rate); 0 learns it as the median interval.
	Period int64
	// PriorPeriod is a period learned before the window (the median
	// interval of the samples just before it), used when Period is 0 and
	// the window holds too few samples to learn one.
	PriorPeriod int64
	// Offline lists the intervals (gateway time, in time order) during
	// which the stream's device was disconnected; a gap that overlaps one
	// is accounted to device_offline.
	Offline []Interval
	// Refused lists the intervals (aligned time, in time order) over which
	// storage refused the stream's samples; a gap that overlaps one is
	// accounted to storage_rejected. The Refused flag on the stored sample
	// after a gap says the same; these intervals also cover a gap that no
	// stored sample ends (storage refused until the window's end).
	Refused []Interval
}

// Interval is a time range [From, To] in ns on the gateway clock.
type Interval struct{ From, To int64 }

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
//   - Coverage against the window: Expected is the window's length times
//     the nominal rate (the configured one, else 1e9 over the median
//     interval), rounded, at least 1; Coverage is Samples/Expected, at most
//     1, and 0 without samples.
//   - Gaps, each an interval [from, to] with a cause (see gapCause): every
//     sample flagged Discontinuity ends one gap that starts at the sample
//     before it, and its Lost and Dropped are summed; a silence longer than
//     GapFactor times the period (the configured one, else the median of
//     recent intervals) is a gap too. Silence at the window's edges is a gap
//     when longer than GapFactor−1 periods (as many missing samples as
//     between two samples); a stream with no samples is one gap as long as
//     the window. Intervals across a Discontinuity do not feed the median.
//     Event streams have no timing gaps unless a period is configured.
//     Samples flagged DecodeError are counted. A clock step is a clock
//     event, not a gap: a silence in aligned time during which samples
//     kept arriving (their arrival interval is under the threshold) is not
//     counted when a clock event lies within a second of it. (A silence
//     in aligned time with steady arrivals and no clock event, such as a
//     broker's backlog with messages missing, is counted.)
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
// Add costs tens of nanoseconds and allocates only to record a gap.
type Report struct {
	desc  sample.Descriptor
	o     ReportOptions
	clock *Clock
	r     episode.StreamReport
	timed bool // time gaps are counted for this kind

	havePrev  bool
	prevT     int64
	prevRecvT int64

	// The first sample's loss flags: a gap ending there is decided with the
	// leading edge in Result.
	firstFlags          sample.Flags
	firstLost, firstDrp uint32
	gaps                []episode.Gap
	// suspect are silences in aligned time during which samples kept
	// arriving: a clock step moves aligned time without losing data, so
	// they are gaps only if no clock event explains them (see coverage).
	suspect  []episode.Gap
	nGaps    uint64
	timeGaps uint64
	missing  int64

	seed    [gapSeed]int64
	seedAt  [gapSeed]gapCand
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
	// lastArrival: the last sample was stamped from arrival.
	lastArrival bool
	maxBound    int64 // over all samples
	maxConv     int64 // over samples aligned by a converged estimate
	haveConv    bool
	events      []episode.ClockEvent
	override    *episode.ClockReport
}

// EnsureDefaults fills unset fields with their defaults (the clock
// options are defaulted by NewClock). It is idempotent.
func (o *ReportOptions) EnsureDefaults() {
	if o.GapFactor == 0 {
		o.GapFactor = DefaultGapFactor
	}
}

// Validate reports every invalid field at once. It expects EnsureDefaults
// to have run.
func (o *ReportOptions) Validate() error {
	var errs []error
	if o.GapFactor < 1 || math.IsNaN(o.GapFactor) {
		errs = append(errs, fmt.Errorf("gap factor %v: must be at least 1", o.GapFactor))
	}
	if o.Period < 0 || o.PriorPeriod < 0 {
		errs = append(errs, fmt.Errorf("period %d/%d: must not be negative", o.Period, o.PriorPeriod))
	}
	return errors.Join(errs...)
}

// NewReport starts the report of the stream described by d.
func NewReport(d sample.Descriptor, o ReportOptions) (*Report, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("ingest: report %s: %w", d.Stream, err)
	}
	c, err := NewClock(o.Clock)
	if err != nil {
		return nil, fmt.Errorf("ingest: report %s: %w", d.Stream, err)
	}
	return &Report{
		desc:  d,
		o:     o,
		clock: c,
		timed: d.Kind != sample.KindEvent || o.Period > 0,
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
	if src, ok := r.deviceTime(x); ok {
		r.clock.Align(src, x.RecvT)
	}
}

// deviceTime is the device time the live Stream fed its clock for x (for
// video the decode time, SrcT − PTSOffset), and whether x was stamped
// from it: a sample flagged sample.ArrivalTime was stamped from arrival
// (no device time, held back as wild, or the device clock untrusted), so
// its device time is no evidence for the re-derived figures.
func (r *Report) deviceTime(x *sample.Sample) (int64, bool) {
	if r.desc.Clock != sample.ClockDevice || x.SrcT == 0 || x.Flags&sample.ArrivalTime != 0 {
		return 0, false
	}
	if r.desc.Kind == sample.KindVideo {
		return satSub(x.SrcT, x.PTSOffset), true
	}
	return x.SrcT, true
}

// Add feeds one of the episode's stored samples. Samples must come in time
// order.
func (r *Report) Add(x *sample.Sample) { r.AddSized(x, len(x.Payload)) }

// AddSized is Add for a sample whose payload was not read (an index-only
// range): size is the payload's length in bytes.
func (r *Report) AddSized(x *sample.Sample, size int) {
	rep := &r.r
	if rep.Samples == 0 {
		rep.FirstT = x.T
	}
	rep.Samples++
	rep.Bytes += uint64(size)
	rep.LastT = x.T
	disc := x.Flags&sample.Discontinuity != 0
	if disc {
		rep.Lost += uint64(x.Lost)
		rep.Drops += uint64(x.Dropped)
	}
	if x.Flags&sample.DecodeError != 0 {
		rep.DecodeErrors++
	}

	if r.havePrev {
		iv := x.T - r.prevT
		if disc {
			r.gap(r.prevT, x.T, x.Flags, x.Lost, x.Dropped)
		} else {
			r.interval(iv, gapCand{from: r.prevT, to: x.T, flags: x.Flags, recvIv: x.RecvT - r.prevRecvT})
		}
	} else {
		r.firstFlags, r.firstLost, r.firstDrp = x.Flags, x.Lost, x.Dropped
	}
	r.havePrev, r.prevT, r.prevRecvT = true, x.T, x.RecvT

	if src, ok := r.deviceTime(x); ok {
		if !r.srcSeen && r.arrivalSeen {
			r.event(episode.ClockEvent{T: x.T, Kind: EventDeviceTime,
				Detail: "device time available; switched from arrival stamping to the device clock"})
		}
		r.srcSeen, r.arrivalSeen, r.lastArrival = true, false, false
		jumps := r.clock.Jumps()
		r.clock.Align(src, x.RecvT)
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
	} else if r.desc.Clock == sample.ClockDevice && x.SrcT != 0 {
		// Device time, but stamped from arrival (held back, or the
		// device clock untrusted): arrival stamping bounds it.
		r.lastArrival = true
		r.maxBound = max(r.maxBound, r.desc.Latency)
	} else {
		if r.desc.Clock == sample.ClockDevice && r.srcSeen {
			r.event(episode.ClockEvent{T: x.T, Kind: EventArrivalTime,
				Detail: "device time missing; stamping arrival time minus latency"})
			r.srcSeen = false
		}
		r.arrivalSeen, r.lastArrival = true, true
		r.maxBound = max(r.maxBound, r.desc.Latency)
		r.maxConv = max(r.maxConv, r.desc.Latency)
	}
}

func (r *Report) event(e episode.ClockEvent) {
	if len(r.events) < r.clock.o.MaxEvents {
		r.events = append(r.events, e)
	}
}

// gapCand is an interval between two samples that may be a gap: the later
// sample's flags give its cause.
type gapCand struct {
	from, to int64
	flags    sample.Flags
	recvIv   int64 // the arrival-time interval
}

// interval classifies one interval between consecutive samples that are not
// separated by a known discontinuity.
func (r *Report) interval(iv int64, c gapCand) {
	if r.nseed < gapSeed {
		r.seed[r.nseed] = iv
		r.seedAt[r.nseed] = c
		r.nseed++
		if r.nseed == gapSeed {
			r.median = medianOf(r.seed[:])
			for i, v := range r.seed {
				r.classify(v, r.seedAt[i])
			}
		}
		return
	}
	r.classify(iv, c)
}

// period is the period gaps are judged against: the configured one, else
// the running median (0 while unknown).
func (r *Report) period() int64 {
	switch {
	case r.o.Period > 0:
		return r.o.Period
	case r.median > 0:
		return r.median
	}
	return r.o.PriorPeriod
}

func (r *Report) classify(iv int64, c gapCand) {
	if p := r.period(); r.timed && p > 0 && float64(iv) > r.o.GapFactor*float64(p) {
		if float64(c.recvIv) <= r.o.GapFactor*float64(p) && len(r.suspect) < episode.MaxGapList {
			r.suspect = append(r.suspect, episode.Gap{From: c.from, To: c.to, Cause: r.gapCause(c.from, c.to, c.flags, 0, 0)})
			return
		}
		r.timeGaps++
		r.gap(c.from, c.to, c.flags, 0, 0)
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

// gap records the gap [from, to]; flags, lost and dropped are those of the
// sample that ends it (none for an edge).
func (r *Report) gap(from, to int64, flags sample.Flags, lost, dropped uint32) {
	r.nGaps++
	r.missing += to - from
	if len(r.gaps) >= episode.MaxGapList {
		return
	}
	r.gaps = append(r.gaps, episode.Gap{From: from, To: to, Cause: r.gapCause(from, to, flags, lost, dropped),
		Lost: lost, Dropped: dropped})
}

// gapCause names why [from, to] has no data, most specific first: storage
// refused samples (the sample after the gap is flagged Refused, or the gap
// overlaps a Refused interval); the
// device's connection was down during it (Offline); the source's numbering
// shows loss (Lost, or a Discontinuity with no count); the gateway dropped
// samples (Dropped); otherwise nothing arrived and nothing says why.
func (r *Report) gapCause(from, to int64, flags sample.Flags, lost, dropped uint32) string {
	switch {
	case flags&sample.Refused != 0, overlaps(r.o.Refused, from, to):
		return episode.CauseStorageRejected
	case overlaps(r.o.Offline, from, to):
		return episode.CauseDeviceOffline
	case lost > 0:
		return episode.CausePacketLoss
	case dropped > 0:
		return episode.CauseQueueDrop
	case flags&sample.Discontinuity != 0:
		return episode.CausePacketLoss
	}
	return episode.CauseNoData
}

// overlaps reports whether [from, to] overlaps an interval of ivs.
func overlaps(ivs []Interval, from, to int64) bool {
	for _, iv := range ivs {
		if iv.From < to && from < iv.To {
			return true
		}
	}
	return false
}

// clockEventSlack is how far from a silence in aligned time a clock event
// may be and still explain it: a step is detected within a few samples, at
// most a few hundred ms after it happened.
const clockEventSlack = int64(time.Second)

// coverage adds the edge gaps, the suspect silences no clock event
// explains, and the counts against the window to out, once the period and
// the clock events are known.
func (r *Report) coverage(out *episode.StreamReport) {
	from, to := r.o.From, r.o.To
	window := to > from
	p := r.period()
	switch {
	case r.o.Period > 0:
		out.NominalRateHz, out.RateSource = roundTo(1e9/float64(r.o.Period), 6), "config"
	case p > 0:
		out.NominalRateHz, out.RateSource = roundTo(1e9/float64(p), 6), "learned"
	}
	if window {
		out.WindowFrom, out.WindowTo = from, to
	}
	gaps := slices.Clone(r.gaps)
	nGaps, timeGaps, missing := r.nGaps, r.timeGaps, r.missing
	add := func(g episode.Gap, timed bool) {
		nGaps++
		missing += g.To - g.From
		if timed {
			timeGaps++
		}
		if len(gaps) < episode.MaxGapList {
			gaps = append(gaps, g)
		}
	}
	for _, g := range r.suspect {
		explained := false
		for _, ev := range out.Clock.Events {
			if ev.T >= g.From-clockEventSlack && ev.T <= g.To+clockEventSlack {
				explained = true
				break
			}
		}
		if !explained {
			add(g, true)
		}
	}
	edge := func(silence int64) bool {
		return r.timed && p > 0 && float64(silence) > (r.o.GapFactor-1)*float64(p)
	}
	switch {
	case out.Samples == 0:
		if window {
			add(episode.Gap{From: from, To: to, Cause: r.gapCause(from, to, 0, 0, 0)}, true)
		}
	case window:
		if edge(out.FirstT - from) {
			f := r.firstFlags
			add(episode.Gap{From: from, To: out.FirstT, Cause: r.gapCause(from, out.FirstT, f, r.firstLost, r.firstDrp),
				Lost: r.firstLost, Dropped: r.firstDrp}, f&sample.Discontinuity == 0)
		}
		if edge(to - out.LastT) {
			add(episode.Gap{From: out.LastT, To: to, Cause: r.gapCause(out.LastT, to, 0, 0, 0)}, true)
		}
	}
	slices.SortFunc(gaps, func(a, b episode.Gap) int { return cmp.Compare(a.From, b.From) })
	out.GapList, out.Gaps, out.TimeGaps, out.MissingNs = gaps, nGaps, timeGaps, missing
	if out.GapList == nil {
		out.GapList = []episode.Gap{}
	}
	if nGaps > uint64(len(gaps)) {
		out.GapsOmitted = nGaps - uint64(len(gaps))
	}

	span := to - from
	if !window {
		span = out.LastT - out.FirstT
	}
	switch {
	case p > 0 && (window || out.Samples > 0):
		out.Expected = max(1, uint64(math.Round(float64(span)/float64(p))))
		if !window {
			out.Expected = max(1, out.Expected+1) // both ends are samples
		}
	default:
		out.Expected = out.Samples
	}
	if out.Samples > 0 {
		out.Coverage = roundTo(min(1, float64(out.Samples)/float64(out.Expected)), 6)
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
		// median once there are at least three, or with the configured
		// period.
		if r.nseed >= 3 {
			r.median = medianOf(r.seed[:r.nseed])
		}
		if r.nseed >= 3 || r.o.Period > 0 || r.o.PriorPeriod > 0 {
			for i, v := range r.seed[:r.nseed] {
				r.classify(v, r.seedAt[i])
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
			ClockSource:  SourceDevice,
		}
		if r.lastArrival {
			out.Clock.ClockSource = SourceArrival
			out.Clock.ClockSourceReason = "last samples stamped from arrival (re-derived from the stored samples)"
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
			Mode:              string(sample.ClockArrival),
			OffsetNs:          -r.desc.Latency,
			JitterNs:          jitter,
			ErrorBoundNs:      bound,
			Events:            slices.Clone(r.events),
			ClockSource:       SourceArrival,
			ClockSourceReason: "configured",
		}
		if r.desc.Clock == sample.ClockDevice {
			out.Clock.ClockSourceReason = "no sample stamped from device time (re-derived from the stored samples)"
		}
		out.AlignmentErrorBoundMs = float64(bound) / 1e6
	}
	r.coverage(&out)
	return out
}
