package ingest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/sample"
)

// TestClockPoisoning: one wild first sample (a year ahead, int64 max, zero,
// an hour behind, negative), then 60 s of good samples. The wild sample is
// stamped at arrival and flagged; it never moves the estimate: after the
// first few, every good sample is within 1 ms of ground truth. A wild
// sample in the middle of the stream does nothing either.
func TestClockPoisoning(t *testing.T) {
	wilds := []struct {
		name string
		src  func(good int64) int64
	}{
		{"plus1year", func(g int64) int64 { return g + int64(365*24*time.Hour) }},
		{"int64max", func(int64) int64 { return math.MaxInt64 }},
		{"zero", func(int64) int64 { return 0 }},
		{"minus1hour", func(g int64) int64 { return g - int64(time.Hour) }},
		{"negative", func(int64) int64 { return -1 }},
		{"int64min", func(int64) int64 { return math.MinInt64 }},
	}
	for _, hz := range []float64{10, 30, 200} {
		for _, w := range wilds {
			t.Run(fmt.Sprintf("%s/%gHz", w.name, hz), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(hz), 3))
				sc := synthClock{rateHz: hz, dur: 60 * time.Second, offset: int64(1700 * time.Millisecond), driftPPM: 120, loss: 0.01}
				data := sc.generate(rng)
				d := sample.Descriptor{Stream: "c1/dev", Kind: sample.KindTelemetry, Clock: sample.ClockDevice}
				s, err := NewStream(d, 0, ClockOptions{})
				if err != nil {
					t.Fatal(err)
				}
				// The wild sample arrives just before the first good one.
				first := data[0]
				wild := sample.Sample{SrcT: w.src(first.src), RecvT: first.recv - int64(time.Second/time.Duration(hz))}
				s.Process(&wild)
				if wild.T > wild.RecvT || wild.RecvT-wild.T > int64(100*time.Millisecond) || wild.Flags&sample.ArrivalTime == 0 {
					t.Fatalf("wild sample: T=%d (arrival %d) flags %b, want stamped at arrival and flagged", wild.T, wild.RecvT, wild.Flags)
				}
				// Settle: the first 2 s (until the estimate converges), or
				// 80 samples for slow streams (at 10 Hz with 5 ms mean
				// jitter the envelope needs ~8 s of evidence).
				settle := max(int64(2*time.Second), int64(80*float64(time.Second)/hz))
				var worst float64
				worstAt := 0
				prevT := wild.T
				for i, o := range data {
					x := sample.Sample{SrcT: o.src, RecvT: o.recv}
					if i == len(data)/2 {
						// A wild sample mid-stream as well.
						y := sample.Sample{SrcT: w.src(o.src), RecvT: o.recv - 1}
						s.Process(&y)
						if y.T > y.RecvT || y.Flags&sample.ArrivalTime == 0 || y.T < prevT {
							t.Fatalf("mid-stream wild sample: T=%d recv=%d prev=%d flags %b", y.T, y.RecvT, prevT, y.Flags)
						}
						prevT = y.T
					}
					s.Process(&x)
					if x.T < prevT {
						t.Fatalf("sample %d: T went back", i)
					}
					prevT = x.T
					if o.g-data[0].g < settle {
						continue
					}
					if e := math.Abs(float64(x.T - o.g)); e > worst {
						worst, worstAt = e, i
					}
				}
				st := s.ClockStatus()
				c := s.Counters()
				t.Logf("worst error after %v: %.1fµs (sample %d); held=%d outliers=%d jumps=%d status=%+v", time.Duration(settle), worst/1e3, worstAt, c.ClockHeld, st.Outliers, st.Jumps, st)
				if worst > 1e6 {
					t.Errorf("worst error %.3fms after the first %v, want <= 1ms", worst/1e6, time.Duration(settle))
				}
				if st.Jumps != 0 || st.Source != SourceDevice {
					t.Errorf("a wild sample caused %d jumps / source %q (%s)", st.Jumps, st.Source, st.SourceReason)
				}
				if st.ErrorBoundNs <= 0 || st.ErrorBoundNs > int64(time.Millisecond) {
					t.Errorf("error bound %d ns at the end", st.ErrorBoundNs)
				}
				if math.Abs(float64(st.OffsetNs-(data[len(data)-1].g-data[len(data)-1].src))) > 1e6 {
					t.Errorf("offset %v", time.Duration(st.OffsetNs))
				}
				// Both wild samples are counted (zero is "no device time",
				// not a held-back sample).
				wantHeld := uint64(2)
				if w.name == "zero" {
					wantHeld = 0
				}
				// (Good samples far below a young envelope that never find
				// two more to agree with are dropped as outliers too.)
				if st.Outliers < wantHeld {
					t.Errorf("outliers %d, want at least the %d wild samples", st.Outliers, wantHeld)
				}
				if b, ok := s.BoundOver(wild.RecvT-int64(time.Second), data[len(data)-1].recv); !ok || b <= 0 {
					t.Errorf("bound over all: %d %v (must saturate, not overflow)", b, ok)
				}
			})
		}
	}
}

