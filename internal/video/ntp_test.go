package video

import (
	"testing"
	"time"
)

// UnixNanoToNTP encodes RFC 3550 timestamps: seconds since 1900 in the upper
// 32 bits, the fraction times 2^32 in the lower (not nanoseconds, as
// gortsplib v4.16.2 writes them).
func TestNTPConversion(t *testing.T) {
	for _, c := range []struct {
		ns   int64
		want uint64
	}{
		{0, 2208988800 << 32},
		{int64(500 * time.Millisecond), 2208988800<<32 | 1<<31},
		{int64(time.Second) + 250_000_000, 2208988801<<32 | 1<<30},
		{-int64(250 * time.Millisecond), 2208988799<<32 | 3<<30},
	} {
		if got := UnixNanoToNTP(c.ns); got != c.want {
			t.Errorf("UnixNanoToNTP(%d) = %#x, want %#x", c.ns, got, c.want)
		}
		if got := NTPToUnixNano(c.want); got != c.ns {
			t.Errorf("NTPToUnixNano(%#x) = %d, want %d", c.want, got, c.ns)
		}
	}
	// Round trip, exactly (both directions round to the nearest).
	for _, at := range []time.Time{time.Date(2026, 11, 29, 12, 0, 0, 123456789, time.UTC),
		time.Date(2036, 2, 7, 6, 28, 15, 999999999, time.UTC), time.Unix(0, 1)} {
		if d := NTPToUnixNano(UnixNanoToNTP(at.UnixNano())) - at.UnixNano(); d != 0 {
			t.Errorf("%v: off by %d ns", at, d)
		}
	}
	// 0.5 s is fraction 0x80000000 (RFC 3550), not 2147483648 ns.
	if got := NTPToUnixNano((NTPEpochOffset+10)<<32 | 0x80000000); got != 10_500_000_000 {
		t.Errorf("got %d", got)
	}
	r := &SenderReport{NTP: 1e18, RTP: 0xFFFFFF00}
	if got := r.At(0x00000100, 90000); got != 1e18+int64(512*1e9)/90000 {
		t.Errorf("across wrap-around: %d", got)
	}
	if got := r.At(0xFFFFFE00, 90000); got != 1e18-int64(256*1e9)/90000 {
		t.Errorf("before the report: %d", got)
	}
}
