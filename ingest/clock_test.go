package ingest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// obs is one synthetic observation with its ground truth: g is the true
// capture time on the gateway clock.
type obs struct {
	g, src, recv int64
}

// synthClock describes a synthetic device clock and network.
type synthClock struct {
	rateHz   float64
	dur      time.Duration
	offset   int64   // device minus gateway at start, ns
	driftPPM float64 // device rate error, positive = fast
	jumpAt   int64   // relative to start; 0 = no jump
	jump     int64   // device clock step, ns
	loss     float64 // fraction of samples lost
}

const synthEpoch = int64(1_790_000_000) * int64(time.Second)

// generate produces observations in arrival order. The one-way delay is
// exponential (mean 5ms) capped at 50ms, with 0.5% spikes of 20-50ms, and
// delivery is in order (head-of-line blocking, as over TCP).
func (s synthClock) generate(rng *rand.Rand) []obs {
	period := float64(time.Second) / s.rateHz
	n := int(float64(s.dur) / period)
	out := make([]obs, 0, n)
	var lastRecv int64
	for k := 0; k < n; k++ {
		g := synthEpoch + int64(float64(k)*period) + int64(rng.NormFloat64()*20e3)
		if rng.Float64() < s.loss {
			continue
		}
		rel := g - synthEpoch
		src := g + s.offset + int64(float64(rel)*s.driftPPM*1e-6)
		if s.jumpAt != 0 && rel >= s.jumpAt {
			src += s.jump
		}
		d := min(rng.ExpFloat64()*5e6, 50e6)
		if rng.Float64() < 0.005 {
			d = 20e6 + rng.Float64()*30e6
		}
		recv := max(g+int64(d), lastRecv)
		lastRecv = recv
		out = append(out, obs{g: g, src: src, recv: recv})
	}
	return out
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// TestClockGroundTruth checks the estimator against synthetic streams with
// known offset (±2s), drift (±200ppm), exponential delay jitter, 1% loss and
// one clock jump, for several seeds and three stream rates.
func TestClockGroundTruth(t *testing.T) {
	streams := []struct {
		name string
		hz   float64
	}{{"video30", 30}, {"telemetry200", 200}, {"lidar10", 10}}
	const dur = 120 * time.Second
	for seed := uint64(1); seed <= 5; seed++ {
		for _, st := range streams {
			t.Run(fmt.Sprintf("seed%d/%s", seed, st.name), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, uint64(st.hz)))
				jumpMag := int64((0.2 + 2.8*rng.Float64()) * 1e9)
				if rng.IntN(2) == 0 {
					jumpMag = -jumpMag
				}
				sc := synthClock{
					rateHz:   st.hz,
					dur:      dur,
					offset:   int64((rng.Float64()*4 - 2) * 1e9),
					driftPPM: rng.Float64()*400 - 200,
					jumpAt:   int64((0.4 + 0.2*rng.Float64()) * float64(dur)),
					jump:     jumpMag,
					loss:     0.01,
				}
				data := sc.generate(rng)
				c, err := NewClock(ClockOptions{})
				if err != nil {
					t.Fatal(err)
				}
				// Convergence: 5s, or 80 samples for slow streams (at 10Hz
				// with 5ms mean jitter the envelope needs ~8s of evidence).
				settle := max(int64(5*time.Second), int64(80*float64(time.Second)/st.hz))
				var errs []float64
				var ratios []float64
				var worst, worstBound float64
				var uncovered int
				for _, o := range data {
					got := c.Align(o.src, o.recv)
					rel := o.g - synthEpoch
					if rel < settle || (rel >= sc.jumpAt && rel < sc.jumpAt+settle) {
						continue
					}
					e := math.Abs(float64(got - o.g))
					errs = append(errs, e)
					bound := float64(c.LastBound())
					if e > bound {
						uncovered++
					}
					ratios = append(ratios, e/bound)
					if e > worst {
						worst, worstBound = e, bound
					}
				}
				p99 := percentile(errs, 0.99)
				t.Logf("offset=%v drift=%.1fppm jump=%v: n=%d p50=%.1fµs p99=%.1fµs max=%.1fµs (bound there %.1fµs) est drift=%.2fppm jitter=%v bound=%v",
					time.Duration(sc.offset), sc.driftPPM, time.Duration(sc.jump), len(errs), percentile(errs, 0.5)/1e3, p99/1e3, worst/1e3, worstBound/1e3,
					c.DriftPPM(), time.Duration(c.JitterNs()), time.Duration(c.LastBound()))
				if p99 > 1e6 {
					t.Errorf("p99 alignment error %.3fms, want <= 1ms", p99/1e6)
				}
				// The bound is statistical (it assumes the delay has mass
				// near its minimum): it must cover at least 99.9% of samples
				// and never be off by more than 2x.
				if frac := float64(uncovered) / float64(len(errs)); frac > 0.001 {
					t.Errorf("%d of %d samples (%.3f%%) had an error above the reported bound (worst %.1fµs vs bound %.1fµs)", uncovered, len(errs), 100*frac, worst/1e3, worstBound/1e3)
				}
				if r := percentile(ratios, 1); r > 2 {
					t.Errorf("worst error/bound ratio %.2f, want <= 2", r)
				}
				if d := math.Abs(c.DriftPPM() - sc.driftPPM); d > 5 {
					t.Errorf("drift estimate %.2fppm, truth %.2fppm", c.DriftPPM(), sc.driftPPM)
				}
				last := data[len(data)-1]
				wantOff := last.g - last.src
				if d := math.Abs(float64(c.OffsetNs() - wantOff)); d > 1e6 {
					t.Errorf("offset %v, truth %v", time.Duration(c.OffsetNs()), time.Duration(wantOff))
				}
				evs := c.Events(math.MinInt64, math.MaxInt64)
				if c.Jumps() != 1 || len(evs) != 1 || evs[0].Kind != EventJump {
					t.Fatalf("jumps=%d events=%+v, want exactly one jump", c.Jumps(), evs)
				}
				if at := evs[0].T - synthEpoch - sc.jumpAt; at < 0 || at > int64(2*time.Second) {
					t.Errorf("jump detected %v after it happened, want within 2s", time.Duration(at))
				}
			})
		}
	}
}