// TestClockBoundsSaturate: extreme inputs straight into a Clock never
// produce a negative or overflowed bound, offset or stamp after arrival.
func TestClockBoundsSaturate(t *testing.T) {
	c, _ := NewClock(ClockOptions{})
	vals := []int64{math.MaxInt64, math.MinInt64, -1, 1, 0, synthEpoch, -synthEpoch}
	recv := synthEpoch
	for i := range 3000 {
		src := recv + 5_000_000
		if i%7 == 3 {
			src = vals[(i/7)%len(vals)]
		}
		recv += int64(10 * time.Millisecond)
		got := c.Align(src, recv)
		if got > recv {
			t.Fatalf("sample %d (src %d): stamped %d after arrival %d", i, src, got, recv)
		}
		if b := c.LastBound(); b < 0 {
			t.Fatalf("sample %d (src %d): negative bound %d", i, src, b)
		}
		for _, v := range vals {
			if b := c.Bound(v); b < 0 {
				t.Fatalf("Bound(%d) = %d", v, b)
			}
		}
	}
	if c.Jumps() != 0 {
		t.Fatalf("%d jumps from isolated wild values", c.Jumps())
	}
	if off := c.OffsetNs(); off < 0 || off > int64(10*time.Millisecond) {
		t.Fatalf("offset %v", time.Duration(off))
	}
}

