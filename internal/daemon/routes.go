package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/internal/api"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/dashboard"
	"github.com/episoded/episoded/internal/lifecycle"
	"github.com/episoded/episoded/internal/replay"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/export"
)

// routes mounts the /v1 JSON API, the export download and WebRTC.
//
//	POST   /v1/cells/{cell}/episodes   start an episode: {"task","operator","robot","labels","priority"}; 409 if one is recording
//	POST   /v1/episodes/{id}/stop      stop a recording episode; 409 if it is not recording
//	GET    /v1/episodes                list, newest first: ?state=&cell=&quality=&since=&until=&label=k=v (times RFC 3339 or ns; quality ok or degraded)
//	                                   paged: ?limit= (default 100, max 1000) &cursor= (from the X-Next-Cursor header of the previous page)
//
// Every {id} may be a unique prefix of an episode id (resolveID); an
// ambiguous prefix is 409 listing the candidates.
//
//	GET    /v1/episodes/{id}           manifest and quality report
//	DELETE /v1/episodes/{id}           delete an episode and the data only it covers; 409 while recording
//	GET    /v1/episodes/{id}/export    the episode as MCAP
//	POST   /v1/episodes/{id}/retry     requeue a quarantined or failed upload
//	GET    /v1/uploads                 upload queue, window, backlog
//	POST   /v1/sync/run                upload what is due now and return when idle (sync mode oneshot)
//	GET    /v1/episodes/{id}/samples   the episode's raw samples, for `episoded replay`
//	GET    /v1/history                 the last 15 minutes of rates, alignment, disk and backlog (dashboard trends)
//	GET    /debug/pprof/...            Go runtime profiles, admin only (pprof.go)
//	GET    /                           the dashboard
func (d *Daemon) routes() {
	a := d.api
	a.HandleFunc("POST /v1/cells/{cell}/episodes", d.handleStart)
	a.Handle("POST /v1/episodes/{id}/stop", d.resolveID(http.HandlerFunc(d.handleStop)))
	a.HandleFunc("GET /v1/episodes", d.handleList)
	a.Handle("GET /v1/episodes/{id}", d.resolveID(http.HandlerFunc(d.handleShow)))
	a.Handle("DELETE /v1/episodes/{id}", d.resolveID(http.HandlerFunc(d.handleDelete)))
	a.Handle("GET /v1/episodes/{id}/export", d.resolveID(export.Handler(d.store, export.HandlerOptions{
		Attachments: d.attachments,
		Logger:      d.log,
	})))
	a.Handle("POST /v1/episodes/{id}/retry", d.resolveID(http.HandlerFunc(d.handleRetry)))
	a.HandleFunc("GET /v1/uploads", d.handleUploads)
	a.HandleFunc("POST /v1/sync/run", d.handleSyncRun)
	a.Handle("GET /v1/episodes/{id}/samples", d.resolveID(replay.SamplesHandler(d.store, d.log)))
	a.HandleFunc("GET /v1/history", d.handleHistory)
	d.rtc.Mount(a.Handle)
	mountPprof(a)
	a.HandleOpen("GET /", dashboard.Handler())
}

// startRequest is the body of POST /v1/cells/{cell}/episodes.
type startRequest struct {
	Task     string            `json:"task"`
	Operator string            `json:"operator"`
	Robot    string            `json:"robot"`
	Labels   map[string]string `json:"labels"`
	Priority bool              `json:"priority"`
}

