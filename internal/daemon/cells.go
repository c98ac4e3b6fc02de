package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/storage"
)

// cells runs the episode state machine of every cell (ingest.Cell) against
// the gateway clock and persists what it decides.
//
// An episode goes through these stored states: recording from its start
// until its post-roll has been captured (a stopped episode in post-roll has
// Stop set and is still recording), then closed with its final quality
// report, built from the stored samples of its window. Only then does the
// uploader see it. A crash leaves it recording; on the next start it is
// closed as interrupted at its last durable sample (or, if it had already
// stopped, settled normally).
//
// Each cell's state machine is guarded by its own mutex; Tick runs every
// second from Run, and the API and MQTT triggers call Start and Stop.
type cells struct {
	store *storage.Store
	pipe  *pipeline
	log   *slog.Logger
	now   func() time.Time
	// settled is called after an episode is closed (wake the uploader).
	settled func(episode.Episode)
	// timeSync, if set, reads the kernel's time-sync state as an episode
	// closes (provenance).
	timeSync func() *episode.TimeSync

	byID  map[string]*cellState
	order []string
	// settleMargin delays the final report after the window ends, so that
	// samples still in flight (device latency, the last commit) are in it.
	settleMargin time.Duration

	triggers *prometheus.CounterVec
	episodes *prometheus.CounterVec
}

type cellState struct {
	cfg config.Cell
	mu  sync.Mutex
	sm  *ingest.Cell
	// streams are the cell's known streams: fixed ones from config, plus
	// templated MQTT streams as they appear.
	streams map[string]bool
	// late holds settled episodes waiting out settleMargin.
	late []episode.Episode
}

func newCells(cfg *config.Config, store *storage.Store, pipe *pipeline, log *slog.Logger, reg prometheus.Registerer) (*cells, error) {
	c := &cells{
		store: store, pipe: pipe, log: log.With("component", "cells"), now: time.Now,
		settleMargin: time.Second + cfg.Storage.SyncInterval,
		byID:         map[string]*cellState{},
		triggers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_episode_triggers_total",
			Help: "Episode trigger messages and API calls, by cell, source and result.",
		}, []string{"cell", "source", "result"}),
		episodes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_episodes_total",
			Help: "Episodes by cell and final state (closed, interrupted).",
		}, []string{"cell", "state"}),
	}
	if reg != nil {
		reg.MustRegister(c.triggers, c.episodes)
	}
	for _, cc := range cfg.Cells {
		sm, err := ingest.NewCell(ingest.CellOptions{
			ID: cc.ID, Preroll: cc.Preroll, Postroll: cc.Postroll,
			MaxDuration: cc.MaxDuration, IdleTimeout: cc.IdleTimeout,
		})
		if err != nil {
			return nil, fmt.Errorf("cell %s: %w", cc.ID, err)
		}
		cs := &cellState{cfg: cc, sm: sm, streams: map[string]bool{}}
		for _, id := range cc.Devices {
			for _, d := range cfg.Devices {
				if d.ID == id && d.Type != config.DeviceMQTT {
					cs.streams[d.Stream] = true
				}
			}
		}
		c.byID[cc.ID] = cs
		c.order = append(c.order, cc.ID)
	}
	return c, nil
}

// addStream records that stream belongs to cell (templated MQTT streams are
// only known once they appear).
func (c *cells) addStream(cell, stream string) {
	cs := c.byID[cell]
	if cs == nil {
		return
	}
	cs.mu.Lock()
	cs.streams[stream] = true
	cs.mu.Unlock()
}

// observe notes a sample's arrival on a cell, for the idle timeout.
func (c *cells) observe(cell string, recvT int64) {
	if cs := c.byID[cell]; cs != nil {
		cs.mu.Lock()
		cs.sm.Observe(recvT)
		cs.mu.Unlock()
	}
}

// errUnknownCell is returned for a cell id not in the config.
var errUnknownCell = errors.New("unknown cell")

