package sim

import (
	"math"
	"math/big"
	"math/bits"
	"time"

	"github.com/episoded/episoded/internal/video"
)

// Clock is one simulated device's clock relative to true time (the
// gateway's wall clock, which is also the simulator's).
//
// A device whose clock is c reads, at true time t (ns since the Unix
// epoch),
//
//	d(t) = t + Offset + floor((t − t0) · DriftPPB / 1e9)
//
// where t0 is the moment the simulator started (Sim.T0). Everything is
// int64 nanoseconds; the drift term is computed exactly with 128-bit
// intermediates, so d is reproducible to the nanosecond.
type Clock struct {
	// Offset is d(t0) − t0.
	Offset time.Duration
	// DriftPPB is the rate error in parts per billion (1 ppm = 1000 ppb):
	// the device clock gains DriftPPB ns per second of true time. It must
	// be within ±1e6 (±1000 ppm).
	DriftPPB int64
}

// DriftPPM returns the drift in parts per million.
func (c Clock) DriftPPM() float64 { return float64(c.DriftPPB) / 1e3 }

// PPM converts a drift in parts per million to the DriftPPB of a Clock,
// rounded to the nearest ppb.
func PPM(ppm float64) int64 { return int64(math.Round(ppm * 1e3)) }

// maxDriftPPB bounds |DriftPPB| (1000 ppm), so d stays monotonic and the
// 128-bit arithmetic never overflows.
const maxDriftPPB = 1_000_000

// deviceClock is a Clock anchored at t0.
type deviceClock struct {
	t0     int64
	offset int64
	ppb    int64
}

func newDeviceClock(c Clock, t0 int64) deviceClock {
	return deviceClock{t0: t0, offset: int64(c.Offset), ppb: c.DriftPPB}
}

// at returns d(t), the device's reading at true time t.
func (c deviceClock) at(t int64) int64 {
	return t + c.offset + mulDivFloor(t-c.t0, c.ppb, 1e9)
}

// inv returns the true time at which the device reads D: the largest t
// with d(t) ≤ D. d is non-decreasing (|drift| < 1e9 ppb), so this is well
// defined; d(inv(D)) == D unless the device clock skips D (positive drift
// advances it by 2 ns in some true nanoseconds).
func (c deviceClock) inv(D int64) int64 {
	y := D - c.offset - c.t0 // want the largest x with x + floor(x·ppb/1e9) ≤ y
	f := func(x int64) int64 { return x + mulDivFloor(x, c.ppb, 1e9) }
	x := mulDivFloor(y, 1e9, 1e9+c.ppb)
	for f(x) > y {
		x--
	}
	for f(x+1) <= y {
		x++
	}
	return c.t0 + x
}

// mulDivFloor returns floor(a·b / c) for c > 0, exactly, using a 128-bit
// product. The quotient must fit in an int64.
func mulDivFloor(a, b, c int64) int64 {
	neg := (a < 0) != (b < 0)
	hi, lo := bits.Mul64(absU(a), absU(b))
	q, r := bits.Div64(hi, lo, uint64(c))
	if neg {
		if r != 0 {
			q++
		}
		return -int64(q)
	}
	return int64(q)
}

func absU(a int64) uint64 {
	if a < 0 {
		return uint64(-a)
	}
	return uint64(a)
}

// ntpFromRational returns the RFC 3550 64-bit NTP timestamp (32.32 fixed
// point seconds since 1900) of the instant base + n·1e9/rate ns since the
// Unix epoch, rounded to the nearest 2^-32 s. The instant need not be a
// whole nanosecond: sender reports use it to pair a whole RTP tick with
// its exact device time.
func ntpFromRational(base int64, n int64, rate int64) uint64 {
	// In units of 1/rate ns: (base + epoch)·rate + n·1e9.
	num := new(big.Int).Mul(big.NewInt(base), big.NewInt(rate))
	num.Add(num, new(big.Int).Mul(big.NewInt(video.NTPEpochOffset), new(big.Int).Mul(big.NewInt(1e9), big.NewInt(rate))))
	num.Add(num, new(big.Int).Mul(big.NewInt(n), big.NewInt(1e9)))
	// NTP units: num / (rate·1e9) seconds · 2^32, rounded.
	num.Lsh(num, 32)
	den := new(big.Int).Mul(big.NewInt(rate), big.NewInt(1e9))
	num.Add(num, new(big.Int).Rsh(den, 1))
	num.Quo(num, den)
	return num.Uint64()
}
