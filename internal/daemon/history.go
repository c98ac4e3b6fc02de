package daemon

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/episoded/episoded/internal/api"
)

// The dashboard's trends: a small in-memory history of what /v1/status
// shows, sampled every historyEvery and kept for historySpan, served by
// GET /v1/history. It is not stored: a restart starts it afresh.
//
// Memory is bounded: historySpan/historyEvery points (90), each with at
// most lifecycle.StatusMaxStreams streams (the same cap as /v1/status), so at most
// 90 × 500 stream values.
const (
	historyEvery = 10 * time.Second
	historySpan  = 15 * time.Minute
	historyCap   = int(historySpan / historyEvery)
)

// historyPoint is one sample of the daemon's state.
type historyPoint struct {
	t            time.Time
	diskUsed     int64
	diskLimit    int64
	backlogBytes int64
	backlogHours float64
	drainSeconds float64
	haveUploads  bool
	streams      map[string]streamPoint
}

// streamPoint is one stream in a historyPoint: its sample counter (for
// the rate) and its alignment bound.
type streamPoint struct {
	samples uint64
	boundNs int64
}

// history is the ring of points; safe for concurrent use.
type history struct {
	mu     sync.Mutex
	points []historyPoint // oldest first, at most historyCap
}

func (h *history) add(p historyPoint) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.points) == historyCap {
		copy(h.points, h.points[1:])
		h.points = h.points[:historyCap-1]
	}
	h.points = append(h.points, p)
}

// historyJSON is GET /v1/history: columns of equal length, one entry per
// point, oldest first; null where a value is unknown (a stream not yet
// seen, the first point's rate).
type historyJSON struct {
	IntervalSeconds float64 `json:"interval_seconds"`
	SpanSeconds     float64 `json:"span_seconds"`
	// T is each point's time in ms since the Unix epoch.
	T []int64 `json:"t"`
	// DiskUsedBytes is the store's size; DiskLimitBytes what it may grow
	// to (quota, or used plus free above min_free).
	DiskUsedBytes  []int64 `json:"disk_used_bytes"`
	DiskLimitBytes []int64 `json:"disk_limit_bytes"`
	// Upload backlog: bytes and recorded hours still to send, and the
	// estimated drain time including the wait for the window (-1 unknown).
	UploadBacklogBytes []*int64            `json:"upload_backlog_bytes"`
	UploadBacklogHours []*float64          `json:"upload_backlog_hours"`
	UploadDrainSeconds []*float64          `json:"upload_drain_seconds"`
	Streams            []streamHistoryJSON `json:"streams"`
}

type streamHistoryJSON struct {
	Stream string `json:"stream"`
	// RateHz is samples per second since the previous point.
	RateHz []*float64 `json:"rate_hz"`
	// AlignBoundMs is the stream's alignment error bound at the point.
	AlignBoundMs []*float64 `json:"align_bound_ms"`
}

func (h *history) snapshot() historyJSON {
	h.mu.Lock()
	pts := append([]historyPoint(nil), h.points...)
	h.mu.Unlock()
	out := historyJSON{
		IntervalSeconds: historyEvery.Seconds(), SpanSeconds: historySpan.Seconds(),
		T: make([]int64, len(pts)), DiskUsedBytes: make([]int64, len(pts)), DiskLimitBytes: make([]int64, len(pts)),
		UploadBacklogBytes: make([]*int64, len(pts)), UploadBacklogHours: make([]*float64, len(pts)),
		UploadDrainSeconds: make([]*float64, len(pts)), Streams: []streamHistoryJSON{},
	}
	index := map[string]int{}
	for i, p := range pts {
		out.T[i] = p.t.UnixMilli()
		out.DiskUsedBytes[i], out.DiskLimitBytes[i] = p.diskUsed, p.diskLimit
		if p.haveUploads {
			out.UploadBacklogBytes[i] = ptr(p.backlogBytes)
			out.UploadBacklogHours[i] = ptr(p.backlogHours)
			out.UploadDrainSeconds[i] = ptr(p.drainSeconds)
		}
		for name, sp := range p.streams {
			k, ok := index[name]
			if !ok {
				k = len(out.Streams)
				index[name] = k
				out.Streams = append(out.Streams, streamHistoryJSON{
					Stream: name, RateHz: make([]*float64, len(pts)), AlignBoundMs: make([]*float64, len(pts)),
				})
			}
			s := &out.Streams[k]
			s.AlignBoundMs[i] = ptr(float64(sp.boundNs) / 1e6)
			if i > 0 {
				prev, ok := pts[i-1].streams[name]
				dt := p.t.Sub(pts[i-1].t).Seconds()
				if ok && dt > 0 && sp.samples >= prev.samples {
					s.RateHz[i] = ptr(float64(sp.samples-prev.samples) / dt)
				}
			}
		}
	}
	sortBy(out.Streams, func(s streamHistoryJSON) string { return s.Stream })
	return out
}

func ptr[T any](v T) *T { return &v }

// sampleHistory takes one point from the same sources as /v1/status.
func (d *Daemon) sampleHistory(now time.Time) historyPoint {
	u := d.store.Usage()
	p := historyPoint{t: now, diskUsed: u.Bytes, streams: map[string]streamPoint{}}
	if u.Quota > 0 {
		p.diskLimit = u.Quota
	} else {
		p.diskLimit = u.Bytes + max(0, u.Free-u.MinFree)
	}
	if d.uploader != nil {
		if st, err := d.uploader.Status(); err == nil {
			p.haveUploads = true
			p.backlogBytes, p.backlogHours, p.drainSeconds = st.BytesRemaining, st.HoursRemaining, st.DrainSeconds
		}
	}
	for _, s := range d.sink.Status() { // at most lifecycle.StatusMaxStreams
		p.streams[s.Stream] = streamPoint{samples: s.Counters.Samples, boundNs: s.Clock.ErrorBoundNs}
	}
	return p
}

// runHistory samples every historyEvery until ctx ends.
func (d *Daemon) runHistory(ctx context.Context) error {
	d.hist.add(d.sampleHistory(time.Now()))
	t := time.NewTicker(historyEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			d.hist.add(d.sampleHistory(now))
		}
	}
}

func (d *Daemon) handleHistory(w http.ResponseWriter, r *http.Request) {
	api.WriteJSON(w, http.StatusOK, d.hist.snapshot())
}
