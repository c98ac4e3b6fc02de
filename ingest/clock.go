package ingest

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/episoded/episoded/episode"
)

// Clock event kinds recorded in episode.ClockEvent.Kind.
const (
	// EventJump: the device clock stepped (several consecutive samples
	// agreed on a new offset); the estimator was reset on them. A step is a
	// clock event, never a gap: the samples around it are stamped at
	// arrival until it is confirmed, so aligned time stays continuous.
	EventJump = "jump"
	// EventDeviceTime: a device-clock stream got device time (for RTSP, the
	// first RTCP sender report) and switched from arrival stamping.
	EventDeviceTime = "device_time"
	// EventArrivalTime: a device-clock stream lost device time (for RTSP, a
	// new session before its first sender report) and fell back to arrival
	// stamping.
	EventArrivalTime = "arrival_time"
	// EventMode: the configured clock mode of the stream changed.
	EventMode = "mode"
	// EventUntrusted: the stream's device clock was found unusable (reset
	// storm, timestamps going backwards, a rate that disagrees with arrival,
	// or mostly wild timestamps); the stream is stamped at arrival. Detail
	// says why.
	EventUntrusted = "clock_untrusted"
	// EventTrusted: the device clock of a stream on arrival fallback has
	// been consistent for ClockOptions.Probation; the stream is stamped from
	// device time again.
	EventTrusted = "clock_trusted"
)

// eventKinds lists every event kind, for per-kind counters.
var eventKinds = [...]string{EventJump, EventDeviceTime, EventArrivalTime, EventMode, EventUntrusted, EventTrusted}

// ClockOptions tune a Clock. The zero value means all defaults.
type ClockOptions struct {
	// Window is the sliding window of evidence. Default 60s. Longer windows
	// average out more jitter but follow drift changes (temperature) more
	// slowly.
	Window time.Duration
	// Buckets is the number of time buckets the window is cut into; each
	// keeps only its lowest point. Default 512.
	Buckets int
	// MaxDriftPPM caps the estimated drift. Default 500.
	MaxDriftPPM float64
	// MinSpan is how much device time the evidence must span before the
	// drift is estimated from the data and the estimate counts as converged.
	// Default 2s.
	MinSpan time.Duration
	// MinSamples is the number of samples needed to converge. Default 10.
	MinSamples int
	// OutlierThreshold: once converged, a sample more than this far below
	// the envelope (impossible for a non-negative delay) is held back until
	// JumpConfirmSamples consecutive samples agree on a new offset; one that
	// is never confirmed is dropped as an outlier. Default 1ms.
	OutlierThreshold time.Duration
	// JumpThreshold: a sample more than this far above the envelope is a
	// candidate for a backward step of the device clock (or a late
	// delivery). Default 100ms.
	JumpThreshold time.Duration
	// JumpConfirmSamples is how many consecutive held-back samples must
	// agree on a new offset before it is accepted (the first offset too).
	// Default 3.
	JumpConfirmSamples int
	// Agree is how closely (in capture-to-arrival offset) those samples
	// must agree. Default 50ms.
	Agree time.Duration
	// MinDelay is the smallest possible one-way delay from capture to
	// arrival; aligned time is the lower envelope minus MinDelay. Default 0.
	MinDelay time.Duration
	// ErrorFloor is added to every error bound (timestamp quantisation,
	// model error). Default 20µs.
	ErrorFloor time.Duration
	// MaxEvents is how many clock events are kept; older ones are dropped.
	// Default 64.
	MaxEvents int

	// Trust: when a stream's device clock is put on arrival time (see
	// Stream). All apply per stream.

	// ReorderDepth is how far a device timestamp may go back behind the
	// newest one without counting as going backwards (reordering). Default
	// 200ms.
	ReorderDepth time.Duration
	// MaxResets is how many resets (confirmed steps, or timestamps going
	// backwards beyond ReorderDepth) are tolerated within ResetWindow; one
	// more puts the stream on arrival time. Default 3.
	MaxResets int
	// ResetWindow: default 1 minute.
	ResetWindow time.Duration
	// RateTolerance is how far the device clock's rate may disagree with
	// arrival, over RateSpan or more, before the stream is put on arrival
	// time. Default 0.03 (3 %).
	RateTolerance float64
	// RateSpan: default 4s.
	RateSpan time.Duration
	// MaxHeldFraction: when more than this fraction of the samples of the
	// last second (at least 8 samples) were held back as wild, the stream is
	// put on arrival time. Default 0.5.
	MaxHeldFraction float64
	// Probation is how long a device clock on arrival fallback must be
	// consistent (converged, no step, nothing held back, no backward
	// timestamp) before the stream goes back to it. Default 30s.
	Probation time.Duration
}