func (d *Daemon) handleStart(w http.ResponseWriter, r *http.Request) {
	var req startRequest
	if !api.ReadJSON(w, r, &req, true) {
		return
	}
	sr := ingest.StartRequest{Task: req.Task, Operator: req.Operator, Robot: req.Robot, Labels: req.Labels, Priority: req.Priority, Trigger: ingest.TriggerAPI}
	if err := sr.Validate(); err != nil {
		api.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	e, err := d.cells.Start(r.Context(), r.PathValue("cell"), sr)
	if err != nil {
		writeEpisodeError(w, err)
		return
	}
	api.WriteJSON(w, http.StatusCreated, e)
}

func (d *Daemon) handleStop(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	e, err := d.store.Episode(id)
	if err != nil {
		writeEpisodeError(w, err)
		return
	}
	if e.State != episode.Recording || e.Stop != 0 {
		api.WriteError(w, http.StatusConflict, fmt.Sprintf("episode %s is not recording (state %s)", id, stateOf(e)))
		return
	}
	e, err = d.cells.Stop(r.Context(), e.Cell, id, ingest.StopAPI)
	if err != nil {
		writeEpisodeError(w, err)
		return
	}
	api.WriteJSON(w, http.StatusOK, e)
}

// stateOf names an episode's state, telling post-roll apart from recording.
func stateOf(e episode.Episode) string {
	if e.State == episode.Recording && e.Stop != 0 {
		return "recording (post-roll)"
	}
	return string(e.State)
}

func writeEpisodeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, storage.ErrNotFound):
		api.WriteError(w, http.StatusNotFound, "episode not found")
	case errors.Is(err, lifecycle.ErrUnknownCell):
		api.WriteError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ingest.ErrRecording), errors.Is(err, ingest.ErrNotRecording):
		api.WriteError(w, http.StatusConflict, err.Error())
	default:
		api.WriteError(w, http.StatusInternalServerError, err.Error())
	}
}

// episodeFilter selects episodes for GET /v1/episodes.
type episodeFilter struct {
	state, cell  string
	quality      string
	since, until int64
	labels       map[string]string
}

func parseFilter(q map[string][]string) (episodeFilter, error) {
	f := episodeFilter{labels: map[string]string{}}
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	f.state, f.cell = get("state"), get("cell")
	if f.state != "" && !episode.State(f.state).Valid() {
		var valid []string
		for _, s := range episode.States {
			valid = append(valid, string(s))
		}
		return f, fmt.Errorf("unknown state %q; valid: %s", f.state, strings.Join(valid, ", "))
	}
	f.quality = get("quality")
	if f.quality != "" && f.quality != episode.QualityOK && f.quality != episode.QualityDegraded {
		return f, fmt.Errorf("unknown quality %q: want %s or %s", f.quality, episode.QualityOK, episode.QualityDegraded)
	}
	var err error
	if f.since, err = parseTime(get("since")); err != nil {
		return f, fmt.Errorf("since: %w", err)
	}
	if f.until, err = parseTime(get("until")); err != nil {
		return f, fmt.Errorf("until: %w", err)
	}
	for _, l := range q["label"] {
		k, v, _ := strings.Cut(l, "=")
		f.labels[k] = v
	}
	return f, nil
}

// parseTime reads RFC 3339 or integer ns; "" is 0.
func parseTime(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UnixNano(), nil
	}
	var ns int64
	if _, err := fmt.Sscan(s, &ns); err != nil {
		return 0, fmt.Errorf("%q is neither RFC 3339 nor ns since the epoch", s)
	}
	return ns, nil
}

func (f episodeFilter) match(e episode.Episode) bool {
	if f.state != "" && string(e.State) != f.state || f.cell != "" && e.Cell != f.cell {
		return false
	}
	if f.quality != "" && e.QualityStatus() != f.quality {
		return false
	}
	if f.since != 0 && e.Start < f.since || f.until != 0 && e.Start > f.until {
		return false
	}
	for k, v := range f.labels {
		got, ok := e.Labels[k]
		if !ok || (v != "" && got != v) {
			return false
		}
	}
	return true
}