// TestClockSteps: steps of ±200 ms and ±2 s in the middle of a stream, on
// the ground-truth harness, at 10, 30 and 200 Hz and several seeds. The
// step is detected within 3 samples or 100 ms (at 10 Hz 3 samples take
// 200 ms), its size is measured within 5 %, T never goes back, aligned time
// stays continuous across it (no interval a gap rule would count: at most
// 3 periods), and after re-convergence the error is back under 1 ms.
func TestClockSteps(t *testing.T) {
	for _, hz := range []float64{10, 30, 200} {
		for _, step := range []time.Duration{200 * time.Millisecond, -200 * time.Millisecond, 2 * time.Second, -2 * time.Second,
			30 * time.Millisecond, -30 * time.Millisecond, -60 * time.Millisecond} {
			for seed := uint64(1); seed <= 4; seed++ {
				t.Run(fmt.Sprintf("%gHz/%v/seed%d", hz, step, seed), func(t *testing.T) {
					rng := rand.New(rand.NewPCG(seed, uint64(hz)+uint64(step)))
					const jumpAt = int64(30 * time.Second)
					sc := synthClock{rateHz: hz, dur: 60 * time.Second, offset: int64(-800 * time.Millisecond), driftPPM: -70,
						jumpAt: jumpAt, jump: int64(step)}
					data := sc.generate(rng)
					d := sample.Descriptor{Stream: "c1/dev", Kind: sample.KindTelemetry, Clock: sample.ClockDevice}
					s, _ := NewStream(d, 0, ClockOptions{})
					period := int64(float64(time.Second) / hz)
					rep, _ := NewReport(d, ReportOptions{})
					var prevT int64
					firstStepped := -1
					detectedAt := -1
					var maxIv int64
					var worstAfter float64
					type tErr struct{ t, err int64 }
					var errs []tErr
					for i, o := range data {
						x := sample.Sample{SrcT: o.src, RecvT: o.recv}
						jumps := s.Clock().Jumps()
						s.Process(&x)
						if o.g-synthEpoch > int64(5*time.Second) {
							rep.Add(&x) // the episode: well after the stream started
						}
						if i > 0 && x.T < prevT {
							t.Fatalf("sample %d: T went back by %v", i, time.Duration(prevT-x.T))
						}
						rel := o.g - synthEpoch
						if rel >= jumpAt-int64(2*time.Second) && rel < jumpAt+int64(2*time.Second) && i > 0 {
							maxIv = max(maxIv, x.T-prevT)
						}
						prevT = x.T
						if firstStepped < 0 && rel >= jumpAt {
							firstStepped = i
						}
						if s.Clock().Jumps() != jumps && detectedAt < 0 {
							detectedAt = i
						}
						if rel > jumpAt+int64(5*time.Second) {
							worstAfter = max(worstAfter, math.Abs(float64(x.T-o.g)))
						}
						if rel > int64(5*time.Second) {
							errs = append(errs, tErr{x.T, abs64(x.T - o.g)})
						}
					}
					// The stated bounds, as the episode report reads them,
					// cover every sample, the ones around the step too.
					uncovered := 0
					for _, e := range errs {
						if b, ok := s.BoundOver(e.t, e.t); !ok || e.err > b {
							uncovered++
						}
					}
					if uncovered > len(errs)/1000 {
						t.Errorf("%d of %d samples had an error above their stated bound", uncovered, len(errs))
					}
					if detectedAt < 0 || s.Clock().Jumps() != 1 {
						t.Fatalf("%d jumps detected, want 1", s.Clock().Jumps())
					}
					lagSamples := detectedAt - firstStepped + 1
					lag := time.Duration(data[detectedAt].recv - data[firstStepped].g)
					measured := time.Duration(s.Clock().LastStepNs())
					// A backward step makes samples arrive later than the old
					// offset says: the estimator measures +step for a device
					// clock that went back (step < 0).
					errPct := 100 * math.Abs(float64(measured+step)) / math.Abs(float64(step))
					t.Logf("detected after %d samples (%v), measured %v (%.2f%% off), max interval %v (period %v), worst error after 5s %.1fµs, reordered %d",
						lagSamples, lag, -measured, errPct, time.Duration(maxIv), time.Duration(period), worstAfter/1e3, s.Counters().Reordered)
					// Within a few (3) samples, or 100 ms at most: fast
					// streams may take a few more samples to tell a step
					// from jitter, slow ones need their 3 samples.
					small := step > -100*time.Millisecond && step < 100*time.Millisecond
					switch {
					case small:
						// A step back smaller than the jump threshold reads
						// as a delay for a while: every sample lying above
						// the envelope for 1 s (and 10 samples) tells it. A
						// small step forward needs 3 samples more than 1 ms
						// below the envelope, which delay jitter can hide.
						if lag > 1200*time.Millisecond+time.Duration(10*period) {
							t.Errorf("small step detected after %v, want about 1 s at most", lag)
						}
					case lagSamples > 3 && lag > 100*time.Millisecond:
						t.Errorf("step detected after %d samples and %v, want 3 samples or 100ms", lagSamples, lag)
					}
					// Within 5 %; a small step is measured to the jitter's
					// resolution (the smallest excess delay of 3 samples).
					if errPct > 5 && (math.Abs(float64(step)) >= float64(100*time.Millisecond) || math.Abs(float64(measured+step)) > 6e6) {
						t.Errorf("step measured as %v, truth %v (%.1f%% off)", -measured, step, errPct)
					}
					if maxIv > 3*period {
						t.Errorf("interval of %v across the step (period %v): T is not continuous", time.Duration(maxIv), time.Duration(period))
					}
					if worstAfter > 1e6 {
						t.Errorf("worst error 5 s after the step %.3fms", worstAfter/1e6)
					}
					if r := rep.Result(); r.Gaps != 0 {
						t.Errorf("the step was counted as %d gaps", r.Gaps)
					}
					if st := s.ClockStatus(); st.Source != SourceDevice {
						t.Errorf("one step put the stream on %s: %s", st.Source, st.SourceReason)
					}
				})
			}
		}
	}
}