// EnsureDefaults fills unset fields with their defaults.
func (o *ClockOptions) EnsureDefaults() {
	if o.Window == 0 {
		o.Window = 60 * time.Second
	}
	if o.Buckets == 0 {
		o.Buckets = 512
	}
	if o.MaxDriftPPM == 0 {
		o.MaxDriftPPM = 500
	}
	if o.MinSpan == 0 {
		o.MinSpan = 2 * time.Second
	}
	if o.MinSamples == 0 {
		o.MinSamples = 10
	}
	if o.OutlierThreshold == 0 {
		o.OutlierThreshold = time.Millisecond
	}
	if o.JumpThreshold == 0 {
		o.JumpThreshold = 100 * time.Millisecond
	}
	if o.JumpConfirmSamples == 0 {
		o.JumpConfirmSamples = 3
	}
	if o.Agree == 0 {
		o.Agree = 50 * time.Millisecond
	}
	if o.ErrorFloor == 0 {
		o.ErrorFloor = 20 * time.Microsecond
	}
	if o.MaxEvents == 0 {
		o.MaxEvents = 64
	}
	if o.ReorderDepth == 0 {
		o.ReorderDepth = 200 * time.Millisecond
	}
	if o.MaxResets == 0 {
		o.MaxResets = 3
	}
	if o.ResetWindow == 0 {
		o.ResetWindow = time.Minute
	}
	if o.RateTolerance == 0 {
		o.RateTolerance = 0.03
	}
	if o.RateSpan == 0 {
		o.RateSpan = 4 * time.Second
	}
	if o.MaxHeldFraction == 0 {
		o.MaxHeldFraction = 0.5
	}
	if o.Probation == 0 {
		o.Probation = 30 * time.Second
	}
}

// Validate reports every invalid field at once.
func (o ClockOptions) Validate() error {
	var errs []error
	if o.Window < time.Second {
		errs = append(errs, fmt.Errorf("window %v: must be at least 1s", o.Window))
	}
	if o.Buckets < 8 || o.Buckets > 4096 {
		errs = append(errs, fmt.Errorf("buckets %d: must be within [8, 4096]", o.Buckets))
	}
	if o.MaxDriftPPM <= 0 || o.MaxDriftPPM > 1e5 {
		errs = append(errs, fmt.Errorf("max drift %v ppm: must be within (0, 100000]", o.MaxDriftPPM))
	}
	if o.MinSpan <= 0 || o.MinSpan > o.Window {
		errs = append(errs, fmt.Errorf("min span %v: must be positive and at most the window", o.MinSpan))
	}
	if o.MinSamples < 2 {
		errs = append(errs, fmt.Errorf("min samples %d: must be at least 2", o.MinSamples))
	}
	if o.OutlierThreshold <= 0 || o.JumpThreshold <= 0 || o.Agree <= 0 || o.MinDelay < 0 || o.ErrorFloor < 0 {
		errs = append(errs, errors.New("thresholds and agreement must be positive, min delay and error floor not negative"))
	}
	if o.Agree >= o.JumpThreshold+o.OutlierThreshold {
		errs = append(errs, fmt.Errorf("agree %v: must be below jump threshold + outlier threshold (%v)", o.Agree, o.JumpThreshold+o.OutlierThreshold))
	}
	if o.JumpConfirmSamples < 2 || o.JumpConfirmSamples > pendCap {
		errs = append(errs, fmt.Errorf("jump confirm samples %d: must be within [2, %d]", o.JumpConfirmSamples, pendCap))
	}
	if o.MaxEvents < 1 {
		errs = append(errs, fmt.Errorf("max events %d: must be at least 1", o.MaxEvents))
	}
	if o.ReorderDepth < 0 || o.MaxResets < 1 || o.MaxResets >= resetCap || o.ResetWindow <= 0 || o.RateSpan < time.Second || o.Probation <= 0 {
		errs = append(errs, errors.New("trust: reorder depth must not be negative, max resets within [1, 15], reset window and probation positive, rate span at least 1s"))
	}
	if !(o.RateTolerance > 0 && o.RateTolerance < 1) || !(o.MaxHeldFraction > 0 && o.MaxHeldFraction <= 1) {
		errs = append(errs, fmt.Errorf("trust: rate tolerance %v must be within (0, 1), max held fraction %v within (0, 1]", o.RateTolerance, o.MaxHeldFraction))
	}
	if len(errs) > 0 {
		return fmt.Errorf("ingest: clock options: %w", errors.Join(errs...))
	}
	return nil
}

// rebuildEvery is how often (in device time) a converged Clock rebuilds
// its hull.
const rebuildEvery = int64(500 * time.Millisecond)

// pendCap is how many held-back samples a Clock remembers to re-seed itself
// after a jump.
const pendCap = 16

type bucket struct {
	id     int64
	n      int64
	x, y   int64 // the bucket's lowest point after removing the current drift
	tx, ty int64 // its highest point (the worst delay)
	firstX int64
	lastX  int64
	sumX   float64 // Σ (x - epoch)
}

type point struct{ x, y int64 }

// held is one sample held back from the evidence.
type held struct {
	x, y, recv int64
	r          float64 // residual above the line when it arrived
	arrival    bool    // stamped at arrival
}