// TestClockOutliers: isolated device-timestamp glitches (points far below
// the envelope), isolated huge delays and a short congestion burst must
// neither trigger a jump nor disturb the estimate.
func TestClockOutliers(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	sc := synthClock{rateHz: 100, dur: 90 * time.Second, offset: int64(300 * time.Millisecond), driftPPM: -60, loss: 0.01}
	data := sc.generate(rng)
	c, _ := NewClock(ClockOptions{})
	var glitches uint64
	var errs []float64
	for i, o := range data {
		src, recv := o.src, o.recv
		switch {
		case i > 1000 && i%997 == 0:
			// The device stamped this one 50ms late: it looks 50ms below
			// the envelope.
			src += int64(50 * time.Millisecond)
			glitches++
		case i > 1000 && i%1499 == 0:
			recv += int64(900 * time.Millisecond) // one very late sample
		case i >= 5000 && i < 5030:
			// 300ms of congestion: samples queue, then drain together.
			recv = max(recv, data[5000].g+int64(300*time.Millisecond))
		}
		got := c.Align(src, recv)
		if i > 500 && src == o.src && recv == o.recv {
			errs = append(errs, math.Abs(float64(got-o.g)))
		}
	}
	if c.Jumps() != 0 {
		t.Fatalf("%d jumps detected on outliers: %+v", c.Jumps(), c.Events(math.MinInt64, math.MaxInt64))
	}
	if c.Outliers() != glitches {
		t.Fatalf("%d outliers dropped, want the %d glitches", c.Outliers(), glitches)
	}
	if p := percentile(errs, 0.99); p > 1e6 {
		t.Fatalf("p99 error %.3fms with outliers", p/1e6)
	}
	if math.Abs(c.DriftPPM()-sc.driftPPM) > 5 {
		t.Fatalf("drift %.2f, truth %.2f", c.DriftPPM(), sc.driftPPM)
	}
}

func TestClockOptionsValidate(t *testing.T) {
	for _, o := range []ClockOptions{
		{Window: time.Millisecond},
		{Buckets: 3},
		{MaxDriftPPM: -1},
		{MinSpan: 2 * time.Minute},
		{JumpConfirmSamples: 100},
	} {
		if _, err := NewClock(o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
	if _, err := NewClock(ClockOptions{}); err != nil {
		t.Fatal(err)
	}
}
