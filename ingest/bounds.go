package ingest

// boundHistory remembers, per second of aligned time, the largest error
// bound of the samples stamped in it, for the last boundSeconds seconds.
// It lets an episode's report state the worst bound of the samples it
// actually holds, stamped by the live estimator (including any stamped
// before the estimate converged), rather than a bound re-derived later.
// Fixed size, no allocation per sample.
type boundHistory struct {
	sec   [boundSeconds]int64 // which second each slot holds (T / 1e9)
	bound [boundSeconds]int64 // the largest bound stamped in that second
	// newest is the newest second added.
	newest int64
	any    bool
}

// boundSeconds is how much history is kept: longer than any sensible
// max_duration plus pre- and post-roll.
const boundSeconds = 3600

func (h *boundHistory) add(t, bound int64) {
	s := floorDiv(t, 1e9)
	if h.any && s <= h.newest-boundSeconds {
		return // older than the history holds
	}
	i := boundSlot(s)
	if h.sec[i] != s {
		h.sec[i], h.bound[i] = s, 0
	}
	h.bound[i] = max(h.bound[i], bound)
	if !h.any || s > h.newest {
		h.newest, h.any = s, true
	}
}

func boundSlot(s int64) int { return int(((s % boundSeconds) + boundSeconds) % boundSeconds) }

// max returns the largest bound stamped in [from, to], and whether the
// history covers that range.
func (h *boundHistory) max(from, to int64) (int64, bool) {
	if !h.any {
		return 0, false
	}
	a, b := floorDiv(from, 1e9), floorDiv(to, 1e9)
	if a <= h.newest-boundSeconds {
		return 0, false
	}
	var m int64
	for s := a; s <= min(b, h.newest); s++ {
		if i := boundSlot(s); h.sec[i] == s {
			m = max(m, h.bound[i])
		}
	}
	return m, true
}

// widen raises the bound of every second in [from, to] to at least bound
// (at most the last 120 seconds of the range: it serves the short phase
// before an estimate converges).
func (h *boundHistory) widen(from, to, bound int64) {
	a, b := floorDiv(from, 1e9), floorDiv(to, 1e9)
	a = max(a, b-120)
	for s := a; s <= b; s++ {
		h.add(s*1e9, bound)
	}
}