// Clock maps one stream's device time onto the gateway clock.
//
// It sees pairs (x, y) = (SrcT, RecvT - SrcT). Because the one-way delay is
// never negative, y lies on or above the line offset + drift·x; the line is
// estimated as the lower envelope. The window is cut into Buckets time
// buckets that keep only their lowest point (after removing the current
// drift estimate), the lower convex hull of those points is rebuilt when one
// changes, and the hull edge that spans the mean x of all samples in the
// window is chosen: it minimises the sum of vertical distances from every
// sample to a line that lies below all of them (the linear program of Moon,
// Skelly and Towsley). Until the evidence spans MinSpan, the previous drift
// (or zero) is kept and only the offset is fitted.
//
// No single sample can move the estimate. The first offset, and every new
// one after a step, is accepted only when JumpConfirmSamples consecutive
// samples agree on it (within Agree); until then those samples are held
// back and stamped at arrival. A held-back sample that is never confirmed
// (a wild timestamp: far future or past, zero, negative, int64 max) is
// dropped as an outlier. All arithmetic on timestamps saturates, so no
// value can overflow an offset or a bound.
//
// A Clock is not safe for concurrent use. Per sample it costs a few tens of
// nanoseconds and allocates nothing; a hull rebuild is O(Buckets) and happens
// at most a few times per bucket.
type Clock struct {
	o       ClockOptions
	width   int64
	buckets []bucket
	scratch []point
	tops    []point
	hull    []point

	epoch  int64
	newest int64
	dirty  bool

	// The line L(x) = yr + slope·(x - xr).
	haveLine  bool
	xr        int64
	yr        float64
	slope     float64
	rawSlope  float64 // the hull's slope before clamping to MaxDriftPPM
	prior     float64
	priorUnc  float64
	havePrior bool
	resid     []float64
	maxSlope  float64
	env       float64 // envelope tightness
	excess    float64 // the largest delay above the envelope in the window
	slopeUnc  float64
	xbar      float64 // mean x of the window, relative to xr
	span      int64
	count     int64
	converged bool
	jitter    float64

	pend     [pendCap]held
	npend    int
	pendHead int
	runN     int     // samples in the current run of candidates
	runSign  int     // -1 below the envelope, +1 above it
	runSince int64   // arrival of the run's first sample
	acqN     uint64  // samples seen while acquiring the first offset
	creepN   int     // samples in a row above creepLim (see creep)
	creepLim float64 // the limit, fixed at the first of them
	creepX0  int64
	creepMin float64
	// A step to measure again (see remeasure).
	stepPending bool
	stepX       int64
	stepOld     float64
	stepEventT  int64
	acqSince    int64 // arrival of the first of them

	outliers  uint64
	jumps     uint64
	lastStep  float64 // signed size of the last confirmed step, ns
	lastX     int64   // device time of the last sample taken as evidence
	lastT     int64   // the last aligned time returned
	haveT     bool
	lastHeld  bool
	lastWild  bool  // held, and agreeing with no held sample before it
	lastCand  bool  // the last sample was a candidate held in a run (not confirmed)
	lastHedge int64 // what its bound owes if its run turns out to be a step
	lastBnd   int64 // the last bound, unless lazyBnd
	lazyBnd   bool  // the last bound is Bound(lastBndX), computed on demand
	lastBndX  int64
	lastBuild int64
	builds    uint64
	medResid  float64
	samples   uint64
	quiet     bool // do not record events (the stream is on arrival fallback)
	events    []episode.ClockEvent
	evDropped uint64
	evCount   [len(eventKinds)]uint64
}

// NewClock returns a Clock with the given options (defaults filled in).
func NewClock(o ClockOptions) (*Clock, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	c := &Clock{
		o:        o,
		width:    max(int64(o.Window)/int64(o.Buckets), 1),
		buckets:  make([]bucket, o.Buckets),
		scratch:  make([]point, 0, o.Buckets),
		tops:     make([]point, 0, o.Buckets),
		hull:     make([]point, 0, o.Buckets),
		resid:    make([]float64, 0, o.Buckets),
		maxSlope: o.MaxDriftPPM * 1e-6,
	}
	return c, nil
}

func (c *Clock) slot(id int64) *bucket {
	n := int64(len(c.buckets))
	return &c.buckets[((id%n)+n)%n]
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && (a < 0) {
		q--
	}
	return q
}