// untrusted generates a camera whose device timestamps cannot be used:
// mode "double" runs them at twice the real rate and steps them back at
// every keyframe (every second), "random" makes them random. Arrival is
// steady (exponential delay, mean 2 ms).
func untrusted(mode string, hz float64, dur time.Duration, rng *rand.Rand) []obs {
	period := float64(time.Second) / hz
	n := int(float64(dur) / period)
	out := make([]obs, 0, n)
	var lastRecv int64
	for k := range n {
		g := synthEpoch + int64(float64(k)*period)
		rel := g - synthEpoch
		var src int64
		late := strings.HasSuffix(mode, "-late")
		if late {
			// Good timestamps for the first 10 s, then bad ones.
			if rel < int64(10*time.Second) {
				src = g + int64(1500*time.Millisecond)
				recv := max(g+int64(rng.ExpFloat64()*2e6), lastRecv)
				lastRecv = recv
				out = append(out, obs{g: g, src: src, recv: recv})
				continue
			}
			rel -= int64(10 * time.Second)
		}
		switch strings.TrimSuffix(mode, "-late") {
		case "double":
			gop := rel / int64(time.Second)
			src = synthEpoch + 500*int64(time.Millisecond) + gop*int64(time.Second) + 2*(rel-gop*int64(time.Second))
		case "random":
			src = synthEpoch + rng.Int64N(int64(24*time.Hour)) - int64(12*time.Hour)
		}
		recv := max(g+int64(rng.ExpFloat64()*2e6), lastRecv)
		lastRecv = recv
		out = append(out, obs{g: g, src: src, recv: recv})
	}
	return out
}

