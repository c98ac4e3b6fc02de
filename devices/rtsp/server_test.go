package rtsp

import (
	"testing"
	"time"
)

// NTPTime encodes RFC 3550 timestamps: seconds since 1900 in the upper 32
// bits, the fraction times 2^32 in the lower (not nanoseconds, as
// gortsplib v4.16.2 writes them).
func TestNTPTime(t *testing.T) {
	for _, c := range []struct {
		ns   int64
		want uint64
	}{
		{0, 2208988800 << 32},
		{int64(500 * time.Millisecond), 2208988800<<32 | 1<<31},
		{int64(time.Second) + 250_000_000, 2208988801<<32 | 1<<30},
		{-int64(250 * time.Millisecond), 2208988799<<32 | 3<<30},
	} {
		if got := NTPTime(c.ns); got != c.want {
			t.Errorf("NTPTime(%d) = %#x, want %#x", c.ns, got, c.want)
		}
	}
	// Round trip through the package's decoder, within a nanosecond.
	for _, ns := range []int64{1_800_000_000_123_456_789, 1_764_000_000_999_999_999, 1} {
		if d := ntpToUnixNano(NTPTime(ns)) - ns; d < -1 || d > 1 {
			t.Errorf("round trip of %d is off by %d ns", ns, d)
		}
	}
	if got := ticks90k(time.Second/30 + 1); got != 3000 {
		t.Errorf("ticks90k(1/30 s) = %d, want 3000", got)
	}
	if got := ticks90k(100 * time.Hour); got != 100*3600*90000 {
		t.Errorf("ticks90k(100h) = %d", got)
	}
}
