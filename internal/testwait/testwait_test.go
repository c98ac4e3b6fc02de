package testwait

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// fakeTB records a failure instead of ending the test.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	panic(f)
}

func TestForReturnsWhenTheConditionHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		n := 0
		For(t, time.Minute, "three polls", func() bool { n++; return n == 3 })
		if d := time.Since(start); d != 2*Interval {
			t.Errorf("waited %v, want %v", d, 2*Interval)
		}
	})
}

func TestForFailsAfterTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeTB{TB: t}
		start := time.Now()
		func() {
			defer func() {
				if r := recover(); r != f {
					t.Fatalf("recovered %v", r)
				}
			}()
			For(f, time.Second, "never", func() bool { return false }, func() string { return "detail" })
		}()
		if !strings.Contains(f.failed, "waiting for never\ndetail") {
			t.Fatalf("failure %q", f.failed)
		}
		if d := time.Since(start); d < time.Second || d > time.Second+Interval {
			t.Errorf("failed after %v, want about 1s", d)
		}
	})
}
