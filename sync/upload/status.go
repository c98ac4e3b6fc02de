package upload

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
)

// Status is a snapshot for `episoded sync status` and GET /v1/uploads.
type Status struct {
	Target string       `json:"target"`
	Window WindowStatus `json:"window"`
	// Bandwidth is the configured cap in bytes/s (0: none); Rate the
	// recently measured upload rate.
	Bandwidth int64         `json:"bandwidth_bytes_per_sec"`
	Rate      float64       `json:"rate_bytes_per_sec"`
	Active    *ActiveStatus `json:"active,omitempty"`
	// Queue lists episodes waiting for upload, in upload order.
	Queue []QueueEntry `json:"queue"`
	// Quarantined and Failed need Retry.
	Quarantined []QueueEntry `json:"quarantined,omitempty"`
	Failed      []QueueEntry `json:"failed,omitempty"`
	// BytesRemaining is what the queue still has to send (staged sizes
	// where known, else payload bytes from the quality report);
	// HoursRemaining is the recorded time it covers.
	BytesRemaining int64   `json:"bytes_remaining"`
	HoursRemaining float64 `json:"hours_remaining"`
	// DrainSeconds estimates the time to send the queue at Rate (or the
	// bandwidth cap), plus the wait for the window to open; -1 if unknown.
	DrainSeconds float64 `json:"drain_seconds"`
	// Uploaded counts episodes uploaded by this process.
	Uploaded  uint64 `json:"uploaded"`
	LastError string `json:"last_error,omitempty"`
}

// WindowStatus describes the upload windows now.
type WindowStatus struct {
	Always     bool      `json:"always"`
	Open       bool      `json:"open"`
	Windows    []string  `json:"windows,omitempty"`
	Timezone   string    `json:"timezone"`
	NextChange time.Time `json:"next_change,omitzero"`
}

// ActiveStatus is the object being uploaded.
type ActiveStatus struct {
	Episode string    `json:"episode"`
	Key     string    `json:"key"`
	Size    int64     `json:"size"`
	Done    int64     `json:"done"`
	Sent    int64     `json:"sent"`
	Started time.Time `json:"started"`
}

