package ingest

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/episoded/episoded/episode"
)

// Clock event kinds recorded in episode.ClockEvent.Kind.
const (
	// EventJump: the device clock jumped (or the estimate became
	// inconsistent with the data); the estimator was reset.
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
)

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
	// the envelope (impossible for a negative delay) is held back until
	// JumpConfirmSamples consecutive samples confirm it; an unconfirmed one
	// is dropped as an outlier. Default 1ms.
	OutlierThreshold time.Duration
	// JumpThreshold: once converged, samples more than this far above the
	// envelope for JumpConfirm (and at least JumpConfirmSamples samples)
	// mean the device clock stepped backwards. Default 100ms.
	JumpThreshold time.Duration
	// JumpConfirm is how long an apparent backward step must last. Default
	// 500ms.
	JumpConfirm time.Duration
	// JumpConfirmSamples is how many consecutive samples confirm a jump.
	// Default 3.
	JumpConfirmSamples int
	// MinDelay is the smallest possible one-way delay from capture to
	// arrival; aligned time is the lower envelope minus MinDelay. Default 0.
	MinDelay time.Duration
	// ErrorFloor is added to every error bound (timestamp quantisation,
	// model error). Default 20µs.
	ErrorFloor time.Duration
	// MaxEvents is how many clock events are kept; older ones are dropped.
	// Default 64.
	MaxEvents int
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
	if o.JumpConfirm == 0 {
		o.JumpConfirm = 500 * time.Millisecond
	}
	if o.JumpConfirmSamples == 0 {
		o.JumpConfirmSamples = 3
	}
	if o.ErrorFloor == 0 {
		o.ErrorFloor = 20 * time.Microsecond
	}
	if o.MaxEvents == 0 {
		o.MaxEvents = 64
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
	if o.OutlierThreshold <= 0 || o.JumpThreshold <= 0 || o.JumpConfirm < 0 || o.MinDelay < 0 || o.ErrorFloor < 0 {
		errs = append(errs, errors.New("thresholds, min delay and error floor must not be negative"))
	}
	if o.JumpConfirmSamples < 1 || o.JumpConfirmSamples > pendCap {
		errs = append(errs, fmt.Errorf("jump confirm samples %d: must be within [1, %d]", o.JumpConfirmSamples, pendCap))
	}
	if o.MaxEvents < 1 {
		errs = append(errs, fmt.Errorf("max events %d: must be at least 1", o.MaxEvents))
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
	firstX int64
	lastX  int64
	sumX   float64 // Σ (x - epoch)
}

type point struct{ x, y int64 }

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
// A Clock is not safe for concurrent use. Per sample it costs a few tens of
// nanoseconds and allocates nothing; a hull rebuild is O(Buckets) and happens
// at most a few times per bucket.
type Clock struct {
	o       ClockOptions
	width   int64
	buckets []bucket
	scratch []point
	hull    []point

	started bool
	epoch   int64
	newest  int64
	dirty   bool

	// The line L(x) = yr + slope·(x - xr).
	haveLine  bool
	xr        int64
	yr        float64
	slope     float64
	prior     float64
	priorUnc  float64
	havePrior bool
	resid     []float64
	maxSlope  float64
	env       float64 // envelope tightness
	slopeUnc  float64
	xbar      float64 // mean x of the window, relative to xr
	span      int64
	count     int64
	converged bool
	jitter    float64

	pend      [pendCap]point
	pendR     [pendCap]float64
	npend     int
	pendHead  int
	negRun    int
	posRun    int
	posStart  int64
	outliers  uint64
	jumps     uint64
	lastX     int64
	lastRecv  int64
	lastHeld  bool
	lastBuild int64
	builds    uint64
	medResid  float64
	samples   uint64
	events    []episode.ClockEvent
	evDropped uint64
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

// lineAt evaluates the envelope at device time x.
func (c *Clock) lineAt(x int64) float64 {
	return c.yr + c.slope*float64(x-c.xr)
}

// Align feeds one observation (device time src, gateway arrival recv) and
// returns the aligned gateway time of the sample. src must be non-zero.
func (c *Clock) Align(src, recv int64) int64 {
	c.samples++
	c.lastX, c.lastRecv = src, recv
	c.lastHeld = false
	y := recv - src
	if !c.started {
		c.restart(src)
	}
	r := 0.0
	if c.haveLine {
		r = float64(y) - c.lineAt(src)
	}
	if c.haveLine && c.converged {
		if r < -float64(c.o.OutlierThreshold) {
			// Below the envelope: impossible unless the clock moved.
			if c.posRun > 0 {
				c.posRun, c.npend = 0, 0
			}
			c.push(src, y, r)
			c.negRun++
			if c.negRun < c.o.JumpConfirmSamples {
				c.lastHeld = true
				return recv - int64(c.o.MinDelay)
			}
			c.jump(recv)
			return c.stamp(src, recv)
		}
		if c.negRun > 0 {
			c.outliers += uint64(c.negRun)
			c.negRun, c.npend = 0, 0
		}
		if r > float64(c.o.JumpThreshold) {
			if c.posRun == 0 {
				c.posStart = src
			}
			c.posRun++
			c.push(src, y, r)
			if c.posRun >= c.o.JumpConfirmSamples && src-c.posStart >= int64(c.o.JumpConfirm) {
				c.jump(recv)
				return c.stamp(src, recv)
			}
		} else if c.posRun > 0 {
			c.posRun, c.npend = 0, 0
		}
	}
	if c.haveLine {
		c.jitter += (max(r, 0) - c.jitter) / 64
	}
	c.insert(src, y)
	// Rebuilding costs O(Buckets); once converged it is done at most every
	// rebuildEvery of device time, so the cost is per second of stream,
	// not per sample. In between, a new lowest point only tightens the
	// envelope: the stale line stays below the data, and stamp never
	// returns a time after arrival.
	if c.dirty && (!c.converged || src-c.lastBuild >= rebuildEvery || src < c.lastBuild) {
		c.lastBuild = src
		c.rebuild()
	}
	return c.stamp(src, recv)
}

// stamp maps src through the current line, never later than arrival.
func (c *Clock) stamp(src, recv int64) int64 {
	t := src + int64(math.Round(c.lineAt(src))) - int64(c.o.MinDelay)
	if lim := recv - int64(c.o.MinDelay); t > lim {
		t = lim
	}
	return t
}

func (c *Clock) push(x, y int64, r float64) {
	i := (c.pendHead + c.npend) % pendCap
	if c.npend == pendCap {
		c.pendHead = (c.pendHead + 1) % pendCap
	} else {
		c.npend++
	}
	c.pend[i] = point{x, y}
	c.pendR[i] = r
}

// jump resets the estimator on the held-back samples and records an event.
func (c *Clock) jump(recv int64) {
	var rs [pendCap]float64
	for i := 0; i < c.npend; i++ {
		rs[i] = c.pendR[(c.pendHead+i)%pendCap]
	}
	sort.Float64s(rs[:c.npend])
	d := rs[c.npend/2]
	dir := "backward"
	if d < 0 {
		dir = "forward"
	}
	c.jumps++
	c.addEvent(episode.ClockEvent{T: recv, Kind: EventJump,
		Detail: fmt.Sprintf("device clock jumped %s by %v; estimator reset", dir, time.Duration(math.Abs(d)).Round(time.Microsecond))})
	var held [pendCap]point
	n := c.npend
	for i := 0; i < n; i++ {
		held[i] = c.pend[(c.pendHead+i)%pendCap]
	}
	if c.converged {
		c.prior, c.priorUnc, c.havePrior = c.slope, c.slopeUnc, true
	}
	c.restart(held[0].x)
	for i := 0; i < n; i++ {
		c.insert(held[i].x, held[i].y)
	}
	c.rebuild()
}

// restart forgets all evidence; the drift prior is kept.
func (c *Clock) restart(x int64) {
	c.started = true
	c.epoch = x
	c.newest = 0
	for i := range c.buckets {
		c.buckets[i] = bucket{}
	}
	c.haveLine, c.converged = false, false
	c.slope = c.prior
	c.negRun, c.posRun, c.npend, c.pendHead = 0, 0, 0, 0
	c.dirty = true
}

func (c *Clock) insert(x, y int64) {
	id := floorDiv(x-c.epoch, c.width)
	if id > c.newest {
		c.newest = id
		c.dirty = true
	}
	if id <= c.newest-int64(len(c.buckets)) {
		return // older than the window
	}
	b := c.slot(id)
	if b.n == 0 || b.id != id {
		*b = bucket{id: id, n: 1, x: x, y: y, firstX: x, lastX: x, sumX: float64(x - c.epoch)}
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
}

// rebuild recomputes the hull and the line from the buckets.
func (c *Clock) rebuild() {
	c.dirty = false
	pts := c.scratch[:0]
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
		count += b.n
		sumX += b.sumX
	}
	c.scratch = pts
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
// exponential); held-back samples, stamped at arrival, get the jump
// threshold.
func (c *Clock) Bound(src int64) int64 {
	if !c.haveLine {
		return int64(c.o.JumpThreshold)
	}
	b := float64(c.o.ErrorFloor) + 3*c.env + c.slopeUnc*math.Abs(float64(src-c.xr))
	if !c.converged {
		b += 3 * c.jitter
		if c.count < int64(c.o.MinSamples) {
			b = max(b, float64(c.o.JumpThreshold)/2)
		}
	}
	return int64(math.Ceil(b))
}

// LastBound is Bound for the last sample passed to Align, accounting for a
// sample that was held back and stamped at arrival.
func (c *Clock) LastBound() int64 {
	if c.lastHeld {
		return int64(c.o.JumpThreshold)
	}
	return c.Bound(c.lastX)
}

// Converged reports whether the evidence spans MinSpan with MinSamples.
func (c *Clock) Converged() bool { return c.converged }

// OffsetNs is aligned gateway time minus device time at the last sample.
func (c *Clock) OffsetNs() int64 {
	if !c.haveLine {
		return 0
	}
	return int64(math.Round(c.lineAt(c.lastX))) - int64(c.o.MinDelay)
}

// DriftPPM is the device clock's rate error relative to the gateway clock
// in parts per million: positive when the device clock runs fast.
func (c *Clock) DriftPPM() float64 { return -c.slope * 1e6 }

// JitterNs is the mean delay above the envelope (an exponential average).
func (c *Clock) JitterNs() int64 { return int64(c.jitter) }

// Jumps is the number of jumps detected; Outliers the number of samples
// dropped from the evidence as lying below the envelope unconfirmed.
func (c *Clock) Jumps() uint64    { return c.jumps }
func (c *Clock) Outliers() uint64 { return c.outliers }

func (c *Clock) addEvent(e episode.ClockEvent) {
	if len(c.events) >= c.o.MaxEvents {
		copy(c.events, c.events[1:])
		c.events = c.events[:len(c.events)-1]
		c.evDropped++
	}
	c.events = append(c.events, e)
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
