package upload

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// window is [start, end) in minutes after local midnight; end < start wraps
// past midnight.
type window struct{ start, end int }

// ParseWindow parses a daily window "HH:MM-HH:MM" into minutes after
// midnight. A window whose end is not after its start wraps past midnight
// ("22:00-06:00"); "00:00-24:00" is the whole day. The config check
// (internal/config) uses it too, so the check and the uploader agree.
func ParseWindow(s string) (start, end int, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if ok {
		start, err = parseClock(a)
		if err == nil {
			end, err = parseClock(b)
		}
	}
	if !ok || err != nil || start == end {
		return 0, 0, fmt.Errorf("window %q is not HH:MM-HH:MM", s)
	}
	return start, end, nil
}

func parseClock(s string) (int, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && mm != 0) {
		return 0, fmt.Errorf("bad clock time %q", s)
	}
	return hh*60 + mm, nil
}

// parseWindow is ParseWindow as a window.
func parseWindow(s string) (window, error) {
	st, en, err := ParseWindow(s)
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
