package devices

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestBackoffDelay(t *testing.T) {
	p := BackoffPolicy{Min: time.Second, Max: 30 * time.Second}
	for _, tc := range []struct {
		n        int
		r        float64
		min, max time.Duration
	}{
		{0, 0, 500 * time.Millisecond, 500 * time.Millisecond},
		{0, 0.999, 999 * time.Millisecond, time.Second},
		{1, 0, time.Second, time.Second},
		{3, 0.5, 6 * time.Second, 6 * time.Second},
		{4, 1, 16 * time.Second, 16 * time.Second},
		{5, 0, 15 * time.Second, 15 * time.Second}, // 32s capped at 30s
		{100, 0.999, 29 * time.Second, 30 * time.Second},
	} {
		if d := p.Delay(tc.n, tc.r); d < tc.min || d > tc.max {
			t.Errorf("Delay(%d, %v) = %v, want in [%v, %v]", tc.n, tc.r, d, tc.min, tc.max)
		}
	}
	// Zero policy: 1s doubling to 30s.
	var z BackoffPolicy
	if d := z.Delay(0, 0.999); d < 999*time.Millisecond || d > time.Second {
		t.Errorf("default first delay %v", d)
	}
	if d := z.Delay(10, 0.999); d < 29*time.Second || d > 30*time.Second {
		t.Errorf("default ceiling %v", d)
	}
	// Max below Min is raised, never below Min.
	if d := (BackoffPolicy{Min: 2 * time.Minute, Max: time.Second}).Delay(0, 0.999); d < 119*time.Second {
		t.Errorf("max below min: %v", d)
	}
}

func TestTracker(t *testing.T) {
	now := time.Unix(100, 0)
	tr := NewTracker("cam1", "rtsp", func() time.Time { return now })
	if s := tr.Status(); s.State != Connecting || s.Device != "cam1" || s.Protocol != "rtsp" || !s.Since.Equal(now) {
		t.Fatalf("initial %+v", s)
	}
	now = now.Add(time.Second)
	tr.Set(Backoff, errors.New("boom"))
	now = now.Add(time.Second)
	tr.Set(Backoff, nil) // same state: Since unchanged, error kept
	s := tr.Status()
	if s.State != Backoff || s.LastError != "boom" || !s.Since.Equal(time.Unix(101, 0)) {
		t.Fatalf("after backoff %+v", s)
	}
	tr.Set(Connecting, nil)
	if s := tr.Status(); s.LastError != "boom" {
		t.Fatalf("last error should survive a reconnect attempt: %+v", s)
	}
	tr.Set(Streaming, nil)
	if s := tr.Status(); s.LastError != "" || !s.Since.Equal(time.Unix(102, 0)) {
		t.Fatalf("a streaming device should show no error: %+v", s)
	}
}

// The Supervise tests run inside a testing/synctest bubble: time.Now and
// timers are fake, so an hour of backoff takes no wall-clock time, and
// synctest.Wait proves that nothing else is about to happen.

// attempts records when each session attempt started. synctest.Wait does
// not order memory for the race detector, hence the lock.
type attempts struct {
	mu     sync.Mutex
	starts []time.Time
}

func (a *attempts) n() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.starts)
}

// gaps returns the time between consecutive attempts.
func (a *attempts) gaps() []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	var g []time.Duration
	for i := 1; i < len(a.starts); i++ {
		g = append(g, a.starts[i].Sub(a.starts[i-1]))
	}
	return g
}

// supervised runs Supervise in the current bubble with a session that
// records when each attempt started and then does what next(n) says (n is
// 1-based). It returns the attempts and a channel with Supervise's result.
func supervised(ctx context.Context, tr *Tracker, p BackoffPolicy, next func(n int, ctx context.Context, streaming func()) error) (*attempts, <-chan error) {
	a := &attempts{}
	d := make(chan error, 1)
	go func() {
		d <- Supervise(ctx, tr, p, func(ctx context.Context, streaming func()) error {
			a.mu.Lock()
			a.starts = append(a.starts, time.Now())
			n := len(a.starts)
			a.mu.Unlock()
			return next(n, ctx, streaming)
		})
	}()
	return a, d
}

func TestSuperviseRetriesUntilCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := NewTracker("d", "test", nil)
		ctx, cancel := context.WithCancel(t.Context())
		p := BackoffPolicy{Min: time.Second, Max: 4 * time.Second, Jitter: func() float64 { return 0 }}
		starts, done := supervised(ctx, tr, p, func(n int, ctx context.Context, streaming func()) error {
			if n == 5 {
				streaming()
				<-ctx.Done()
				return ctx.Err()
			}
			return errors.New("refused")
		})
		// Four failures: delays d/2 for d = 1s, 2s, 4s, 4s (capped).
		time.Sleep(time.Minute)
		synctest.Wait()
		if s := tr.Status(); s.State != Streaming || s.Reconnects != 4 || s.LastError != "" {
			t.Errorf("while streaming: %+v", s)
		}
		want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 2 * time.Second}
		if g := starts.gaps(); !slices.Equal(g, want) {
			t.Errorf("delays %v, want %v", g, want)
		}
		cancel()
		synctest.Wait()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Supervise returned %v, want nil", err)
			}
		default:
			t.Fatal("Supervise did not return after cancel")
		}
		if s := tr.Status(); s.State != Stopped || starts.n() != 5 {
			t.Errorf("after cancel: %+v, %d calls", s, starts.n())
		}
	})
}