// TestClockUntrusted: a device clock that cannot be trusted puts the stream
// on arrival time within a few seconds, as a recorded event with a reason;
// from then on T is arrival time and the stated bound covers the true
// error. When the clock becomes consistent again the stream goes back.
func TestClockUntrusted(t *testing.T) {
	for _, mode := range []string{"double", "random", "double-late", "random-late"} {
		t.Run(mode, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 5))
			bad := untrusted(mode, 30, 20*time.Second, rng)
			badFrom := time.Duration(0)
			if strings.HasSuffix(mode, "-late") {
				badFrom = 10 * time.Second
			}
			d := sample.Descriptor{Stream: "c1/cam", Kind: sample.KindVideo, Clock: sample.ClockDevice}
			s, _ := NewStream(d, 0, ClockOptions{})
			fellAt := time.Duration(-1)
			var worst, worstBound float64
			var uncovered int
			var prevT int64
			for i, o := range bad {
				x := sample.Sample{SrcT: o.src, RecvT: o.recv}
				s.Process(&x)
				if x.T < prevT {
					t.Fatalf("sample %d: T went back", i)
				}
				prevT = x.T
				st := s.ClockStatus()
				if fellAt < 0 && st.Source == SourceArrival {
					fellAt = time.Duration(o.g-synthEpoch) - badFrom
					if fellAt < 0 {
						t.Fatalf("fell back while the timestamps were good: %s", st.SourceReason)
					}
				}
				if fellAt >= 0 {
					if d := x.T - x.RecvT; d > int64(10*time.Millisecond) || d < -int64(10*time.Millisecond) {
						t.Fatalf("sample %d on arrival fallback: T is %v from arrival", i, time.Duration(d))
					}
					if x.Flags&sample.ArrivalTime == 0 {
						t.Fatalf("sample %d on arrival fallback not flagged", i)
					}
					e := math.Abs(float64(x.T - o.g))
					b, _ := s.BoundOver(x.T, x.T)
					if e > float64(b) {
						uncovered++
					}
					if e > worst {
						worst, worstBound = e, float64(b)
					}
				}
			}
			st := s.ClockStatus()
			t.Logf("fell back after %v: %s; worst error %.2fms (bound there %.2fms), status bound %v; events %v",
				fellAt, st.SourceReason, worst/1e6, worstBound/1e6, time.Duration(st.ErrorBoundNs), st.Events)
			if fellAt < 0 || fellAt > 5*time.Second {
				t.Fatalf("fell back to arrival after %v, want within a few seconds", fellAt)
			}
			if st.Source != SourceArrival || st.SourceReason == "" || st.Mode != "arrival" {
				t.Fatalf("status %+v", st)
			}
			if uncovered > 0 {
				t.Errorf("%d samples on arrival fallback had an error above their stated bound (worst %.2fms vs %.2fms)", uncovered, worst/1e6, worstBound/1e6)
			}
			if st.ErrorBoundNs > int64(40*time.Millisecond) {
				t.Errorf("stated bound %v: arrival jitter is ~2 ms (exponential)", time.Duration(st.ErrorBoundNs))
			}
			evs := s.Clock().Events(math.MinInt64, math.MaxInt64)
			var untrustedEv int
			for _, e := range evs {
				if e.Kind == EventUntrusted {
					untrustedEv++
					if !strings.Contains(e.Detail, "unusable") {
						t.Errorf("event detail %q", e.Detail)
					}
				}
			}
			if untrustedEv != 1 || len(evs) > 8 {
				t.Errorf("events %+v: want one %s and no storm", evs, EventUntrusted)
			}
			if r := s.ClockReport(math.MinInt64, math.MaxInt64); r.ClockSource != SourceArrival || r.ClockSourceReason == "" {
				t.Errorf("report %+v", r)
			}

			// The device clock becomes consistent again: after the
			// probation the stream goes back to it (another event).
			good := synthClock{rateHz: 30, dur: 60 * time.Second, offset: int64(300 * time.Millisecond), driftPPM: 40}.generate(rng)
			shift := bad[len(bad)-1].g - synthEpoch + int64(time.Second/30)
			back := time.Duration(-1)
			for _, o := range good {
				x := sample.Sample{SrcT: o.src + shift, RecvT: o.recv + shift}
				s.Process(&x)
				if back < 0 && s.ClockStatus().Source == SourceDevice {
					back = time.Duration(o.g - synthEpoch)
				}
				if back >= 0 && o.g-synthEpoch > int64(back)+int64(2*time.Second) {
					if e := math.Abs(float64(x.T - (o.g + shift))); e > 1e6 {
						t.Fatalf("back on device time: error %.3fms", e/1e6)
					}
				}
			}
			po := ClockOptions{}
			po.EnsureDefaults()
			if back < po.Probation || back > po.Probation+10*time.Second {
				t.Fatalf("back on device time after %v, want after the %v probation", back, po.Probation)
			}
			if n := s.ClockStatus().Events[EventTrusted]; n != 1 {
				t.Fatalf("%d %s events", n, EventTrusted)
			}
		})
	}
}

