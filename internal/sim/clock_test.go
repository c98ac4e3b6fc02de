package sim

import (
	"math"
	"math/big"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/video"
)

// bigAt is d(t) computed with math/big, independently of mulDivFloor.
func bigAt(t, t0, offset, ppb int64) int64 {
	num := new(big.Int).Mul(big.NewInt(t-t0), big.NewInt(ppb))
	q := new(big.Int)
	m := new(big.Int)
	q.DivMod(num, big.NewInt(1e9), m) // Euclidean: floor for a positive divisor
	return t + offset + q.Int64()
}

func TestDeviceClockExact(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC).UnixNano()
	for _, c := range []struct {
		name   string
		offset int64
		ppb    int64
	}{
		{"zero", 0, 0},
		{"offset", int64(1500 * time.Millisecond), 0},
		{"fast", -int64(250 * time.Millisecond), PPM(50)},
		{"slow", int64(3 * time.Second), PPM(-73.25)},
		{"limit", 0, maxDriftPPB},
		{"neg-limit", 7, -maxDriftPPB},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := deviceClock{t0: t0, offset: c.offset, ppb: c.ppb}
			for _, dt := range []int64{0, 1, 999, 1e9 - 1, 1e9, 1e9 + 1, 123456789012, 86400e9 * 365, -1, -1e9 - 7, -86400e9} {
				tt := t0 + dt
				got, want := clk.at(tt), bigAt(tt, t0, c.offset, c.ppb)
				if got != want {
					t.Fatalf("at(t0%+d) = %d, want %d", dt, got, want)
				}
				// inv is the largest t with at(t) ≤ D.
				D := got
				ti := clk.inv(D)
				if clk.at(ti) > D || clk.at(ti+1) <= D {
					t.Fatalf("inv(%d) = t0%+d: at = %d, at(+1) = %d", D, ti-t0, clk.at(ti), clk.at(ti+1))
				}
				if ti < tt {
					t.Fatalf("inv(at(t)) = t0%+d < t = t0%+d", ti-t0, dt)
				}
				for _, dD := range []int64{-3, -1, 1, 2, 1e6} {
					ti := clk.inv(D + dD)
					if clk.at(ti) > D+dD || clk.at(ti+1) <= D+dD {
						t.Fatalf("inv(%d) wrong", D+dD)
					}
				}
			}
		})
	}
}

func TestDeviceClockMonotonic(t *testing.T) {
	for _, ppb := range []int64{PPM(-1000), PPM(-0.001), 0, PPM(0.5), PPM(1000)} {
		clk := deviceClock{t0: 1e18, offset: 5, ppb: ppb}
		prev := clk.at(1e18 - 5000)
		for tt := int64(1e18 - 4999); tt < 1e18+5000; tt++ {
			d := clk.at(tt)
			if step := d - prev; step < 0 || step > 2 {
				t.Fatalf("ppb %d: d jumps by %d at %d", ppb, step, tt)
			}
			prev = d
		}
	}
}

func TestNTPRoundTrip(t *testing.T) {
	base := time.Date(2026, 11, 26, 12, 0, 0, 123456789, time.UTC).UnixNano()
	for _, n := range []int64{0, 1, 3000, 89999, 90000, 1e9, -3000} {
		ntp := ntpFromRational(base, n, 90000)
		exactNS := big.NewRat(base, 1)
		exactNS.Add(exactNS, big.NewRat(n*1e9, 90000))
		f, _ := exactNS.Float64()
		got := video.NTPToUnixNano(ntp)
		if d := math.Abs(float64(got) - f); d > 1 {
			t.Errorf("n=%d: NTP decodes to %d, want %.1f (±1ns)", n, got, f)
		}
	}
	// A known value: the Unix epoch is NTP 2208988800.0.
	if got := ntpFromRational(0, 0, 90000); got != 2208988800<<32 {
		t.Errorf("epoch: %x", got)
	}
	// Half a second is 0x80000000.
	if got := ntpFromRational(5e8, 0, 90000); got != 2208988800<<32|0x80000000 {
		t.Errorf("half second: %x", got)
	}
}

func TestParseOutage(t *testing.T) {
	o, err := ParseOutage("cam2@20s+3.5s")
	if err != nil || o != (Outage{Camera: "cam2", At: 20 * time.Second, For: 3500 * time.Millisecond}) {
		t.Fatalf("got %+v, %v", o, err)
	}
	for _, bad := range []string{"", "cam1", "cam1@20s", "@1s+1s", "cam1@x+1s", "cam1@1s+y"} {
		if _, err := ParseOutage(bad); err == nil {
			t.Errorf("ParseOutage(%q): no error", bad)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	_, err := New(Options{
		Cameras: 2, Loss: 1.5, Jitter: -1, TriggerCount: -1,
		Outages: []Outage{{Camera: "cam3", At: time.Second, For: time.Second}},
		Clocks:  map[string]Clock{"cam9": {}, "robot1": {DriftPPB: 2e6}},
	})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"loss", "jitter", `no camera "cam3"`, `"cam9" is not a device`, "clocks[robot1]", "trigger count"} {
		if !contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestClocksDeterministic(t *testing.T) {
	o := Options{ClockOffset: 2 * time.Second, ClockDriftPPM: 80, Seed: 42, Clocks: map[string]Clock{"lidar": {Offset: 7}}}
	o.EnsureDefaults()
	a, b := o.clockFor("cam1"), o.clockFor("cam1")
	if a != b {
		t.Fatalf("clock draw not deterministic: %+v %+v", a, b)
	}
	if a == o.clockFor("cam2") {
		t.Fatalf("cam1 and cam2 drew the same clock %+v", a)
	}
	seen := 0
	for _, id := range []string{"cam1", "cam2", "robot1", "gripper"} {
		c := o.clockFor(id)
		if c.Offset < -2*time.Second || c.Offset > 2*time.Second || c.DriftPPB < -80000 || c.DriftPPB > 80000 {
			t.Errorf("%s: %+v out of bounds", id, c)
		}
		if c.Offset != 0 {
			seen++
		}
	}
	if seen == 0 {
		t.Error("every offset is zero")
	}
	if c := o.clockFor("lidar"); c != (Clock{Offset: 7}) {
		t.Errorf("override ignored: %+v", c)
	}
	o.Seed = 43
	if o.clockFor("cam1") == a {
		t.Error("seed has no effect")
	}
}
