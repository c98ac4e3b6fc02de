package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// cells runs the episode state machine of every cell (ingest.Cell) against
// the gateway clock and persists what it decides.
//
// An episode goes through these stored states: recording from its start
// until its post-roll has been captured (a stopped episode in post-roll has
// Stop set and is still recording), then closed with its final quality
// report and verdict, built from the stored index of its window (no payload
// is read). Only then does the uploader see it. A crash leaves it
// recording; on the next start it is closed as interrupted at its last
// durable sample (or, if it had already stopped, settled normally).
//
// Locks and I/O: each cell's state machine is guarded by its own mutex
// (cellState.mu), which every sample's arrival takes briefly (observe, for
// the idle timeout). It is never held across I/O: under it a call only
// decides transitions and queues what must be stored, in order, on the
// cell's persistence queue (cellState.q); the cell's worker goroutine,
// started by run, stores episodes and builds final reports without it.
// API calls wait for their own job (so that a failure to store is their
// error); ticks and MQTT triggers do not wait, and failures are logged.
// Lock order: cellState.mu, then jobQueue.mu; pipeline stream locks are
// taken by the worker alone, never under cellState.mu.
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

	// devs are the configured devices by id, streamDev the device of each
	// fixed stream id; offline remembers connection outages.
	devs      map[string]config.Device
	streamDev map[string]string
	offline   *offlineLog
	// sources returns the devices' connection states (polled every
	// second); nil polls nothing.
	sources func() []devices.Status

	triggers *prometheus.CounterVec
	episodes *prometheus.CounterVec
	closed   *prometheus.CounterVec
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
	q    jobQueue
}

// step is one piece of persistence work, run by the cell's worker.
type step func(ctx context.Context) error

// job is the steps of one call, run in order; done (buffered) receives
// their joined error.
type job struct {
	steps []step
	done  chan error
}

// jobQueue is a cell's persistence queue. It grows by a few jobs per
// episode (start, stop, settle) and is drained by one worker; it is never
// full, and a push never blocks.
type jobQueue struct {
	mu   sync.Mutex
	jobs []job
	wake chan struct{}
}

// push queues steps and returns the channel their result will arrive on.
func (q *jobQueue) push(steps []step) <-chan error {
	done := make(chan error, 1)
	if len(steps) == 0 {
		done <- nil
		return done
	}
	q.mu.Lock()
	q.jobs = append(q.jobs, job{steps: steps, done: done})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return done
}

func (q *jobQueue) pop() (job, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.jobs) == 0 {
		return job{}, false
	}
	j := q.jobs[0]
	q.jobs[0] = job{}
	q.jobs = q.jobs[1:]
	return j, true
}

