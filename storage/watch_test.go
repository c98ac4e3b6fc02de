package storage

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/episoded/episoded/sample"
)

// TestWatcherCostIndependentOfStreams: with 5,000 streams, a space check
// whose pre-roll horizon has not moved opens no iterator and plans
// nothing; when the horizon passes the streams' data, each stream costs
// one check once, and the streams then drop out of the watcher's state.
func TestWatcherCostIndependentOfStreams(t *testing.T) {
	const streams = 5000
	const t0 = int64(1_800_000_000) * sec
	var now atomic.Int64
	now.Store(t0)
	s, err := Open(Options{Dir: t.TempDir(), MinFree: -1, MemTableSize: 8 << 20, TimelineRetention: time.Minute,
		Now: func() time.Time { return time.Unix(0, now.Load()) }, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := manual{t, s}
	for i := range streams {
		st := fmt.Sprintf("c/topic%05d", i)
		if err := s.Append([]sample.Sample{{Stream: st, Seq: 1, T: t0, Payload: []byte(`{"v":1}`)}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	m.commit()
	pass := func(what string) int64 {
		t.Helper()
		before := s.watchIters.Load()
		start := time.Now()
		s.checkSpace()
		n := s.watchIters.Load() - before
		t.Logf("%s: %d iterators, %s", what, n, time.Since(start).Round(time.Microsecond))
		return n
	}
	for i := range 3 {
		now.Add(sec)
		if n := pass(fmt.Sprintf("idle pass %d", i)); n != 0 {
			t.Fatalf("an idle pass with %d streams opened %d iterators", streams, n)
		}
	}
	now.Store(t0 + 2*int64(time.Minute))
	if n := pass("horizon passes the data"); n != streams {
		t.Fatalf("sweeping %d streams opened %d iterators, want one per stream", streams, n)
	}
	if got := m.count("c/topic00042", 0, t0*2); got != 0 {
		t.Fatalf("expired timeline still has %d samples", got)
	}
	now.Add(int64(time.Minute))
	if n := pass("next horizon, streams idle"); n != 0 {
		t.Fatalf("idle streams cost %d iterators after their data was swept", n)
	}
}