// start begins an episode on a cell.
func (c *cells) start(ctx context.Context, cell string, r ingest.StartRequest) (episode.Episode, error) {
	cs := c.byID[cell]
	if cs == nil {
		return episode.Episode{}, fmt.Errorf("%w %q", errUnknownCell, cell)
	}
	source := r.Trigger
	if source == "" {
		source = ingest.TriggerAPI
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	// Timers due now fire before the start; their transitions stand even
	// when the start itself fails.
	tr, err := cs.sm.Start(c.now().UnixNano(), r)
	if perr := c.applyLocked(ctx, cs, tr); err == nil {
		err = perr
	}
	c.countTrigger(cell, source, err)
	if err != nil {
		return episode.Episode{}, err
	}
	e, _ := cs.sm.Recording()
	return c.withStreamsLocked(cs, e), nil
}

// stop ends the recording episode with the given id (or the cell's, when
// id is empty).
func (c *cells) stop(ctx context.Context, cell, id, reason string) (episode.Episode, error) {
	cs := c.byID[cell]
	if cs == nil {
		return episode.Episode{}, fmt.Errorf("%w %q", errUnknownCell, cell)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	rec, ok := cs.sm.Recording()
	if !ok || (id != "" && rec.ID != id) {
		c.countTrigger(cell, reason, ingest.ErrNotRecording)
		return episode.Episode{}, ingest.ErrNotRecording
	}
	tr, err := cs.sm.Stop(c.now().UnixNano(), reason)
	if perr := c.applyLocked(ctx, cs, tr); err == nil {
		err = perr
	}
	c.countTrigger(cell, reason, err)
	if err != nil {
		return episode.Episode{}, err
	}
	for _, t := range tr {
		if t.Episode.ID == rec.ID {
			return c.withStreamsLocked(cs, t.Episode), nil
		}
	}
	return rec, nil
}

// trigger handles a message from a cell's MQTT trigger topic.
func (c *cells) trigger(cell string, payload []byte) {
	t, err := ingest.ParseTrigger(payload)
	if err != nil {
		c.countTrigger(cell, ingest.TriggerMQTT, err)
		c.log.Warn("bad trigger message rejected", "cell", cell, "err", err)
		return
	}
	ctx := context.Background()
	switch t.Action {
	case ingest.ActionStart:
		_, err = c.start(ctx, cell, t.Request())
	default:
		_, err = c.stop(ctx, cell, "", ingest.StopMQTT)
	}
	if err != nil {
		c.log.Warn("trigger message not applied", "cell", cell, "action", t.Action, "err", err)
	}
}

func (c *cells) countTrigger(cell, source string, err error) {
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, ingest.ErrRecording):
		result = "already_recording"
	case errors.Is(err, ingest.ErrNotRecording):
		result = "not_recording"
	case errors.Is(err, ingest.ErrBadTrigger):
		result = "bad_message"
	default:
		result = "error"
	}
	c.triggers.WithLabelValues(cell, source, result).Inc()
}

// tick fires every cell's due timers.
func (c *cells) tick(ctx context.Context) {
	now := c.now().UnixNano()
	for _, id := range c.order {
		cs := c.byID[id]
		cs.mu.Lock()
		if err := c.applyLocked(ctx, cs, cs.sm.Tick(now)); err != nil {
			c.log.Error("persist episode", "cell", id, "err", err)
		}
		if err := c.settleLateLocked(ctx, cs, now); err != nil {
			c.log.Error("settle episode", "cell", id, "err", err)
		}
		cs.mu.Unlock()
	}
}

// settleLateLocked settles the episodes whose margin has passed by now
// (every one, if now is 0).
func (c *cells) settleLateLocked(ctx context.Context, cs *cellState, now int64) error {
	keep := cs.late[:0]
	var errs []error
	for _, e := range cs.late {
		if now != 0 && now < e.Stop+e.Postroll+int64(c.settleMargin) {
			keep = append(keep, e)
			continue
		}
		if err := c.settle(ctx, cs, &e); err != nil {
			errs = append(errs, err)
		}
	}
	cs.late = keep
	return errors.Join(errs...)
}

// withStreamsLocked sets e.Streams to every stream the cell has known.
func (c *cells) withStreamsLocked(cs *cellState, e episode.Episode) episode.Episode {
	for s := range cs.streams {
		if !slices.Contains(e.Streams, s) {
			e.Streams = append(e.Streams, s)
		}
	}
	slices.Sort(e.Streams)
	return e
}