func newCells(cfg *config.Config, store *storage.Store, pipe *pipeline, log *slog.Logger, reg prometheus.Registerer) (*cells, error) {
	c := &cells{
		store: store, pipe: pipe, log: log.With("component", "cells"), now: time.Now,
		settleMargin: time.Second + cfg.Storage.SyncInterval,
		byID:         map[string]*cellState{},
		devs:         map[string]config.Device{},
		streamDev:    map[string]string{},
		offline:      newOfflineLog(),
		triggers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_episode_triggers_total",
			Help: "Episode trigger messages and API calls, by cell, source and result.",
		}, []string{"cell", "source", "result"}),
		episodes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_episodes_total",
			Help: "Episodes by cell and final state (closed, interrupted).",
		}, []string{"cell", "state"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_episodes_closed_total",
			Help: "Episodes closed (or interrupted) with a final report, by cell and quality verdict (ok, degraded).",
		}, []string{"cell", "quality"}),
	}
	if reg != nil {
		reg.MustRegister(c.triggers, c.episodes, c.closed)
	}
	for _, d := range cfg.Devices {
		c.devs[d.ID] = d
		if d.Type != config.DeviceMQTT {
			c.streamDev[d.Stream] = d.ID
		}
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
		cs.q.wake = make(chan struct{}, 1)
		for _, id := range cc.Devices {
			for _, d := range cfg.Devices {
				if d.ID == id && d.Type != config.DeviceMQTT {
					cs.streams[d.Stream] = true
				}
			}
		}
		c.byID[cc.ID] = cs
		c.order = append(c.order, cc.ID)
		// Both verdicts exist from the start, so that a rate or an alert
		// on degraded episodes has a series to work on.
		c.closed.WithLabelValues(cc.ID, episode.QualityOK)
		c.closed.WithLabelValues(cc.ID, episode.QualityDegraded)
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

// wait waits for a job's result.
func wait(ctx context.Context, done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// start begins an episode on a cell and waits until it is stored.
func (c *cells) start(ctx context.Context, cell string, r ingest.StartRequest) (episode.Episode, error) {
	e, done, err := c.startAsync(cell, r)
	if errors.Is(err, errUnknownCell) {
		return episode.Episode{}, err // not counted: the label would be the caller's
	}
	if err == nil {
		err = wait(ctx, done)
	}
	c.countTrigger(cell, cmpSource(r.Trigger), err)
	if err != nil {
		return episode.Episode{}, err
	}
	return e, nil
}

func cmpSource(trigger string) string {
	if trigger == "" {
		return ingest.TriggerAPI
	}
	return trigger
}

// startAsync begins an episode and queues what must be stored.
func (c *cells) startAsync(cell string, r ingest.StartRequest) (episode.Episode, <-chan error, error) {
	cs := c.byID[cell]
	if cs == nil {
		return episode.Episode{}, nil, fmt.Errorf("%w %q", errUnknownCell, cell)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	// Timers due now fire before the start; their transitions stand even
	// when the start itself fails.
	tr, err := cs.sm.Start(c.now().UnixNano(), r)
	done := c.applyLocked(cs, tr)
	if err != nil {
		return episode.Episode{}, nil, err
	}
	e, _ := cs.sm.Recording()
	return c.withStreamsLocked(cs, e), done, nil
}

// stop ends the recording episode with the given id (or the cell's, when
// id is empty) and waits until that is stored.
func (c *cells) stop(ctx context.Context, cell, id, reason string) (episode.Episode, error) {
	e, done, err := c.stopAsync(cell, id, reason)
	if errors.Is(err, errUnknownCell) {
		return episode.Episode{}, err
	}
	if err == nil {
		err = wait(ctx, done)
	}
	c.countTrigger(cell, reason, err)
	if err != nil {
		return episode.Episode{}, err
	}
	return e, nil
}

func (c *cells) stopAsync(cell, id, reason string) (episode.Episode, <-chan error, error) {
	cs := c.byID[cell]
	if cs == nil {
		return episode.Episode{}, nil, fmt.Errorf("%w %q", errUnknownCell, cell)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	rec, ok := cs.sm.Recording()
	if !ok || (id != "" && rec.ID != id) {
		return episode.Episode{}, nil, ingest.ErrNotRecording
	}
	tr, err := cs.sm.Stop(c.now().UnixNano(), reason)
	done := c.applyLocked(cs, tr)
	if err != nil {
		return episode.Episode{}, nil, err
	}
	for _, t := range tr {
		if t.Episode.ID == rec.ID {
			return c.withStreamsLocked(cs, t.Episode), done, nil
		}
	}
	return rec, done, nil
}

// trigger handles a message from a cell's MQTT trigger topic. It runs on
// the broker's delivery goroutine, so it does not wait for storage: a
// failure to store is logged by the cell's worker.
func (c *cells) trigger(cell string, payload []byte) {
	t, err := ingest.ParseTrigger(payload)
	if err != nil {
		c.countTrigger(cell, ingest.TriggerMQTT, err)
		c.log.Warn("bad trigger message rejected", "cell", cell, "err", err)
		return
	}
	switch t.Action {
	case ingest.ActionStart:
		_, _, err = c.startAsync(cell, t.Request())
		c.countTrigger(cell, cmpSource(t.Request().Trigger), err)
	default:
		_, _, err = c.stopAsync(cell, "", ingest.StopMQTT)
		c.countTrigger(cell, ingest.StopMQTT, err)
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

// tick fires every cell's due timers and queues what they decide.
func (c *cells) tick() {
	now := c.now().UnixNano()
	for _, id := range c.order {
		cs := c.byID[id]
		cs.mu.Lock()
		c.applyLocked(cs, cs.sm.Tick(now))
		c.settleLateLocked(cs, now)
		cs.mu.Unlock()
	}
}

// settleLateLocked queues the settling of the episodes whose margin has
// passed by now (every one, if now is 0).
func (c *cells) settleLateLocked(cs *cellState, now int64) <-chan error {
	keep := cs.late[:0]
	var steps []step
	for _, e := range cs.late {
		if now != 0 && now < e.Stop+e.Postroll+int64(c.settleMargin) {
			keep = append(keep, e)
			continue
		}
		steps = append(steps, c.settleStep(cs, e))
	}
	cs.late = keep
	return cs.q.push(steps)
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

// applyLocked queues the persistence of transitions, in order, and returns
// the channel their result arrives on.
func (c *cells) applyLocked(cs *cellState, tr []ingest.Transition) <-chan error {
	var steps []step
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
			steps = append(steps, c.settleStep(cs, e))
			continue
		}
		steps = append(steps, func(context.Context) error {
			e.Updated = c.now().UnixNano()
			if err := c.store.PutEpisode(e); err != nil {
				return fmt.Errorf("store episode %s: %w", e.ID, err)
			}
			return nil
		})
	}
	return cs.q.push(steps)
}

// work runs the cell's persistence jobs in order until ctx is cancelled.
func (c *cells) work(ctx context.Context, cs *cellState) {
	for {
		for {
			j, ok := cs.q.pop()
			if !ok {
				break
			}
			var errs []error
			for _, s := range j.steps {
				if err := s(ctx); err != nil {
					c.log.Error("persist episode", "cell", cs.cfg.ID, "err", err)
					errs = append(errs, err)
				}
			}
			j.done <- errors.Join(errs...)
		}
		select {
		case <-ctx.Done():
			return
		case <-cs.q.wake:
		}
	}
}

// flush waits until every job queued so far on every cell has run.
func (c *cells) flush(ctx context.Context) error {
	var dones []<-chan error
	for _, id := range c.order {
		cs := c.byID[id]
		dones = append(dones, cs.q.push([]step{func(context.Context) error { return nil }}))
	}
	for _, d := range dones {
		if err := wait(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// settleStep builds the final quality report of a stopped episode, stores
// it closed (or interrupted) and hands it on.
func (c *cells) settleStep(cs *cellState, e episode.Episode) step {
	return func(ctx context.Context) error {
		if e.State == episode.Recording || e.State == "" {
			e.State = episode.Closed
		}
		c.pollDevices() // connection states up to now
		if err := c.finalReport(ctx, &cs.cfg, &e); err != nil {
			return fmt.Errorf("quality report of %s: %w", e.ID, err)
		}
		if c.timeSync != nil {
			e.TimeSync = c.timeSync()
		}
		e.Updated = c.now().UnixNano()
		if err := c.store.PutEpisode(e); err != nil {
			return fmt.Errorf("store episode %s: %w", e.ID, err)
		}
		c.countClosed(e)
		c.log.Info("episode closed", "cell", e.Cell, "episode", e.ID, "state", e.State, "quality", e.QualityStatus(),
			"duration", time.Duration(e.Stop-e.Start).Round(time.Millisecond), "streams", len(e.Quality))
		if c.settled != nil {
			c.settled(e)
		}
		return nil
	}
}

func (c *cells) countClosed(e episode.Episode) {
	c.episodes.WithLabelValues(e.Cell, string(e.State)).Inc()
	c.closed.WithLabelValues(e.Cell, e.QualityStatus()).Inc()
}

// finalReport sets e's quality report and verdict, with the thresholds of
// cell (nil: a cell no longer configured, judged with the defaults).
func (c *cells) finalReport(ctx context.Context, cell *config.Cell, e *episode.Episode) error {
	var cfg config.Cell
	if cell != nil {
		cfg = *cell
	} else {
		tmp := config.Config{Cells: []config.Cell{{}}}
		tmp.EnsureDefaults()
		cfg = tmp.Cells[0]
	}
	q, err := c.report(ctx, cfg.GapFactor, *e)
	if err != nil {
		return err
	}
	e.Quality = q
	v := ingest.Judge(*e, ingest.QualityOptions{
		MinCoverage:       cfg.Quality.MinCoverage,
		MaxAlignmentBound: cfg.Quality.MaxAlignmentBound,
		Required:          cfg.Quality.RequiredStreams,
	})
	e.Verdict = &v
	return nil
}

// connOf returns the connection whose outages silence device: the device
// itself, or the broker an MQTT device is on.
func (c *cells) connOf(device string) string {
	if d, ok := c.devs[device]; ok && d.Type == config.DeviceMQTT {
		return d.Broker
	}
	return device
}

// descriptorOf returns the stored descriptor of stream or, for a
// configured stream that never produced a sample, one made from the
// config.
func (c *cells) descriptorOf(stream string) (sample.Descriptor, error) {
	d, err := c.store.Descriptor(stream)
	if !errors.Is(err, storage.ErrNotFound) {
		return d, err
	}
	d = sample.Descriptor{Stream: stream, Kind: sample.KindTelemetry, Clock: sample.ClockArrival}
	if dev, ok := c.devs[c.streamDev[stream]]; ok {
		d.Device = dev.ID
		switch {
		case dev.Type != config.DeviceMQTT:
			d.Kind, d.Codec = sample.KindVideo, sample.CodecH264
		case dev.Format == "pointcloud":
			d.Kind = sample.KindPointCloud
		}
	}
	return d, nil
}

// report builds the quality report of every stream of e from the stored
// index (no payload is read), measured against e's window.
func (c *cells) report(ctx context.Context, gapFactor float64, e episode.Episode) ([]episode.StreamReport, error) {
	from, to := e.Window(0)
	now := c.now().UnixNano()
	var out []episode.StreamReport
	for _, stream := range e.Streams {
		d, err := c.descriptorOf(stream)
		if err != nil {
			return nil, err
		}
		o := ingest.ReportOptions{GapFactor: gapFactor, Clock: clockOptions, From: from, To: to,
			Offline: c.offline.intervals(c.connOf(d.Device), from, to, now)}
		if rate := c.devs[d.Device].Rate; rate > 0 {
			o.Period = int64(math.Round(1e9 / rate))
		}
		res, err := c.streamReport(ctx, e, d, o)
		if err != nil {
			return nil, err
		}
		if o.Period == 0 && res.ExpectedPeriodNs == 0 {
			// Too few samples in the window to learn the rate: learn it
			// from the samples just before the window.
			if o.PriorPeriod = c.priorPeriod(ctx, d, from); o.PriorPeriod > 0 {
				if res, err = c.streamReport(ctx, e, d, o); err != nil {
					return nil, err
				}
			}
		}
		out = append(out, res)
	}
	return out, nil
}

// priorWindow is how far before an episode's window priorPeriod looks.
const priorWindow = 10 * time.Second

// priorPeriod is the median interval of stream's samples in the
// priorWindow before from (0 if too few).
func (c *cells) priorPeriod(ctx context.Context, d sample.Descriptor, from int64) int64 {
	r, err := ingest.NewReport(d, ingest.ReportOptions{})
	if err != nil {
		return 0
	}
	for ie, err := range c.store.RangeIndex(d.Stream, from-int64(priorWindow), from-1) {
		if ctx.Err() != nil {
			return 0
		}
		if err == nil {
			r.AddSized(&ie.Sample, ie.Size)
		}
	}
	return r.Result().ExpectedPeriodNs
}

// streamReport builds one stream's report of e with o.
func (c *cells) streamReport(ctx context.Context, e episode.Episode, d sample.Descriptor, o ingest.ReportOptions) (episode.StreamReport, error) {
	from, to := o.From, o.To
	r, err := ingest.NewReport(d, o)
	if err != nil {
		return episode.StreamReport{}, err
	}
	var corrupt int
	for ie, err := range c.store.RangeIndex(d.Stream, from, to) {
		if ctx.Err() != nil {
			return episode.StreamReport{}, ctx.Err()
		}
		if err != nil {
			corrupt++
			continue
		}
		r.AddSized(&ie.Sample, ie.Size)
	}
	if corrupt > 0 {
		c.log.Warn("corrupt samples skipped in quality report", "episode", e.ID, "stream", d.Stream, "count", corrupt)
	}
	// The live estimator stamped these samples: its figures, and the
	// worst bound among the samples as stamped, are the ones that hold.
	// (After a restart the live history is gone and the report keeps
	// the figures re-derived from the stored samples.)
	var bound int64
	var haveBound bool
	if st := c.pipe.stream(d.Stream); st != nil && e.State != episode.Interrupted {
		st.mu.Lock()
		r.SetClock(st.proc.ClockReport(from, to))
		bound, haveBound = st.proc.BoundOver(from, to)
		st.mu.Unlock()
	}
	res := r.Result()
	if haveBound {
		res.AlignmentErrorBoundMs = max(res.AlignmentErrorBoundMs, float64(bound)/1e6)
	}
	return res, nil
}

// recover closes what a crash or restart left recording, before devices
// start: episodes that had not stopped become interrupted at their last
// durable sample; stopped ones in post-roll settle when due (run's worker
// stores them).
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
			var cfg *config.Cell
			if cs != nil {
				cfg = &cs.cfg
			}
			if err := c.finalReport(ctx, cfg, &ie); err != nil {
				return fmt.Errorf("quality report of %s: %w", e.ID, err)
			}
			if err := c.store.PutEpisode(ie); err != nil {
				return fmt.Errorf("store episode %s: %w", e.ID, err)
			}
			c.countClosed(ie)
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
	c.tick()
	return nil
}

// run starts every cell's worker, polls device connections and ticks
// every second until ctx is cancelled, then stops every recording episode
// (reason shutdown), settles it with what was stored (devices have stopped
// by then, so no more data can arrive), and waits for the workers to
// finish the queued work.
func (c *cells) run(ctx context.Context) error {
	wctx, stopWorkers := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, id := range c.order {
		cs := c.byID[id]
		wg.Go(func() { c.work(wctx, cs) })
	}
	defer func() {
		stopWorkers()
		wg.Wait()
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.pollDevices()
			c.tick()
		case <-ctx.Done():
			c.shutdown()
			return c.flush(context.Background())
		}
	}
}

// pollDevices records the devices' connection states for offline
// accounting; set by the daemon (nil: nothing to poll).
func (c *cells) pollDevices() {
	if c.sources != nil {
		c.offline.poll(c.now(), c.sources())
	}
}

// finish stops every recording episode now, waits for the longest
// post-roll to be captured, settles them and waits until they are stored.
func (c *cells) finish(ctx context.Context) error {
	var longest time.Duration
	var dones []<-chan error
	for _, id := range c.order {
		cs := c.byID[id]
		cs.mu.Lock()
		if _, ok := cs.sm.Recording(); ok {
			tr, err := cs.sm.Stop(c.now().UnixNano(), ingest.StopShutdown)
			dones = append(dones, c.applyLocked(cs, tr))
			if err != nil {
				cs.mu.Unlock()
				return err
			}
		}
		if len(cs.sm.Pending()) > 0 {
			longest = max(longest, cs.cfg.Postroll)
		}
		cs.mu.Unlock()
	}
	for _, d := range dones {
		if err := wait(ctx, d); err != nil {
			return err
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(longest + c.settleMargin):
	}
	c.pollDevices()
	c.tick()
	return c.flush(ctx)
}

func (c *cells) shutdown() {
	now := c.now().UnixNano()
	c.pollDevices()
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
		c.applyLocked(cs, tr)
		c.settleLateLocked(cs, 0)
		cs.mu.Unlock()
	}
}

// cellStatus is one cell's row in /v1/status.
type cellStatus struct {
	Cell      string           `json:"cell"`
	Recording *episode.Episode `json:"recording,omitempty"`
	// Streams lists at most statusMaxStreams stream ids, by name, of
	// StreamsTotal.
	Streams      []string `json:"streams"`
	StreamsTotal int      `json:"streams_total"`
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
		st.StreamsTotal = len(st.Streams)
		if len(st.Streams) > statusMaxStreams {
			st.Streams = st.Streams[:statusMaxStreams]
		}
		out = append(out, st)
	}
	return out
}
