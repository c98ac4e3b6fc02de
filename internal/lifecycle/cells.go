package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/storage"
)

// Cells runs the episode state machine of every cell (ingest.Cell)
// against the gateway clock and persists what it decides. See the package
// doc for the states, the locks and what a crash loses.
type Cells struct {
	store *storage.Store
	sink  *Sink
	log   *slog.Logger
	// settled, timeSync and sources: Options.Settled, TimeSync, Sources.
	settled  func(episode.Episode)
	timeSync func() *episode.TimeSync
	sources  func() []devices.Status

	byID  map[string]*cellState
	order []string
	// settleMargin delays the final report after the window ends, so that
	// samples still in flight (device latency, the last commit) are in it.
	settleMargin time.Duration

	// devs are the configured devices by id, streamDev the device of each
	// fixed stream id; offline remembers connection outages.
	devs      map[string]Device
	streamDev map[string]string
	offline   *offlineLog

	triggers *prometheus.CounterVec
	episodes *prometheus.CounterVec
	closed   *prometheus.CounterVec
}

type cellState struct {
	cfg CellOptions
	// mu guards sm, streams and late. It is never held across I/O.
	mu sync.Mutex
	sm *ingest.Cell
	// streams are the cell's known streams: fixed ones from the devices,
	// plus streams (templated MQTT ones) as they appear.
	streams map[string]bool
	// late holds settled episodes waiting out settleMargin.
	late []episode.Episode
	q    jobQueue
}

// ErrUnknownCell is returned for a cell id not in the options.
var ErrUnknownCell = errors.New("lifecycle: unknown cell")