func (d *Daemon) handleList(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r.URL.Query())
	if err != nil {
		api.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	eps, err := d.store.Episodes()
	if err != nil {
		api.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	page, err := parsePage(r.URL.Query())
	if err != nil {
		api.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Newest first: eps is ordered by id (UUIDv7, by time), so walk it
	// backwards from the cursor, an id that is not returned again.
	out := []episode.Episode{}
	more := false
	for i := len(eps) - 1; i >= 0; i-- {
		e := eps[i]
		if page.cursor != "" && e.ID >= page.cursor || !f.match(e) {
			continue
		}
		if len(out) == page.limit {
			more = true
			break
		}
		out = append(out, e)
	}
	if more {
		next := out[len(out)-1].ID
		q := r.URL.Query()
		q.Set("cursor", next)
		q.Set("limit", strconv.Itoa(page.limit))
		w.Header().Set(api.NextCursorHeader, next)
		w.Header().Set("Link", "<"+r.URL.Path+"?"+q.Encode()+`>; rel="next"`)
	}
	api.WriteJSON(w, http.StatusOK, out)
}

type pageRequest struct {
	limit  int
	cursor string
}

func parsePage(q url.Values) (pageRequest, error) {
	p := pageRequest{limit: api.DefaultPageLimit, cursor: q.Get("cursor")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > api.MaxPageLimit {
			return p, fmt.Errorf("limit %q: want a whole number from 1 to %d", v, api.MaxPageLimit)
		}
		p.limit = n
	}
	return p, nil
}

func (d *Daemon) handleShow(w http.ResponseWriter, r *http.Request) {
	e, err := d.store.Episode(r.PathValue("id"))
	if err != nil {
		writeEpisodeError(w, err)
		return
	}
	api.WriteJSON(w, http.StatusOK, e)
}

func (d *Daemon) handleDelete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	e, err := d.store.Episode(id)
	if err != nil {
		writeEpisodeError(w, err)
		return
	}
	if e.State == episode.Recording || e.State == episode.Uploading {
		api.WriteError(w, http.StatusConflict, fmt.Sprintf("episode %s is %s; stop it or wait for the upload first", id, stateOf(e)))
		return
	}
	if err := d.store.DeleteEpisode(id); err != nil {
		writeEpisodeError(w, err)
		return
	}
	d.log.Info("episode deleted", "episode", id, "state", e.State)
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) handleRetry(w http.ResponseWriter, r *http.Request) {
	if d.uploader == nil {
		api.WriteError(w, http.StatusConflict, "no sync target is configured")
		return
	}
	if err := d.uploader.Retry(r.PathValue("id")); err != nil {
		writeEpisodeError(w, err)
		return
	}
	e, err := d.store.Episode(r.PathValue("id"))
	if err != nil {
		writeEpisodeError(w, err)
		return
	}
	api.WriteJSON(w, http.StatusOK, e)
}

func (d *Daemon) handleUploads(w http.ResponseWriter, r *http.Request) {
	if d.uploader == nil {
		api.WriteJSON(w, http.StatusOK, map[string]any{"target": "", "queue": []any{}, "note": "no sync target is configured"})
		return
	}
	d.uploader.StatusHandler().ServeHTTP(w, r)
}

func (d *Daemon) handleSyncRun(w http.ResponseWriter, r *http.Request) {
	if d.uploader == nil {
		api.WriteError(w, http.StatusConflict, "no sync target is configured")
		return
	}
	if d.cfg.Sync.Mode == config.SyncDaemon {
		// The daemon's own uploader is running: nudge it rather than run
		// a second pass beside it.
		d.uploader.Wake()
		st, err := d.uploader.Status()
		if err != nil {
			api.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		api.WriteJSON(w, http.StatusAccepted, st)
		return
	}
	err := d.uploader.RunOnce(r.Context())
	st, serr := d.uploader.Status()
	if serr != nil {
		api.WriteError(w, http.StatusInternalServerError, serr.Error())
		return
	}
	if err != nil {
		api.WriteJSON(w, http.StatusBadGateway, map[string]any{"error": err.Error(), "status": st})
		return
	}
	api.WriteJSON(w, http.StatusOK, st)
}

// sortBy sorts s by key.
func sortBy[T any](s []T, key func(T) string) {
	sort.Slice(s, func(i, j int) bool { return key(s[i]) < key(s[j]) })
}