// satSub is a - b, saturated to the int64 range.
func satSub(a, b int64) int64 {
	d := a - b
	if (a >= 0) != (b >= 0) && (d >= 0) != (a >= 0) {
		if a >= 0 {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return d
}

// satAdd is a + b, saturated to the int64 range.
func satAdd(a, b int64) int64 {
	s := a + b
	if (a >= 0) == (b >= 0) && (s >= 0) != (a >= 0) {
		if a >= 0 {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return s
}

// satInt converts f to int64, rounding and saturating; NaN saturates high.
func satInt(f float64) int64 {
	switch {
	case f != f || f >= math.MaxInt64:
		return math.MaxInt64
	case f <= math.MinInt64:
		return math.MinInt64
	}
	return int64(math.Round(f))
}

// lineAt evaluates the envelope at device time x.
func (c *Clock) lineAt(x int64) float64 {
	return c.yr + c.slope*float64(satSub(x, c.xr))
}

// stamp maps src through the current line, never later than arrival.
func (c *Clock) stamp(src, recv int64) int64 {
	t := satSub(satAdd(src, satInt(c.lineAt(src))), int64(c.o.MinDelay))
	return min(t, satSub(recv, int64(c.o.MinDelay)))
}

// arrival is the stamp of a held-back sample: its arrival time minus the
// largest delay above the envelope seen in the window, that is the earliest
// it can plausibly have been captured. Stamping it earlier than the truth,
// never later, keeps the samples after it in order; its error is at most
// arrivalBound. Before there is a window it is the arrival time itself.
func (c *Clock) arrival(recv int64) int64 {
	t := satSub(recv, int64(c.o.MinDelay))
	if c.haveWindow() {
		t = satSub(t, satSub(c.arrivalBound(), int64(c.o.ErrorFloor)))
	}
	return t
}

// Align feeds one observation (device time src, gateway arrival recv) and
// returns the aligned gateway time of the sample. src should be non-zero
// (zero means "no device time" to a Stream); any value is safe.
func (c *Clock) Align(src, recv int64) int64 {
	c.samples++
	c.lastHeld, c.lastWild, c.lastCand, c.lastHedge = false, false, false, 0
	y := satSub(recv, src)
	if !c.haveLine {
		return c.acquire(src, y, recv)
	}
	r := float64(y) - c.lineAt(src)
	// Below the envelope by more than it can be off (3 envelope
	// spacings, at least OutlierThreshold) is impossible for a delay.
	neg := -max(float64(c.o.OutlierThreshold), 3*c.env)
	if !c.converged {
		// The envelope of a few samples is not tight yet: only what no
		// delay can explain is suspect.
		neg = -float64(c.o.Agree)
	}
	if r < neg || r > float64(c.o.JumpThreshold) {
		return c.candidate(src, y, recv, r)
	}
	c.endRun()
	if c.converged && c.creep(src, r) {
		c.smallStep(src, y, recv)
		t := c.stamp(src, recv)
		c.lazyBnd, c.lastBndX = true, src
		return c.done(t)
	}
	c.jitter += (max(r, 0) - c.jitter) / 64
	c.insert(src, y)
	c.lastX = src
	// Rebuilding costs O(Buckets); once converged it is done at most every
	// rebuildEvery of device time, so the cost is per second of stream,
	// not per sample. In between, a new lowest point only tightens the
	// envelope: the stale line stays below the data, and stamp never
	// returns a time after arrival.
	if c.dirty && (!c.converged || src-c.lastBuild >= rebuildEvery || src < c.lastBuild) {
		c.lastBuild = src
		c.rebuild()
		c.stepMeasured()
	}
	t := c.stamp(src, recv)
	c.lazyBnd, c.lastBndX = true, src
	return c.done(t)
}

func (c *Clock) done(t int64) int64 {
	c.lastT, c.haveT = t, true
	return t
}

// acquire handles a sample before any offset is agreed: it is held back
// and stamped at arrival until JumpConfirmSamples consecutive samples agree.
func (c *Clock) acquire(src, y, recv int64) int64 {
	if c.acqN == 0 {
		c.acqSince = recv
	}
	c.acqN++
	c.push(held{x: src, y: y, recv: recv, arrival: true})
	// The agreeing samples must also arrive paced (not a backlog in a
	// burst), unless they have not for a second: a device that always
	// sends in bursts is still timed by its clock.
	if k := c.o.JumpConfirmSamples; c.npend >= k && c.agree(k) && (c.paced() || satSub(recv, c.acqSince) >= int64(time.Second)) {
		hs := c.lastPend(k)
		// The samples before the agreeing ones never agreed with anything.
		c.outliers += c.acqN - uint64(k)
		c.acqN = 0
		c.reseed(hs)
		t := c.stamp(src, recv)
		c.lazyBnd, c.lastBndX = true, src
		return c.done(t)
	}
	c.lastHeld = true
	c.lastWild = c.agreeing() < 2
	c.lazyBnd, c.lastBnd = false, int64(c.o.JumpThreshold)
	return c.done(c.arrival(recv))
}

// candidate handles a sample off the envelope: a wild timestamp, part of a
// step of the device clock, or a late delivery.
func (c *Clock) candidate(src, y, recv int64, r float64) int64 {
	sign := 1
	if r < 0 {
		sign = -1
	}
	if c.runN > 0 && sign != c.runSign {
		c.endRun()
	}
	if c.runN == 0 {
		c.runSign, c.runSince = sign, recv
	}
	c.runN++
	h := held{x: src, y: y, recv: recv, r: r}
	// Below the envelope the line would stamp after arrival: stamp at
	// arrival. Above it, the sample is either late (the line is right) or
	// the clock stepped back (arrival is right): the line is used unless it
	// would put the sample before the previous one.
	t := c.stamp(src, recv)
	if sign < 0 || (c.haveT && t < c.lastT) {
		h.arrival = true
		t = c.arrival(recv)
	}
	c.push(h)
	// Before the estimate converges, a run above the envelope is taken for
	// a swing of the delays (a startup backlog, a slow spell: the line of
	// the first prompt samples stays right, and the run's samples are
	// late deliveries stamped through it), not for a step back, until it
	// has lasted stepBackUnconverged: then it is a step.
	early := sign > 0 && !c.converged && satSub(recv, c.runSince) < stepBackUnconverged
	if !early && c.confirm() {
		if sign < 0 && !c.converged && -r <= float64(maxLate) {
			// Before the estimate converges the envelope is still being
			// found: samples that agree on lower delays than the line
			// (a device that sends in bursts, a first offset taken from
			// delayed samples) are evidence, not a step. Lower by more
			// than any delivery delay (maxLate) is no delay swing: the
			// device clock stepped forward (or back from a wild burst
			// just taken for a step), and merging it would move the line
			// by the whole step.
			c.merge()
		} else {
			c.jump(recv)
		}
		t = c.stamp(src, recv)
		c.lazyBnd, c.lastBndX = true, src
		return c.done(t)
	}
	c.lastHeld = h.arrival
	// Wild: it agrees with no held-back sample before it. The samples of
	// a step waiting for confirmation agree with each other.
	c.lastWild = h.arrival && c.agreeing() < 2
	c.lastCand = true
	if h.arrival {
		c.lazyBnd, c.lastBnd = false, c.arrivalBound()
	} else {
		// Late (the line is right), or part of a step back smaller than
		// the gap to the previous sample (then it is off by about r):
		// which one only the next samples tell, so the bound is the
		// line's and r is the hedge, owed only if a step is confirmed.
		c.lazyBnd, c.lastBndX = true, c.lastX
		c.lastHedge = satInt(r)
	}
	return c.done(t)
}

// stepBackUnconverged is how long a run above the envelope must last
// before the estimate converged to be taken for a step back of the device
// clock (see candidate).
const stepBackUnconverged = int64(2 * time.Second)

// endRun ends a run of candidates that was not confirmed: the ones stamped
// at arrival were wild and are counted as outliers.
func (c *Clock) endRun() {
	if c.runN == 0 {
		return
	}
	for i := 0; i < c.npend; i++ {
		if c.pend[(c.pendHead+i)%pendCap].arrival {
			c.outliers++
		}
	}
	c.runN, c.npend, c.pendHead = 0, 0, 0
}

// agree reports whether the last k held-back samples agree on an offset.
func (c *Clock) agree(k int) bool {
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for i := c.npend - k; i < c.npend; i++ {
		y := c.pend[(c.pendHead+i)%pendCap].y
		lo, hi = min(lo, y), max(hi, y)
	}
	return satSub(hi, lo) <= int64(c.o.Agree)
}

// confirm decides whether the current run is a step of the device clock.
func (c *Clock) confirm() bool {
	k := c.o.JumpConfirmSamples
	if c.runN < k || c.npend < k || !c.agree(k) {
		return false
	}
	// Above the envelope: a step back, unless the samples are a backlog
	// draining (late deliveries arrive bunched while their device times
	// advance). A step keeps the arrivals paced like the device clock.
	return c.runSign < 0 || c.paced()
}

// paced reports whether the held-back samples that agree with the last
// one arrived at about the pace of their device times (arrival span at
// least half the device-time span, over a device-time span of at least
// four mean excess delays): not a backlog delivered in a burst,
// whose offsets are its queueing delay. The span is taken over every
// sample that agrees with the last one, so that it grows with the
// evidence.
func (c *Clock) paced() bool {
	n := c.agreeing()
	last := c.pend[(c.pendHead+c.npend-1)%pendCap]
	first := c.pend[(c.pendHead+c.npend-n)%pendCap]
	srcSpan := satSub(last.x, first.x)
	recvSpan := satSub(last.recv, first.recv)
	// Over a span shorter than a few delays the arrival spread is mostly
	// jitter: wait for a span of 4 times the mean excess delay (at most
	// 100 ms), so that the samples of one burst cannot look paced.
	need := satInt(min(4*c.jitter, float64(100*time.Millisecond)))
	return srcSpan > 0 && srcSpan >= need && recvSpan >= srcSpan/2
}

// agreeing is how many of the last held-back samples, counting back from
// the last one, agree with it (offsets within Agree).
func (c *Clock) agreeing() int {
	if c.npend == 0 {
		return 0
	}
	last := c.pend[(c.pendHead+c.npend-1)%pendCap]
	n := 1
	for i := c.npend - 2; i >= 0; i-- {
		p := c.pend[(c.pendHead+i)%pendCap]
		if d := satSub(p.y, last.y); d > int64(c.o.Agree) || d < -int64(c.o.Agree) {
			break
		}
		n++
	}
	return n
}

func (c *Clock) lastPend(k int) []held {
	hs := make([]held, 0, k) // k <= pendCap; escapes only on a step
	for i := c.npend - k; i < c.npend; i++ {
		hs = append(hs, c.pend[(c.pendHead+i)%pendCap])
	}
	return hs
}

func (c *Clock) push(h held) {
	i := (c.pendHead + c.npend) % pendCap
	if c.npend == pendCap {
		c.pendHead = (c.pendHead + 1) % pendCap
	} else {
		c.npend++
	}
	c.pend[i] = h
}

// jump resets the estimator on the agreeing held-back samples and records
// an event. The step is the smallest residual among them (the new
// envelope): its error is the smallest excess delay of those samples.
func (c *Clock) jump(recv int64) {
	// Every agreeing sample of the run (at least the confirming ones)
	// measures the step and seeds the new estimate: the more, the closer
	// their smallest delay is to the true minimum.
	k := max(c.o.JumpConfirmSamples, c.agreeing())
	hs := c.lastPend(k)
	// Earlier samples of the run that are not part of the agreeing set
	// were wild.
	for i := 0; i < c.npend-k; i++ {
		if c.pend[(c.pendHead+i)%pendCap].arrival {
			c.outliers++
		}
	}
	d := math.Inf(1)
	for _, h := range hs {
		d = min(d, h.r)
	}
	c.lastStep = d
	dir := "backward"
	if d < 0 {
		dir = "forward"
	}
	c.jumps++
	c.addEvent(episode.ClockEvent{T: recv, Kind: EventJump,
		Detail: fmt.Sprintf("device clock stepped %s by %v (confirmed by %d samples); estimator reset", dir,
			time.Duration(satInt(math.Abs(d))).Round(time.Microsecond), k)})
	if c.converged {
		c.prior, c.priorUnc, c.havePrior = c.slope, c.slopeUnc, true
	}
	c.remeasure(hs[0].x, recv)
	c.reseed(hs)
}

// remeasure notes the old line at the step, so that the step's size can
// be measured again once the new estimate rests on more samples (the few
// that confirmed it may all have been delayed).
func (c *Clock) remeasure(x, recv int64) {
	c.stepPending, c.stepX, c.stepOld, c.stepEventT = true, x, c.lineAt(x), recv
}

// stepMeasured updates the last step's size from the new estimate, once it
// rests on 2·MinSamples samples, in its event too.
func (c *Clock) stepMeasured() {
	if !c.stepPending || !c.haveLine || c.count < 2*int64(c.o.MinSamples) {
		return
	}
	c.stepPending = false
	d := c.lineAt(c.stepX) - c.stepOld
	c.lastStep = d
	for i := len(c.events) - 1; i >= 0; i-- {
		if e := &c.events[i]; e.Kind == EventJump && e.T == c.stepEventT {
			dir := "backward"
			if d < 0 {
				dir = "forward"
			}
			e.Detail = fmt.Sprintf("device clock stepped %s by %v; estimator reset", dir, time.Duration(satInt(math.Abs(d))).Round(time.Microsecond))
			break
		}
	}
}

// creep watches for a backward step smaller than JumpThreshold: no single
// sample can tell it from a delay, but real delays keep touching the
// envelope, while after a step back every sample lies above it. When for
// creepSpan of device time (and creepSamples samples) no sample came within
// max(5 ms, 4 mean excess delays, at most 20 ms) of the envelope, it
// reports a step. The
// samples meanwhile owe their residual as a hedge (see candidate).
func (c *Clock) creep(x int64, r float64) bool {
	lim := c.creepLim
	if c.creepN == 0 {
		lim = max(float64(5*time.Millisecond), min(4*c.jitter, float64(20*time.Millisecond)))
	}
	if r < lim {
		c.creepN = 0
		return false
	}
	if c.creepN == 0 {
		c.creepLim, c.creepX0, c.creepMin = lim, x, r
	}
	c.creepN++
	c.creepMin = min(c.creepMin, r)
	c.lastCand, c.lastHedge = true, satInt(r)
	return c.creepN >= creepSamples && satSub(x, c.creepX0) >= int64(creepSpan)
}

const (
	creepSamples = 10
	creepSpan    = time.Second
)

// smallStep restarts the estimator after a backward step found by creep,
// on the current sample (the line is then fresh and tightens as samples
// come).
func (c *Clock) smallStep(x, y, recv int64) {
	d := c.creepMin
	c.creepN = 0
	c.lastStep = d
	c.jumps++
	c.addEvent(episode.ClockEvent{T: recv, Kind: EventJump,
		Detail: fmt.Sprintf("device clock stepped backward by %v (every sample for %v lay above the envelope); estimator reset",
			time.Duration(satInt(d)).Round(time.Microsecond), creepSpan)})
	c.prior, c.priorUnc, c.havePrior = c.slope, c.slopeUnc, true
	c.remeasure(x, recv)
	c.reseed([]held{{x: x, y: y, recv: recv}})
}

// merge takes the agreeing held-back samples of the run into the evidence
// and ends the run; earlier ones in it that did not agree were wild.
func (c *Clock) merge() {
	k := c.o.JumpConfirmSamples
	for i := 0; i < c.npend-k; i++ {
		if c.pend[(c.pendHead+i)%pendCap].arrival {
			c.outliers++
		}
	}
	for _, h := range c.lastPend(k) {
		c.insert(h.x, h.y)
		c.lastX = h.x
	}
	c.runN, c.npend, c.pendHead = 0, 0, 0
	c.rebuild()
}

// reseed restarts the estimator on the given samples (in arrival order).
func (c *Clock) reseed(hs []held) {
	c.restart(hs[0].x)
	for _, h := range hs {
		c.insert(h.x, h.y)
		c.lastX = h.x
	}
	c.lastBuild = hs[len(hs)-1].x
	c.rebuild()
}

// restart forgets all evidence; the drift prior is kept.
func (c *Clock) restart(x int64) {
	c.epoch = x
	c.newest = 0
	for i := range c.buckets {
		c.buckets[i] = bucket{}
	}
	c.haveLine, c.converged = false, false
	c.slope = c.prior
	c.runN, c.npend, c.pendHead = 0, 0, 0
	c.creepN = 0
	c.dirty = true
}

func (c *Clock) insert(x, y int64) {
	id := floorDiv(satSub(x, c.epoch), c.width)
	if id > c.newest {
		c.newest = id
		c.dirty = true
	}
	if id <= c.newest-int64(len(c.buckets)) {
		return // older than the window
	}
	b := c.slot(id)
	if b.n == 0 || b.id != id {
		*b = bucket{id: id, n: 1, x: x, y: y, tx: x, ty: y, firstX: x, lastX: x, sumX: float64(x - c.epoch)}
		c.dirty = true
		return
	}
	b.n++
	b.sumX += float64(x - c.epoch)
	b.firstX = min(b.firstX, x)
	b.lastX = max(b.lastX, x)
	if float64(y-b.y) < c.slope*float64(x-b.x) {
		b.x, b.y = x, y
		c.dirty = true
	}
	if float64(y-b.ty) > c.slope*float64(x-b.tx) {
		b.tx, b.ty = x, y
	}
}

// rebuild recomputes the hull and the line from the buckets.
func (c *Clock) rebuild() {
	c.dirty = false
	pts := c.scratch[:0]
	tops := c.tops[:0]
	var count int64
	var sumX float64
	first, last := int64(0), int64(0)
	nb := int64(len(c.buckets))
	k := c.newest - nb + 1
	si := int(((k % nb) + nb) % nb)
	for ; k <= c.newest; k++ {
		b := &c.buckets[si]
		if si++; si == len(c.buckets) {
			si = 0
		}
		if b.n == 0 || b.id != k {
			continue
		}
		if len(pts) == 0 {
			first = b.firstX
		}
		last = b.lastX
		pts = append(pts, point{b.x, b.y})
		tops = append(tops, point{b.tx, b.ty})
		count += b.n
		sumX += b.sumX
	}
	c.scratch, c.tops = pts, tops
	if len(pts) == 0 {
		c.haveLine, c.converged = false, false
		return
	}
	c.count = count
	c.span = last - first
	xbarAbs := c.epoch + int64(sumX/float64(count))

	// Lower convex hull (monotone chain; pts are in x order).
	h := c.hull[:0]
	for _, p := range pts {
		for len(h) >= 2 && cross(h[len(h)-2], h[len(h)-1], p) <= 0 {
			h = h[:len(h)-1]
		}
		h = append(h, p)
	}
	c.hull = h

	// After a jump the drift learnt before it (the prior) is kept until the
	// new evidence spans a quarter of the window: a device clock that steps
	// rarely changes its rate, and a short baseline gives a poor slope.
	usePrior := c.havePrior && c.span < int64(c.o.Window)/4
	fitted := c.span >= int64(c.o.MinSpan) && len(h) >= 2 && !usePrior
	slope := c.prior
	if fitted {
		// The drift is the hull's mean slope over the central half of the
		// window: a secant between the hull heights at xbar ± span/4. A
		// single hull edge (the LP optimum at xbar) can be short and its
		// slope noisy; the secant averages over the hull's curvature.
		q := c.span / 4
		a, b := xbarAbs-q, xbarAbs+q
		if b > a {
			slope = (hullAt(h, b) - hullAt(h, a)) / float64(b-a)
		}
		c.rawSlope = slope
		slope = max(-c.maxSlope, min(c.maxSlope, slope))
	}
	px, py := support(h, slope)
	c.xr, c.yr, c.slope = px, float64(py), slope
	c.haveLine = true
	c.xbar = float64(xbarAbs - px)

	// Envelope tightness. Two estimates, the larger wins: the 4th smallest
	// bucket residual (two of the smallest are the line's own support), and
	// the typical bucket minimum (median/ln2) divided by a quarter of the
	// number of buckets: the envelope at any x is pinned by the lowest of
	// about that many bucket minima.
	rs := c.resid[:0]
	var low [4]float64
	nl := 0
	for _, p := range pts {
		r := max(float64(p.y)-c.lineAt(p.x), 0)
		rs = append(rs, r)
		if nl < len(low) {
			low[nl] = r
			nl++
			for j := nl - 1; j > 0 && low[j] < low[j-1]; j-- {
				low[j], low[j-1] = low[j-1], low[j]
			}
			continue
		}
		if r < low[nl-1] {
			low[nl-1] = r
			for j := nl - 1; j > 0 && low[j] < low[j-1]; j-- {
				low[j], low[j-1] = low[j-1], low[j]
			}
		}
	}
	c.resid = rs
	var ex float64
	for _, p := range tops {
		ex = max(ex, float64(p.y)-c.lineAt(p.x))
	}
	c.excess = ex
	// The median moves slowly: refresh it every few rebuilds.
	if c.builds%8 == 0 || !c.converged {
		c.medResid = quickselect(rs, len(rs)/2)
	}
	c.builds++
	c.env = max(low[nl-1], 4*(c.medResid/math.Ln2)/float64(len(pts)))
	switch {
	case fitted:
		c.slopeUnc = min(8*c.env/float64(c.span)+1e-9, 2*c.maxSlope)
	case usePrior:
		c.slopeUnc = c.priorUnc
	default:
		c.slopeUnc = c.maxSlope
	}
	c.converged = (fitted || usePrior) && c.span >= int64(c.o.MinSpan) && count >= int64(c.o.MinSamples)
}

// quickselect returns the k-th smallest of v, reordering v.
func quickselect(v []float64, k int) float64 {
	lo, hi := 0, len(v)-1
	for lo < hi {
		p := v[(lo+hi)/2]
		i, j := lo, hi
		for i <= j {
			for v[i] < p {
				i++
			}
			for v[j] > p {
				j--
			}
			if i <= j {
				v[i], v[j] = v[j], v[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return v[k]
		}
	}
	return v[k]
}

// hullAt interpolates the hull's height at x, clamped to its ends.
func hullAt(h []point, x int64) float64 {
	if x <= h[0].x {
		return float64(h[0].y)
	}
	for i := 1; i < len(h); i++ {
		if x <= h[i].x {
			a, b := h[i-1], h[i]
			return float64(a.y) + float64(b.y-a.y)*float64(x-a.x)/float64(b.x-a.x)
		}
	}
	return float64(h[len(h)-1].y)
}

func cross(o, a, b point) float64 {
	return float64(a.x-o.x)*float64(b.y-o.y) - float64(a.y-o.y)*float64(b.x-o.x)
}

// support returns the point minimising y - slope·x.
func support(pts []point, slope float64) (int64, int64) {
	best := 0
	bv := math.Inf(1)
	x0 := pts[0].x
	for i, p := range pts {
		v := float64(p.y) - slope*float64(p.x-x0)
		if v < bv {
			best, bv = i, v
		}
	}
	return pts[best].x, pts[best].y
}

// Bound returns the bound on alignment error for a sample at device time
// src under the current estimate. It assumes the one-way delay reaches
// within a few envelope-spacings of MinDelay inside the window (true for
// any delay distribution with mass near its minimum, such as the
// exponential). It saturates: a wild src gives math.MaxInt64, never an
// overflow.
func (c *Clock) Bound(src int64) int64 {
	if !c.haveLine {
		return int64(c.o.JumpThreshold)
	}
	b := float64(c.o.ErrorFloor) + 3*c.env + c.slopeUnc*math.Abs(float64(satSub(src, c.xr)))
	if !c.converged {
		b += 3 * c.jitter
		if c.count < int64(c.o.MinSamples) {
			b = max(b, float64(c.o.JumpThreshold)/2)
		}
	}
	return max(satInt(math.Ceil(b)), 0)
}

// arrivalBound bounds the error of a sample stamped at arrival: its delay
// above the envelope, at most the largest seen in the window (and at least
// the jump threshold before there is a window).
func (c *Clock) arrivalBound() int64 {
	if !c.haveWindow() {
		return int64(c.o.JumpThreshold)
	}
	return satInt(math.Ceil(float64(c.o.ErrorFloor) + 3*c.env + max(c.excess, 4*c.jitter)))
}

// haveWindow reports whether the delays above the envelope were measured.
func (c *Clock) haveWindow() bool { return c.haveLine && c.count >= int64(c.o.MinSamples) }

// fresh reports whether the line was drawn through too few samples after a
// step to be tight (fewer than MinSamples since the reseed).
func (c *Clock) fresh() bool {
	return c.haveLine && c.jumps > 0 && c.count < int64(c.o.MinSamples)
}

// LastBound is the bound for the last sample passed to Align, as stamped
// (a held-back sample stamped at arrival gets the arrival bound).
func (c *Clock) LastBound() int64 {
	if c.lazyBnd {
		return c.Bound(c.lastBndX)
	}
	return c.lastBnd
}

// LastHeld reports whether the last sample passed to Align was held back
// (its device time disagreed with the estimate, or no offset was agreed
// yet) and stamped at arrival.
func (c *Clock) LastHeld() bool { return c.lastHeld }

// LastCandidate reports whether the last sample lay off the envelope and
// belongs to a run not (yet) confirmed as a step, and the hedge: what its
// error would be if the run turns out to be a backward step (0 when it was
// stamped from arrival anyway).
func (c *Clock) LastCandidate() (bool, int64) { return c.lastCand, c.lastHedge }

// LastWild reports whether the last sample was held back and agreed with
// no held-back sample before it (a wild timestamp rather than part of a
// step waiting to be confirmed).
func (c *Clock) LastWild() bool { return c.lastWild }

// LastStepNs is the signed size of the last confirmed step of the device
// clock: positive when it stepped backward (samples arrived later than the
// old offset said), negative when it stepped forward.
func (c *Clock) LastStepNs() int64 { return satInt(c.lastStep) }

// Converged reports whether the evidence spans MinSpan with MinSamples.
func (c *Clock) Converged() bool { return c.converged }

// OffsetNs is aligned gateway time minus device time at the last sample
// taken as evidence (never a held-back one).
func (c *Clock) OffsetNs() int64 {
	if !c.haveLine {
		return 0
	}
	return satSub(satInt(c.lineAt(c.lastX)), int64(c.o.MinDelay))
}

// DriftPPM is the device clock's rate error relative to the gateway clock
// in parts per million: positive when the device clock runs fast.
func (c *Clock) DriftPPM() float64 { return -c.slope * 1e6 }

// RateError is the device clock's rate error measured by the hull before
// it is clamped to MaxDriftPPM (a fraction: 0.02 is 2 % fast), and whether
// it was measured (the evidence spans MinSpan without a step).
func (c *Clock) RateError() (float64, bool) {
	if !c.haveLine || c.span < int64(c.o.MinSpan) || len(c.hull) < 2 {
		return 0, false
	}
	return -c.rawSlope, true
}

// SpanNs is how much device time the evidence in the window spans.
func (c *Clock) SpanNs() int64 { return c.span }

// JitterNs is the mean delay above the envelope (an exponential average).
func (c *Clock) JitterNs() int64 { return int64(c.jitter) }

// Jumps is the number of jumps detected; Outliers the number of samples
// held back and never confirmed (wild timestamps).
func (c *Clock) Jumps() uint64    { return c.jumps }
func (c *Clock) Outliers() uint64 { return c.outliers }

func (c *Clock) addEvent(e episode.ClockEvent) {
	for i, k := range eventKinds {
		if k == e.Kind {
			c.evCount[i]++
		}
	}
	if c.quiet {
		return
	}
	if len(c.events) >= c.o.MaxEvents {
		copy(c.events, c.events[1:])
		c.events = c.events[:len(c.events)-1]
		c.evDropped++
	}
	c.events = append(c.events, e)
}

// EventCounts returns how many events of each kind happened (including
// any no longer kept, and jumps while the stream was on arrival fallback).
func (c *Clock) EventCounts() map[string]uint64 {
	m := make(map[string]uint64, len(eventKinds))
	for i, k := range eventKinds {
		m[k] = c.evCount[i]
	}
	return m
}

// Events returns a copy of the recorded events with from <= T <= to.
func (c *Clock) Events(from, to int64) []episode.ClockEvent {
	var out []episode.ClockEvent
	for _, e := range c.events {
		if e.T >= from && e.T <= to {
			out = append(out, e)
		}
	}
	return out
}

// Report returns the clock figures at the last sample, with the events in
// [from, to].
func (c *Clock) Report(from, to int64) episode.ClockReport {
	return episode.ClockReport{
		Mode:         string(modeDevice),
		OffsetNs:     c.OffsetNs(),
		DriftPPM:     c.DriftPPM(),
		JitterNs:     c.JitterNs(),
		ErrorBoundNs: c.LastBound(),
		Events:       c.Events(from, to),
	}
}

const modeDevice = "device"