// TestSuperviseWaitsTheWholeDelay: no reconnect attempt before the backoff
// delay has passed, and one as soon as it has. The jitter source decides
// each delay.
func TestSuperviseWaitsTheWholeDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := NewTracker("d", "test", nil)
		jit := []float64{0.5, 0.25, 0.999}
		p := BackoffPolicy{Min: 2 * time.Second, Max: time.Minute, Jitter: func() float64 {
			r := jit[0]
			jit = jit[1:]
			return r
		}}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		starts, _ := supervised(ctx, tr, p, func(n int, ctx context.Context, streaming func()) error {
			if n == 4 {
				<-ctx.Done()
				return ctx.Err()
			}
			return errors.New("refused")
		})
		// d = 2s, 4s, 8s; delay d/2 + r*d/2.
		for i, delay := range []time.Duration{1500 * time.Millisecond, 2500 * time.Millisecond, 7996 * time.Millisecond} {
			synctest.Wait()
			if s := tr.Status(); starts.n() != i+1 || s.State != Backoff || s.Reconnects != uint64(i+1) || s.LastError != "refused" {
				t.Fatalf("attempt %d: %d calls, %+v", i+1, starts.n(), s)
			}
			time.Sleep(delay - time.Millisecond)
			synctest.Wait()
			if starts.n() != i+1 {
				t.Fatalf("attempt %d: reconnected %v early", i+2, time.Millisecond)
			}
			time.Sleep(time.Millisecond)
			synctest.Wait()
			if starts.n() != i+2 {
				t.Fatalf("attempt %d: not made when its %v delay ended", i+2, delay)
			}
		}
		if s := tr.Status(); s.State != Connecting {
			t.Errorf("fourth attempt: %+v", s)
		}
	})
}

// TestSuperviseStableSessionResetsBackoff: a session that streamed for
// StableAfter starts the backoff again at Min; a shorter one, or one that
// never streamed, does not.
func TestSuperviseStableSessionResetsBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := NewTracker("d", "test", nil)
		p := BackoffPolicy{Min: time.Second, Max: time.Hour, StableAfter: 10 * time.Second, Jitter: func() float64 { return 0 }}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		starts, _ := supervised(ctx, tr, p, func(n int, ctx context.Context, streaming func()) error {
			switch n {
			case 3: // streams, but not for long enough
				streaming()
				time.Sleep(10*time.Second - time.Nanosecond)
			case 4: // streams long enough: the next delay is Min's again
				streaming()
				time.Sleep(10 * time.Second)
			case 5: // fails at once
			case 6:
				<-ctx.Done()
				return ctx.Err()
			}
			return errors.New("dropped")
		})
		time.Sleep(time.Hour)
		synctest.Wait()
		if starts.n() != 6 {
			t.Fatalf("%d attempts, want 6", starts.n())
		}
		// Gaps include the session's own duration.
		want := []time.Duration{
			500 * time.Millisecond, // 1 -> 2: d=1s
			time.Second,            // 2 -> 3: d=2s
			10*time.Second - time.Nanosecond + 2*time.Second, // 3 -> 4: short session, d=4s
			10*time.Second + 500*time.Millisecond,            // 4 -> 5: stable, reset to d=1s
			time.Second,                                      // 5 -> 6: d=2s
		}
		if g := starts.gaps(); !slices.Equal(g, want) {
			t.Errorf("gaps %v, want %v", g, want)
		}
	})
}

// TestSuperviseCancelDuringBackoff: cancel ends an hour-long backoff at
// once (no fake time passes).
func TestSuperviseCancelDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := NewTracker("d", "test", nil)
		ctx, cancel := context.WithCancel(t.Context())
		_, done := supervised(ctx, tr, BackoffPolicy{Min: time.Hour}, func(int, context.Context, func()) error {
			return errors.New("down")
		})
		synctest.Wait()
		if s := tr.Status(); s.State != Backoff || s.LastError != "down" {
			t.Fatalf("not in backoff: %+v", s)
		}
		t0 := time.Now()
		cancel()
		synctest.Wait()
		select {
		case err := <-done:
			if err != nil || tr.Status().State != Stopped {
				t.Fatalf("err %v state %s", err, tr.Status().State)
			}
		default:
			t.Fatal("an hour-long backoff blocked cancel")
		}
		if d := time.Since(t0); d != 0 {
			t.Errorf("cancel took %v of fake time", d)
		}
	})
}

// TestSuperviseDefaultJitter: with no Jitter the delays still fall in
// [d/2, d] (the global source is used).
func TestSuperviseDefaultJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := NewTracker("d", "test", nil)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		starts, _ := supervised(ctx, tr, BackoffPolicy{Min: time.Second, Max: time.Second}, func(n int, ctx context.Context, _ func()) error {
			if n == 20 {
				<-ctx.Done()
				return ctx.Err()
			}
			return errors.New("down")
		})
		time.Sleep(time.Minute)
		synctest.Wait()
		g := starts.gaps()
		if len(g) != 19 {
			t.Fatalf("%d gaps, want 19", len(g))
		}
		for _, d := range g {
			if d < 500*time.Millisecond || d > time.Second {
				t.Errorf("delay %v outside [500ms, 1s]", d)
			}
		}
	})
}