// applyLocked persists transitions in order.
func (c *cells) applyLocked(ctx context.Context, cs *cellState, tr []ingest.Transition) error {
	for _, t := range tr {
		e := c.withStreamsLocked(cs, t.Episode)
		switch t.Kind {
		case ingest.Started:
			c.log.Info("episode started", "cell", e.Cell, "episode", e.ID, "trigger", e.Trigger, "task", e.Task)
		case ingest.Stopped:
			// Still capturing post-roll: stays recording until settled.
			e.State = episode.Recording
			c.log.Info("episode stopped; capturing post-roll", "cell", e.Cell, "episode", e.ID, "reason", e.StopReason)
		case ingest.Settled:
			if c.now().UnixNano() < e.Stop+e.Postroll+int64(c.settleMargin) {
				cs.late = append(cs.late, e)
				continue
			}
			if err := c.settle(ctx, cs, &e); err != nil {
				return err
			}
			continue
		}
		e.Updated = c.now().UnixNano()
		if err := c.store.PutEpisode(e); err != nil {
			return fmt.Errorf("store episode %s: %w", e.ID, err)
		}
	}
	return nil
}

// settle builds the final quality report of a stopped episode, stores it
// closed (or interrupted) and hands it on.
func (c *cells) settle(ctx context.Context, cs *cellState, e *episode.Episode) error {
	if e.State == episode.Recording || e.State == "" {
		e.State = episode.Closed
	}
	q, err := c.report(ctx, cs.cfg.GapFactor, *e)
	if err != nil {
		return fmt.Errorf("quality report of %s: %w", e.ID, err)
	}
	e.Quality = q
	if c.timeSync != nil {
		e.TimeSync = c.timeSync()
	}
	e.Updated = c.now().UnixNano()
	if err := c.store.PutEpisode(*e); err != nil {
		return fmt.Errorf("store episode %s: %w", e.ID, err)
	}
	c.episodes.WithLabelValues(e.Cell, string(e.State)).Inc()
	c.log.Info("episode closed", "cell", e.Cell, "episode", e.ID, "state", e.State,
		"duration", time.Duration(e.Stop-e.Start).Round(time.Millisecond), "streams", len(e.Quality))
	if c.settled != nil {
		c.settled(*e)
	}
	return nil
}

// report builds the quality report of every stream of e from storage.
func (c *cells) report(ctx context.Context, gapFactor float64, e episode.Episode) ([]episode.StreamReport, error) {
	from, to := e.Window(0)
	var out []episode.StreamReport
	for _, stream := range e.Streams {
		d, err := c.store.Descriptor(stream)
		if errors.Is(err, storage.ErrNotFound) {
			continue // configured, but never produced a sample
		}
		if err != nil {
			return nil, err
		}
		r, err := ingest.NewReport(d, ingest.ReportOptions{GapFactor: gapFactor, Clock: clockOptions})
		if err != nil {
			return nil, err
		}
		var corrupt int
		for s, err := range c.store.Range(stream, from, to) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if err != nil {
				corrupt++
				continue
			}
			r.Add(&s)
		}
		if corrupt > 0 {
			c.log.Warn("corrupt samples skipped in quality report", "episode", e.ID, "stream", stream, "count", corrupt)
		}
		// The live estimator stamped these samples: its figures, and the
		// worst bound among the samples as stamped, are the ones that hold.
		// (After a restart the live history is gone and the report keeps
		// the figures re-derived from the stored samples.)
		var bound int64
		var haveBound bool
		if st := c.pipe.stream(stream); st != nil && e.State != episode.Interrupted {
			st.mu.Lock()
			r.SetClock(st.proc.ClockReport(from, to))
			bound, haveBound = st.proc.BoundOver(from, to)
			st.mu.Unlock()
		}
		res := r.Result()
		if haveBound {
			res.AlignmentErrorBoundMs = max(res.AlignmentErrorBoundMs, float64(bound)/1e6)
		}
		out = append(out, res)
	}
	return out, nil
}

