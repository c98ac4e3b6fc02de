package storage

import (
	"math"
	"sync"

	"github.com/cockroachdb/pebble/v2"

	"github.com/episoded/episoded/sample"
)

// timelineTracker knows, per stream, the time extent of committed samples
// that retention has not swept yet. A watcher pass sweeps only when the
// pre-roll horizon has moved (once per SegmentSlice) or a sample older
// than the horizon was committed, and then only the streams with data
// below it: a pass costs no I/O per stream, and streams that went idle
// drop out of the map after one sweep.
type timelineTracker struct {
	mu      sync.Mutex
	m       map[string]span // committed, unswept extent per stream
	horizon int64           // the horizon of the last sweep
	dirty   bool            // a sample below horizon was committed since
}

// init loads the extent of every stream's samples (two seeks per stream,
// once, at Open).
func (t *timelineTracker) init(s *Store) error {
	t.m = make(map[string]span)
	t.horizon = math.MinInt64
	streams, err := s.Streams()
	if err != nil {
		return err
	}
	for _, st := range streams {
		lo, hi := streamBounds(st)
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return err
		}
		if it.First() {
			_, first, _, ok1 := parseSampleKey(it.Key())
			it.Last()
			_, last, _, ok2 := parseSampleKey(it.Key())
			if ok1 && ok2 {
				t.m[st] = span{first, last}
			}
		}
		if err := it.Close(); err != nil {
			return err
		}
	}
	// Segments whose index entries are gone (a crash between unlink and
	// index delete cannot happen, but a segment may outlive its samples
	// when it straddled an evicted range): sweep their streams too.
	s.segMu.Lock()
	for _, r := range s.segMu.segs {
		x, ok := t.m[r.Stream]
		if !ok {
			x = span{r.MinT, r.MaxT}
		}
		t.m[r.Stream] = span{min(x.from, r.MinT), max(x.to, r.MaxT)}
	}
	s.segMu.Unlock()
	t.dirty = len(t.m) > 0
	return nil
}

// extents collects, per stream, the time extent of the samples of one
// Append call, for the tracker once they are committed.
type extents map[string]span

func (e extents) add(samples []sample.Sample) {
	for i := 0; i < len(samples); {
		st := samples[i].Stream
		lo, hi := samples[i].T, samples[i].T
		j := i + 1
		for ; j < len(samples) && samples[j].Stream == st; j++ {
			lo, hi = min(lo, samples[j].T), max(hi, samples[j].T)
		}
		if x, ok := e[st]; ok {
			lo, hi = min(lo, x.from), max(hi, x.to)
		}
		e[st] = span{lo, hi}
		i = j
	}
}

// committed merges the extents of a commit that reached Pebble.
func (t *timelineTracker) committed(e extents) {
	if len(e) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for st, x := range e {
		if y, ok := t.m[st]; ok {
			x = span{min(x.from, y.from), max(x.to, y.to)}
		}
		t.m[st] = x
		if x.from < t.horizon {
			t.dirty = true
		}
	}
}

// due returns the streams with committed samples older than horizon h,
// and records the sweep: afterwards, only data at or after h (or covered
// by an episode, which eviction handles when the episode goes) is left on
// them. It returns nil when nothing changed since the last sweep.
func (t *timelineTracker) due(h int64) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h == t.horizon && !t.dirty {
		return nil
	}
	var out []string
	for st, x := range t.m {
		if x.from >= h {
			continue
		}
		out = append(out, st)
		if x.to < h {
			delete(t.m, st)
		} else {
			t.m[st] = span{h, x.to}
		}
	}
	t.horizon, t.dirty = h, false
	return out
}
