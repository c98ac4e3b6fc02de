package rtsp

import (
	"testing"
	"time"
)

func TestTicks90k(t *testing.T) {
	if got := ticks90k(time.Second/30 + 1); got != 3000 {
		t.Errorf("ticks90k(1/30 s) = %d, want 3000", got)
	}
	if got := ticks90k(100 * time.Hour); got != 100*3600*90000 {
		t.Errorf("ticks90k(100h) = %d", got)
	}
}