// TestClockResetStorm: a device clock that steps more than MaxResets times
// in a minute is put on arrival time (no reset storm); fewer steps are
// each a jump and nothing more.
func TestClockResetStorm(t *testing.T) {
	for _, steps := range []int{3, 5} {
		t.Run(fmt.Sprint(steps), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(9, uint64(steps)))
			data := synthClock{rateHz: 50, dur: 50 * time.Second, offset: int64(time.Second)}.generate(rng)
			d := sample.Descriptor{Stream: "c1/dev", Kind: sample.KindTelemetry, Clock: sample.ClockDevice}
			s, _ := NewStream(d, 0, ClockOptions{})
			for _, o := range data {
				rel := o.g - synthEpoch
				// A +-300 ms step every 8 s from 5 s on.
				k := int((rel - int64(5*time.Second)) / int64(8*time.Second))
				if rel >= int64(5*time.Second) {
					k++
				}
				k = min(k, steps)
				src := o.src
				if k%2 == 1 {
					src += int64(300 * time.Millisecond)
				}
				x := sample.Sample{SrcT: src, RecvT: o.recv}
				s.Process(&x)
			}
			st := s.ClockStatus()
			t.Logf("%d steps: jumps %d, source %s (%s)", steps, st.Jumps, st.Source, st.SourceReason)
			if steps <= 3 && (st.Source != SourceDevice || st.Jumps != uint64(steps)) {
				t.Fatalf("status %+v", st)
			}
			if steps > 3 && (st.Source != SourceArrival || !strings.Contains(st.SourceReason, "resets")) {
				t.Fatalf("status %+v", st)
			}
		})
	}
}

func abs64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// TestClockStartsOnBacklog: a stream whose first samples are a backlog
// delivered in one burst (an MQTT session's queued messages, a stalled
// gateway) must not take the backlog's queueing delay as its first offset:
// no step is recorded, no fallback, every sample's stated bound covers its
// error once an offset is agreed, and after the first second every sample
// is within 1 ms.
func TestClockStartsOnBacklog(t *testing.T) {
	for _, hz := range []float64{30, 200} {
		t.Run(fmt.Sprintf("%gHz", hz), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(4, uint64(hz)))
			data := synthClock{rateHz: hz, dur: 20 * time.Second, offset: int64(900 * time.Millisecond), driftPPM: -88}.generate(rng)
			burst := data[0].g + int64(300*time.Millisecond)
			d := sample.Descriptor{Stream: "c1/dev", Kind: sample.KindTelemetry, Clock: sample.ClockDevice}
			s, _ := NewStream(d, 0, ClockOptions{})
			var worst float64
			uncovered := 0
			agreed := false
			for _, o := range data {
				x := sample.Sample{SrcT: o.src, RecvT: max(o.recv, burst)}
				s.Process(&x)
				e := math.Abs(float64(x.T - o.g))
				// Before the first offset is agreed, an arrival stamp can
				// only assume a delay of at most the jump threshold; the
				// backlog's is longer. From then on, bounds hold.
				agreed = agreed || x.Flags&sample.ArrivalTime == 0
				if b, _ := s.BoundOver(x.T, x.T); agreed && e > float64(b) {
					uncovered++
				}
				if o.g-data[0].g > int64(time.Second) {
					worst = max(worst, e)
				}
			}
			st := s.ClockStatus()
			t.Logf("worst after 1s %.1fµs, uncovered %d, jumps %d, held %d", worst/1e3, uncovered, st.Jumps, s.Counters().ClockHeld)
			if st.Jumps != 0 || uncovered != 0 || worst > 1e6 || st.Source != SourceDevice {
				t.Fatalf("jumps %d, %d samples above their bound, worst error after 1s %.3fms", st.Jumps, uncovered, worst/1e6)
			}
		})
	}
}