// QueueEntry is one episode in the status.
type QueueEntry struct {
	ID          string    `json:"id"`
	Cell        string    `json:"cell"`
	State       string    `json:"state"`
	Priority    bool      `json:"priority,omitempty"`
	Bytes       int64     `json:"bytes"`
	Seconds     float64   `json:"seconds"`
	Attempts    int       `json:"attempts,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// remaining estimates the bytes e still has to send.
func remaining(e episode.Episode, st storage.UploadState, haveState bool) int64 {
	if haveState && len(st.Objects) > 0 {
		var n int64
		known := true
		for _, o := range st.Objects {
			if o.Done {
				continue
			}
			if o.Size == 0 {
				known = false
				break
			}
			n += o.Size
			for _, p := range o.Parts {
				n -= p.Size
			}
		}
		if known {
			return max(n, 0)
		}
	}
	var n uint64
	for _, q := range e.Quality {
		n += q.Bytes
	}
	return int64(n)
}

func seconds(e episode.Episode) float64 {
	from, to := e.Window(e.Stop)
	return float64(to-from) / 1e9
}

func (u *Uploader) entry(e episode.Episode) QueueEntry {
	st, err := u.store.UploadState(e.ID)
	have := err == nil
	q := QueueEntry{ID: e.ID, Cell: e.Cell, State: string(e.State), Priority: u.priority(e),
		Bytes: remaining(e, st, have), Seconds: seconds(e), Reason: e.Reason}
	if have {
		q.Attempts, q.LastError = st.Attempts, st.LastError
	}
	u.mu.Lock()
	if t, ok := u.mu.backoff[e.ID]; ok && t.After(time.Now()) {
		q.NextAttempt = t
	}
	u.mu.Unlock()
	return q
}

// Status returns a snapshot of the queue, the window and the estimates.
func (u *Uploader) Status() (Status, error) {
	now := time.Now()
	s := Status{
		Target:    u.target.String(),
		Bandwidth: u.o.Bandwidth,
		Window: WindowStatus{Always: u.sched.always(), Open: u.sched.open(now), Windows: u.o.Windows,
			Timezone: u.sched.loc.String(), NextChange: u.sched.nextChange(now)},
		Queue: []QueueEntry{},
	}
	eps, err := u.store.Episodes()
	if err != nil {
		return s, fmt.Errorf("upload status: %w", err)
	}
	u.updateBacklog(eps)
	var prio, rest []QueueEntry
	for _, e := range eps {
		switch {
		case pending(e):
			q := u.entry(e)
			if q.Priority {
				prio = append(prio, q)
			} else {
				rest = append(rest, q)
			}
			s.BytesRemaining += q.Bytes
			s.HoursRemaining += q.Seconds / 3600
		case e.State == episode.Quarantined:
			s.Quarantined = append(s.Quarantined, u.entry(e))
		case e.State == episode.Failed:
			s.Failed = append(s.Failed, u.entry(e))
		}
	}
	s.Queue = append(append(s.Queue, prio...), rest...)
	u.mu.Lock()
	s.Rate, s.Uploaded, s.LastError = u.mu.rate, u.mu.uploaded, u.mu.lastErr
	if a := u.mu.active; a != nil {
		c := *a
		s.Active = &c
	}
	u.mu.Unlock()
	rate := s.Rate
	if u.o.Bandwidth > 0 && (rate == 0 || rate > float64(u.o.Bandwidth)) {
		rate = float64(u.o.Bandwidth)
	}
	switch {
	case s.BytesRemaining == 0:
		s.DrainSeconds = 0
	case rate <= 0:
		s.DrainSeconds = -1
	default:
		s.DrainSeconds = float64(s.BytesRemaining) / rate
		if !s.Window.Open && !s.Window.NextChange.IsZero() {
			s.DrainSeconds += s.Window.NextChange.Sub(now).Seconds()
		}
	}
	return s, nil
}

// updateBacklog refreshes the backlog gauges from the episode list.
func (u *Uploader) updateBacklog(eps []episode.Episode) {
	var bytes int64
	var secs float64
	var n int
	for _, e := range eps {
		if !pending(e) {
			continue
		}
		st, err := u.store.UploadState(e.ID)
		bytes += remaining(e, st, err == nil)
		secs += seconds(e)
		n++
	}
	u.m.backlogBytes.Set(float64(bytes))
	u.m.backlogSeconds.Set(secs)
	u.m.backlogEpisodes.Set(float64(n))
	u.m.windowOpen.Set(b2f(u.sched.open(time.Now())))
}

type metrics struct {
	bytes           prometheus.Counter
	episodes        *prometheus.CounterVec
	retries         prometheus.Counter
	backlogBytes    prometheus.Gauge
	backlogSeconds  prometheus.Gauge
	backlogEpisodes prometheus.Gauge
	windowOpen      prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "episoded_upload_bytes_total",
			Help: "Bytes read for upload (object data and manifests, including retried parts)."}),
		episodes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "episoded_upload_episodes_total",
			Help: "Episodes that left the upload queue, by result (uploaded, already_uploaded, quarantined, failed)."}, []string{"result"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: "episoded_upload_retries_total",
			Help: "Upload attempts that failed with a transient error and will be retried."}),
		backlogBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "episoded_upload_backlog_bytes",
			Help: "Bytes still to upload."}),
		backlogSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "episoded_upload_backlog_seconds",
			Help: "Seconds of recorded data still to upload."}),
		backlogEpisodes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "episoded_upload_backlog_episodes",
			Help: "Episodes waiting for upload."}),
		windowOpen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "episoded_upload_window_open",
			Help: "1 while an upload window is open (always 1 without windows)."}),
	}
	for _, r := range []string{"uploaded", "already_uploaded", "quarantined", "failed"} {
		m.episodes.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.bytes, m.episodes, m.retries, m.backlogBytes, m.backlogSeconds, m.backlogEpisodes, m.windowOpen} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if !errors.As(err, &are) {
					panic(err)
				}
			}
		}
	}
	return m
}