// New returns the cells of o, persisting into store, and connects them to
// sink (which then notes each sample's cell for the idle timeout and each
// new stream of a cell). Call it before any device writes into sink. It
// starts nothing: Recover, then Run.
func New(store *storage.Store, sink *Sink, o Options) (*Cells, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	c := &Cells{
		store: store, sink: sink, log: o.Logger.With("component", "lifecycle.cells"),
		settled: o.Settled, timeSync: o.TimeSync, sources: o.Sources,
		settleMargin: time.Second + o.SyncInterval,
		byID:         map[string]*cellState{},
		devs:         map[string]Device{},
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
	if o.Registerer != nil {
		o.Registerer.MustRegister(c.triggers, c.episodes, c.closed)
	}
	for _, d := range o.Devices {
		c.devs[d.ID] = d
		if d.Stream != "" {
			c.streamDev[d.Stream] = d.ID
		}
	}
	for _, cc := range o.Cells {
		sm, err := ingest.NewCell(cc.machine())
		if err != nil {
			return nil, fmt.Errorf("cell %s: %w", cc.ID, err)
		}
		cs := &cellState{cfg: cc, sm: sm, streams: map[string]bool{}}
		cs.q.wake = make(chan struct{}, 1)
		for _, d := range o.Devices {
			if d.Cell == cc.ID && d.Stream != "" {
				cs.streams[d.Stream] = true
			}
		}
		c.byID[cc.ID] = cs
		c.order = append(c.order, cc.ID)
		// Both verdicts exist from the start, so that a rate or an alert
		// on degraded episodes has a series to work on.
		c.closed.WithLabelValues(cc.ID, episode.QualityOK)
		c.closed.WithLabelValues(cc.ID, episode.QualityDegraded)
	}
	sink.cells = c
	return c, nil
}

// cellOf returns the cell of a device ("" if none).
func (c *Cells) cellOf(device string) string {
	return c.devs[device].Cell
}

// AddStream records that stream belongs to cell (streams from data are
// only known once they appear, or from storage after a restart).
func (c *Cells) AddStream(cell, stream string) {
	cs := c.byID[cell]
	if cs == nil {
		return
	}
	cs.mu.Lock()
	cs.streams[stream] = true
	cs.mu.Unlock()
}

// observe notes a sample's arrival on a cell, for the idle timeout.
func (c *Cells) observe(cell string, recvT int64) {
	if cs := c.byID[cell]; cs != nil {
		cs.mu.Lock()
		cs.sm.Observe(recvT)
		cs.mu.Unlock()
	}
}

// Start begins an episode on a cell and waits until it is stored. The
// error wraps ErrUnknownCell, ingest.ErrRecording, or what storage said.
func (c *Cells) Start(ctx context.Context, cell string, r ingest.StartRequest) (episode.Episode, error) {
	e, done, err := c.startAsync(cell, r)
	if errors.Is(err, ErrUnknownCell) {
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
func (c *Cells) startAsync(cell string, r ingest.StartRequest) (episode.Episode, <-chan error, error) {
	cs := c.byID[cell]
	if cs == nil {
		return episode.Episode{}, nil, fmt.Errorf("%w %q", ErrUnknownCell, cell)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	// Timers due now fire before the start; their transitions stand even
	// when the start itself fails.
	tr, err := cs.sm.Start(time.Now().UnixNano(), r)
	done := c.applyLocked(cs, tr)
	if err != nil {
		return episode.Episode{}, nil, err
	}
	e, _ := cs.sm.Recording()
	return cs.withStreamsLocked(e), done, nil
}

// Stop ends the recording episode with the given id (or the cell's, when
// id is empty) and waits until that is stored. The episode stays recording
// (Stop set) until its post-roll has been captured and it settles.
func (c *Cells) Stop(ctx context.Context, cell, id, reason string) (episode.Episode, error) {
	e, done, err := c.stopAsync(cell, id, reason)
	if errors.Is(err, ErrUnknownCell) {
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

func (c *Cells) stopAsync(cell, id, reason string) (episode.Episode, <-chan error, error) {
	cs := c.byID[cell]
	if cs == nil {
		return episode.Episode{}, nil, fmt.Errorf("%w %q", ErrUnknownCell, cell)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	rec, ok := cs.sm.Recording()
	if !ok || (id != "" && rec.ID != id) {
		return episode.Episode{}, nil, ingest.ErrNotRecording
	}
	tr, err := cs.sm.Stop(time.Now().UnixNano(), reason)
	done := c.applyLocked(cs, tr)
	if err != nil {
		return episode.Episode{}, nil, err
	}
	for _, t := range tr {
		if t.Episode.ID == rec.ID {
			return cs.withStreamsLocked(t.Episode), done, nil
		}
	}
	return rec, done, nil
}

// Trigger handles a message from a cell's MQTT trigger topic. It runs on
// the broker's delivery goroutine, so it does not wait for storage: a
// failure to store is logged by the cell's worker.
func (c *Cells) Trigger(cell string, payload []byte) {
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

func (c *Cells) countTrigger(cell, source string, err error) {
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
func (c *Cells) tick() {
	now := time.Now().UnixNano()
	for _, id := range c.order {
		cs := c.byID[id]
		cs.mu.Lock()
		c.applyLocked(cs, cs.sm.Tick(now))
		c.settleLateLocked(cs, now)
		cs.mu.Unlock()
	}
}

// settleLateLocked queues the settling of the episodes whose margin has
// passed by now (every one, if now is 0). The caller holds cs.mu.
func (c *Cells) settleLateLocked(cs *cellState, now int64) <-chan error {
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

// withStreamsLocked returns e with Streams set to every stream the cell
// has known. The caller holds cs.mu.
func (cs *cellState) withStreamsLocked(e episode.Episode) episode.Episode {
	for s := range cs.streams {
		if !slices.Contains(e.Streams, s) {
			e.Streams = append(e.Streams, s)
		}
	}
	slices.Sort(e.Streams)
	return e
}

// applyLocked queues the persistence of transitions, in order, and returns
// the channel their result arrives on. The caller holds cs.mu.
func (c *Cells) applyLocked(cs *cellState, tr []ingest.Transition) <-chan error {
	var steps []step
	for _, t := range tr {
		e := cs.withStreamsLocked(t.Episode)
		msg := "episode started"
		switch t.Kind {
		case ingest.Stopped:
			// Still capturing post-roll: stays recording until settled.
			e.State = episode.Recording
			msg = "episode stopped; capturing post-roll"
		case ingest.Settled:
			if time.Now().UnixNano() < e.Stop+e.Postroll+int64(c.settleMargin) {
				cs.late = append(cs.late, e)
				continue
			}
			steps = append(steps, c.settleStep(cs, e))
			continue
		}
		steps = append(steps, func(context.Context) error {
			e.Updated = time.Now().UnixNano()
			if err := c.store.PutEpisode(e); err != nil {
				return fmt.Errorf("store episode %s: %w", e.ID, err)
			}
			c.log.Info(msg, "cell", e.Cell, "episode", e.ID, "trigger", e.Trigger, "task", e.Task, "reason", e.StopReason)
			return nil
		})
	}
	return cs.q.push(steps)
}

// Run starts every cell's worker, polls device connections and ticks
// every second until ctx is cancelled, then stops every recording episode
// (reason shutdown), settles it with what was stored (devices have stopped
// by then, so no more data can arrive), and waits for the workers to
// finish the queued work.
func (c *Cells) Run(ctx context.Context) error {
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
// accounting (nothing without Options.Sources).
func (c *Cells) pollDevices() {
	if c.sources != nil {
		c.offline.poll(time.Now(), c.sources())
	}
}

// Finish stops every recording episode now, waits for the longest
// post-roll to be captured, settles them and waits until they are stored.
// Run must be running.
func (c *Cells) Finish(ctx context.Context) error {
	var longest time.Duration
	var dones []<-chan error
	for _, id := range c.order {
		cs := c.byID[id]
		cs.mu.Lock()
		if _, ok := cs.sm.Recording(); ok {
			tr, err := cs.sm.Stop(time.Now().UnixNano(), ingest.StopShutdown)
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

func (c *Cells) shutdown() {
	now := time.Now().UnixNano()
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

// CellStatus is one cell's row in /v1/status.
type CellStatus struct {
	Cell      string           `json:"cell"`
	Recording *episode.Episode `json:"recording,omitempty"`
	// Streams lists at most StatusMaxStreams stream ids, by name, of
	// StreamsTotal.
	Streams      []string `json:"streams"`
	StreamsTotal int      `json:"streams_total"`
}

// Status returns every cell's recording episode and streams.
func (c *Cells) Status() []CellStatus {
	var out []CellStatus
	for _, id := range c.order {
		cs := c.byID[id]
		cs.mu.Lock()
		st := CellStatus{Cell: id}
		if e, ok := cs.sm.Recording(); ok {
			e = cs.withStreamsLocked(e)
			st.Recording = &e
		}
		for s := range cs.streams {
			st.Streams = append(st.Streams, s)
		}
		cs.mu.Unlock()
		slices.Sort(st.Streams)
		st.StreamsTotal = len(st.Streams)
		if len(st.Streams) > StatusMaxStreams {
			st.Streams = st.Streams[:StatusMaxStreams]
		}
		out = append(out, st)
	}
	return out
}
