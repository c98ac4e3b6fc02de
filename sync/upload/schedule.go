package upload

import (
	"math/rand/v2"
	"time"

	"github.com/episoded/episoded/internal/config"
)

// Clock is the time source of the uploader: windows, backoff and the
// bandwidth limiter all go through it, so tests can use a fake one.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has elapsed.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// window is [start, end) in minutes after local midnight; end < start wraps
// past midnight.
type window struct{ start, end int }

// parseWindow parses "HH:MM-HH:MM" (24:00 allowed as an end) with
// config.ParseWindow, so the config check and the uploader agree.
func parseWindow(s string) (window, error) {
	st, en, err := config.ParseWindow(s)
	if err != nil {
		return window{}, err
	}
	return window{st, en}, nil
}

func (w window) contains(min int) bool {
	if w.start < w.end {
		return min >= w.start && min < w.end
	}
	return min >= w.start || min < w.end
}

// schedule answers whether uploads may run at a given time.
type schedule struct {
	windows []window
	loc     *time.Location
}

func (s schedule) always() bool { return len(s.windows) == 0 }

// open reports whether t is inside any window (always true without
// windows).
func (s schedule) open(t time.Time) bool {
	if s.always() {
		return true
	}
	lt := t.In(s.loc)
	m := lt.Hour()*60 + lt.Minute()
	for _, w := range s.windows {
		if w.contains(m) {
			return true
		}
	}
	return false
}

// nextChange returns the first time after t at which open() changes, found
// minute by minute over the next two days; zero if it never changes.
func (s schedule) nextChange(t time.Time) time.Time {
	if s.always() {
		return time.Time{}
	}
	cur := s.open(t)
	m := t.In(s.loc).Truncate(time.Minute)
	for i := 0; i < 2*24*60+120; i++ {
		m = m.Add(time.Minute)
		if s.open(m) != cur {
			return m
		}
	}
	return time.Time{}
}

// backoff returns the delay before attempt n (1-based) after a failure:
// exponential from min, capped at max, with full jitter in [d/2, d].
func backoff(n int, min, max time.Duration, rnd *rand.Rand) time.Duration {
	d := min
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + time.Duration(rnd.Int64N(int64(half)+1))
}