// recover closes what a crash or restart left recording, before devices
// start: episodes that had not stopped become interrupted at their last
// durable sample; stopped ones in post-roll settle when due.
func (c *cells) recover(ctx context.Context) error {
	eps, err := c.store.Episodes()
	if err != nil {
		return fmt.Errorf("list episodes: %w", err)
	}
	now := c.now().UnixNano()
	for _, e := range eps {
		if e.State != episode.Recording {
			continue
		}
		cs := c.byID[e.Cell]
		if e.Stop == 0 || cs == nil {
			var last int64
			for _, s := range e.Streams {
				if smp, err := c.store.LastSample(s); err == nil {
					last = max(last, smp.T)
				}
			}
			ie := ingest.Interrupt(e, last, now)
			c.log.Warn("episode left recording by a crash or restart; closed as interrupted", "episode", e.ID, "cell", e.Cell)
			gap := 3.0
			if cs != nil {
				gap = cs.cfg.GapFactor
			}
			q, err := c.report(ctx, gap, ie)
			if err != nil {
				return fmt.Errorf("quality report of %s: %w", e.ID, err)
			}
			ie.Quality = q
			if err := c.store.PutEpisode(ie); err != nil {
				return fmt.Errorf("store episode %s: %w", e.ID, err)
			}
			c.episodes.WithLabelValues(ie.Cell, string(ie.State)).Inc()
			continue
		}
		e.State = episode.Closed
		cs.mu.Lock()
		err := cs.sm.Track(e)
		cs.mu.Unlock()
		if err != nil {
			return err
		}
	}
	c.tick(ctx)
	return nil
}

// run ticks every second until ctx is cancelled, then stops every
// recording episode (reason shutdown) and settles it with what was stored:
// devices have stopped by then, so no more data can arrive.
func (c *cells) run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.tick(ctx)
		case <-ctx.Done():
			c.shutdown()
			return nil
		}
	}
}

// finish stops every recording episode now, waits for the longest
// post-roll to be captured, and settles them.
func (c *cells) finish(ctx context.Context) error {
	var wait time.Duration
	for _, id := range c.order {
		cs := c.byID[id]
		cs.mu.Lock()
		if _, ok := cs.sm.Recording(); ok {
			tr, err := cs.sm.Stop(c.now().UnixNano(), ingest.StopShutdown)
			if perr := c.applyLocked(ctx, cs, tr); err == nil {
				err = perr
			}
			if err != nil {
				cs.mu.Unlock()
				return err
			}
		}
		if len(cs.sm.Pending()) > 0 {
			wait = max(wait, cs.cfg.Postroll)
		}
		cs.mu.Unlock()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait + c.settleMargin):
	}
	c.tick(ctx)
	return nil
}

func (c *cells) shutdown() {
	ctx := context.Background()
	now := c.now().UnixNano()
	for _, id := range c.order {
		cs := c.byID[id]
		cs.mu.Lock()
		var tr []ingest.Transition
		if _, ok := cs.sm.Recording(); ok {
			tr, _ = cs.sm.Stop(now, ingest.StopShutdown)
		}
		// Settle everything pending now: nothing more will arrive.
		far := now + int64(cs.cfg.Postroll) + 1
		tr = append(tr, cs.sm.Tick(far)...)
		if err := c.applyLocked(ctx, cs, tr); err != nil {
			c.log.Error("close episodes at shutdown", "cell", id, "err", err)
		}
		if err := c.settleLateLocked(ctx, cs, 0); err != nil {
			c.log.Error("close episodes at shutdown", "cell", id, "err", err)
		}
		cs.mu.Unlock()
	}
}

// cellStatus is one cell's row in /v1/status.
type cellStatus struct {
	Cell      string           `json:"cell"`
	Recording *episode.Episode `json:"recording,omitempty"`
	Streams   []string         `json:"streams"`
}

func (c *cells) status() []cellStatus {
	var out []cellStatus
	for _, id := range c.order {
		cs := c.byID[id]
		cs.mu.Lock()
		st := cellStatus{Cell: id}
		if e, ok := cs.sm.Recording(); ok {
			e = c.withStreamsLocked(cs, e)
			st.Recording = &e
		}
		for s := range cs.streams {
			st.Streams = append(st.Streams, s)
		}
		cs.mu.Unlock()
		slices.Sort(st.Streams)
		out = append(out, st)
	}
	return out
}
