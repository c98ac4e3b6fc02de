package daemon

import (
	"testing"
	"time"
)

// TestHistoryBoundedAndRates checks the dashboard's history: it keeps at
// most historyCap points (oldest dropped first), computes each stream's
// rate from successive counters, and leaves unknown values null (a
// stream's first point, a counter that went backwards, no uploader).
func TestHistoryBoundedAndRates(t *testing.T) {
	var h history
	t0 := time.Unix(1_700_000_000, 0)
	for i := range historyCap + 7 {
		p := historyPoint{t: t0.Add(time.Duration(i) * historyEvery), diskUsed: int64(i), streams: map[string]streamPoint{
			"c/cam": {samples: uint64(i) * 300, boundNs: 2e6},
		}}
		if i >= historyCap+5 {
			p.streams["c/late"] = streamPoint{samples: 5, boundNs: 1e6}
		}
		if i == historyCap+6 {
			p.streams["c/cam"] = streamPoint{samples: 1} // counter reset (restarted stream)
		}
		h.add(p)
	}
	s := h.snapshot()
	if len(s.T) != historyCap || len(s.DiskUsedBytes) != historyCap || s.DiskUsedBytes[0] != 7 {
		t.Fatalf("%d points, first disk %v; want %d points from 7", len(s.T), s.DiskUsedBytes[:1], historyCap)
	}
	if len(s.Streams) != 2 || s.Streams[0].Stream != "c/cam" || s.Streams[1].Stream != "c/late" {
		t.Fatalf("streams %+v", s.Streams)
	}
	cam := s.Streams[0]
	if cam.RateHz[0] != nil {
		t.Errorf("first point's rate %v, want null", *cam.RateHz[0])
	}
	if r := cam.RateHz[1]; r == nil || *r != 30 {
		t.Errorf("rate %v, want 30/s", r)
	}
	if r := cam.RateHz[historyCap-1]; r != nil {
		t.Errorf("rate after a counter reset %v, want null", *r)
	}
	if b := cam.AlignBoundMs[3]; b == nil || *b != 2 {
		t.Errorf("bound %v, want 2 ms", b)
	}
	late := s.Streams[1]
	if late.AlignBoundMs[0] != nil || late.AlignBoundMs[historyCap-2] == nil {
		t.Errorf("late stream bounds %v", late.AlignBoundMs)
	}
	if s.UploadBacklogBytes[0] != nil {
		t.Errorf("backlog without an uploader: %v", *s.UploadBacklogBytes[0])
	}
}
