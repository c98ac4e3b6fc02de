package devices

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
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

func TestSuperviseRetriesUntilCancelled(t *testing.T) {
	tr := NewTracker("d", "test", nil)
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- Supervise(ctx, tr, BackoffPolicy{Min: time.Millisecond, Max: 4 * time.Millisecond},
			func(ctx context.Context, streaming func()) error {
				if calls.Add(1) == 5 {
					streaming()
					<-ctx.Done()
					return ctx.Err()
				}
				return errors.New("refused")
			})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for tr.Status().State != Streaming {
		if time.Now().After(deadline) {
			t.Fatalf("never streaming: %+v", tr.Status())
		}
		time.Sleep(time.Millisecond)
	}
	if s := tr.Status(); s.Reconnects != 4 || s.LastError != "" {
		t.Errorf("while streaming: %+v", s)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Supervise returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Supervise did not return after cancel")
	}
	if s := tr.Status(); s.State != Stopped || calls.Load() != 5 {
		t.Errorf("after cancel: %+v, %d calls", s, calls.Load())
	}
}

func TestSuperviseCancelDuringBackoff(t *testing.T) {
	tr := NewTracker("d", "test", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Supervise(ctx, tr, BackoffPolicy{Min: time.Hour}, func(context.Context, func()) error {
			return errors.New("down")
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for tr.Status().State != Backoff {
		if time.Now().After(deadline) {
			t.Fatal("never in backoff")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil || tr.Status().State != Stopped {
			t.Fatalf("err %v state %s", err, tr.Status().State)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an hour-long backoff blocked cancel")
	}
}