// TestClockBurstyDevice: a device that buffers its samples and sends them
// in bursts every 100 ms (so they never arrive paced) is still timed by
// its clock: the bursts are neither steps nor a reason to fall back to
// arrival time. (Its envelope rests on one sample per burst, so the
// estimate is only good to a few ms; that is as before this change.)
func TestClockBurstyDevice(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	data := synthClock{rateHz: 200, dur: 30 * time.Second, offset: int64(-400 * time.Millisecond), driftPPM: 60}.generate(rng)
	d := sample.Descriptor{Stream: "c1/dev", Kind: sample.KindTelemetry, Clock: sample.ClockDevice}
	s, _ := NewStream(d, 0, ClockOptions{})
	var worst float64
	burst := int64(100 * time.Millisecond)
	for _, o := range data {
		// Sent at the end of its 100 ms slot, plus the network delay.
		rel := o.g - synthEpoch
		flush := synthEpoch + (rel/burst+1)*burst
		x := sample.Sample{SrcT: o.src, RecvT: flush + (o.recv - o.g)}
		s.Process(&x)
		if rel > int64(5*time.Second) {
			worst = max(worst, math.Abs(float64(x.T-o.g)))
		}
	}
	st := s.ClockStatus()
	t.Logf("worst after 5s %.1fµs; status %+v", worst/1e3, st)
	if st.Source != SourceDevice || st.Jumps != 0 || worst > 10e6 {
		t.Fatalf("source %s (%s), %d jumps, worst error %.3fms", st.Source, st.SourceReason, st.Jumps, worst/1e6)
	}
}

// TestClockWildBurst: a converged 30 Hz device sends a burst of 10
// samples stamped an hour behind (or ahead), then its clock is right
// again. The burst looks like a step until it ends, and the return looks
// like a step too, taken while the estimate has not converged on the
// burst's few samples. A return by an hour is no swing of the network
// delays and must not be merged into the evidence (that moved the line by
// the hour, and the stated bound of the minutes before by as much). Every
// sample stays within its stated bound of ground truth, and the stream's
// bound over the whole run stays below a second.
func TestClockWildBurst(t *testing.T) {
	for _, dir := range []int64{-1, +1} {
		t.Run(fmt.Sprintf("%+d hour", dir), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, uint64(dir+2)))
			sc := synthClock{rateHz: 30, dur: 40 * time.Second, offset: int64(40 * time.Millisecond), driftPPM: 50}
			data := sc.generate(rng)
			d := sample.Descriptor{Stream: "c1/cam", Kind: sample.KindTelemetry, Clock: sample.ClockDevice}
			s, err := NewStream(d, 0, ClockOptions{})
			if err != nil {
				t.Fatal(err)
			}
			const from, to = 600, 610 // 20 s in: converged long before
			worst := int64(0)
			for i, o := range data {
				src := o.src
				if i >= from && i < to {
					src += dir * int64(time.Hour)
				}
				x := sample.Sample{SrcT: src, RecvT: o.recv}
				s.Process(&x)
				e := x.T - o.g
				if e < 0 {
					e = -e
				}
				worst = max(worst, e)
				if i >= 60 && e > s.bound {
					t.Errorf("sample %d (burst %v): %v from ground truth, stated bound %v", i, i >= from && i < to,
						time.Duration(e), time.Duration(s.bound))
				}
			}
			b, ok := s.BoundOver(data[0].g, data[len(data)-1].recv)
			st := s.ClockStatus()
			t.Logf("worst error %v; bound over the run %v; jumps %d outliers %d held %d", time.Duration(worst), time.Duration(b),
				st.Jumps, st.Outliers, s.Counters().ClockHeld)
			if !ok || b <= 0 || b > int64(time.Second) {
				t.Errorf("bound over the run %v (%v), want (0, 1s]: a burst of wild times must not widen it to the burst's offset", time.Duration(b), ok)
			}
			if s.Counters().ClockHeld == 0 {
				t.Error("no sample of the burst was held back")
			}
		})
	}
}
