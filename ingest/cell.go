package ingest

import (
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/episoded/episoded/episode"
)

// What started an episode (episode.Episode.Trigger).
const (
	TriggerAPI      = "api"
	TriggerMQTT     = "mqtt"
	TriggerRollover = "rollover"
)

// What ended an episode (episode.Episode.StopReason).
const (
	StopAPI         = "api"
	StopMQTT        = "mqtt"
	StopMaxDuration = "max_duration"
	StopIdleTimeout = "idle_timeout"
	StopShutdown    = "shutdown"
	StopCrash       = "crash"
)

// Errors from Cell. The API maps ErrRecording to 409 Conflict and
// ErrNotRecording to 409 as well (nothing to stop).
var (
	ErrRecording    = errors.New("ingest: an episode is already recording on this cell")
	ErrNotRecording = errors.New("ingest: no episode is recording on this cell")
)

// CellOptions configure a Cell. Durations are on the gateway clock.
type CellOptions struct {
	// ID is the cell id; required.
	ID string
	// Streams are the cell's stream ids, copied into every episode.
	Streams []string
	// Preroll and Postroll widen each episode's window to
	// [Start-Preroll, Stop+Postroll]. Pre-roll data comes from the stored
	// timeline, so it needs nothing here.
	Preroll  time.Duration
	Postroll time.Duration
	// MaxDuration rolls an episode over into a new, linked one; 0 = never.
	MaxDuration time.Duration
	// IdleTimeout stops an episode when no sample arrived on the cell for
	// this long; 0 = never. The episode ends at its last sample, with no
	// post-roll.
	IdleTimeout time.Duration
	// NewID makes episode ids; default NewV7At. Tests inject a
	// deterministic one.
	NewID func(now int64) (string, error)
}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
func (o *CellOptions) EnsureDefaults() {
	if o.NewID == nil {
		o.NewID = NewV7At
	}
}

// Validate reports every invalid field at once (joined with errors.Join;
// each problem starts with the config key, under cells, it is about).
func (o CellOptions) Validate() error {
	var errs []error
	if o.ID == "" {
		errs = append(errs, errors.New("id: is required"))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"preroll", o.Preroll}, {"postroll", o.Postroll}, {"max_duration", o.MaxDuration}, {"idle_timeout", o.IdleTimeout}} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative", d.name))
		}
	}
	if o.MaxDuration > 0 && o.MaxDuration < time.Second {
		errs = append(errs, errors.New("max_duration: must be at least 1s"))
	}
	return errors.Join(errs...)
}

// TransitionKind says what happened to an episode.
type TransitionKind string

// Transition kinds.
const (
	// Started: a new recording episode; persist it.
	Started TransitionKind = "started"
	// Stopped: the episode stopped recording (state closed); persist it.
	// Data for its post-roll may still be arriving.
	Stopped TransitionKind = "stopped"
	// Settled: now >= Stop+Postroll, so no more data can fall into the
	// window: build the final quality report, store it, and hand the
	// episode to export/upload.
	Settled TransitionKind = "settled"
)

// Transition is one change the daemon must act on, in order.
type Transition struct {
	Kind    TransitionKind
	Episode episode.Episode
}

// Cell is the episode state machine of one cell. At most one episode is
// recording at a time. Every method takes the current gateway time and
// returns the transitions to persist, in order; timers (rollover, idle
// timeout, settling) fire in Tick and also, first, in Start and Stop, so a
// late Tick never lets a stale episode block a new one. Not safe for
// concurrent use.
type Cell struct {
	o          CellOptions
	cur        *episode.Episode
	lastSample int64
	pending    []episode.Episode // stopped, waiting for their post-roll
}

// NewCell returns an idle cell.
func NewCell(o CellOptions) (*Cell, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("ingest: cell %q options: %w", o.ID, err)
	}
	o.Streams = slices.Clone(o.Streams)
	return &Cell{o: o}, nil
}

// ID returns the cell id.
func (c *Cell) ID() string { return c.o.ID }

// Recording returns the recording episode, if any.
func (c *Cell) Recording() (episode.Episode, bool) {
	if c.cur == nil {
		return episode.Episode{}, false
	}
	return cloneEpisode(*c.cur), true
}

// Pending returns the stopped episodes whose post-roll has not elapsed.
func (c *Cell) Pending() []episode.Episode {
	out := make([]episode.Episode, len(c.pending))
	for i, e := range c.pending {
		out[i] = cloneEpisode(e)
	}
	return out
}

// Observe notes that a sample arrived on the cell at gateway time t (its
// RecvT). It is cheap enough to call for every sample.
func (c *Cell) Observe(t int64) {
	if t > c.lastSample {
		c.lastSample = t
	}
}

// Start begins an episode at now. It fails with ErrRecording if one is
// recording (after timers due at now have fired). Transitions are returned
// even with an error (timers that fired) and must be acted on.
func (c *Cell) Start(now int64, r StartRequest) ([]Transition, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("start episode on cell %s: %w", c.o.ID, err)
	}
	tr := c.tick(now, nil)
	if c.cur != nil {
		return tr, fmt.Errorf("start episode on cell %s: %w (episode %s since %s)", c.o.ID, ErrRecording, c.cur.ID,
			time.Unix(0, c.cur.Start).UTC().Format(time.RFC3339))
	}
	id, err := c.o.NewID(now)
	if err != nil {
		return tr, fmt.Errorf("start episode on cell %s: new id: %w", c.o.ID, err)
	}
	trig := r.Trigger
	if trig == "" {
		trig = TriggerAPI
	}
	e := episode.Episode{
		ID:       id,
		Cell:     c.o.ID,
		Task:     r.Task,
		Operator: r.Operator,
		Robot:    r.Robot,
		Labels:   maps.Clone(r.Labels),
		Priority: r.Priority,
		Trigger:  trig,
		Start:    now,
		Preroll:  int64(c.o.Preroll),
		Postroll: int64(c.o.Postroll),
		Streams:  slices.Clone(c.o.Streams),
		State:    episode.Recording,
		Created:  now,
		Updated:  now,
	}
	c.cur = &e
	return append(tr, Transition{Started, cloneEpisode(e)}), nil
}

// Stop ends the recording episode at now with the given reason (StopAPI,
// StopMQTT or StopShutdown). It fails with ErrNotRecording if none is
// recording (after timers due at now have fired). As with Start,
// transitions returned with an error must still be acted on.
func (c *Cell) Stop(now int64, reason string) ([]Transition, error) {
	switch reason {
	case StopAPI, StopMQTT, StopShutdown:
	default:
		return nil, fmt.Errorf("stop episode on cell %s: invalid reason %q", c.o.ID, reason)
	}
	tr := c.tick(now, nil)
	if c.cur == nil {
		return tr, fmt.Errorf("stop episode on cell %s: %w", c.o.ID, ErrNotRecording)
	}
	tr = c.stop(now, now, reason, tr)
	return c.settle(now, tr), nil
}

// Apply acts on a parsed MQTT trigger message.
func (c *Cell) Apply(now int64, t Trigger) ([]Transition, error) {
	switch t.Action {
	case ActionStart:
		return c.Start(now, t.Request())
	case ActionStop:
		return c.Stop(now, StopMQTT)
	}
	return nil, fmt.Errorf("%w: unknown action", ErrBadTrigger)
}

// Tick fires the timers due at now: max-duration rollover, idle timeout and
// settling. The daemon calls it periodically (every second or so); a late
// call still cuts episodes at the exact boundaries.
func (c *Cell) Tick(now int64) []Transition {
	return c.tick(now, nil)
}

func (c *Cell) tick(now int64, tr []Transition) []Transition {
	for c.cur != nil {
		roll := int64(-1)
		if c.o.MaxDuration > 0 {
			roll = c.cur.Start + int64(c.o.MaxDuration)
		}
		idle := int64(-1)
		last := max(c.lastSample, c.cur.Start)
		if c.o.IdleTimeout > 0 {
			idle = last + int64(c.o.IdleTimeout)
		}
		switch {
		case idle >= 0 && idle <= now && (roll < 0 || idle <= roll):
			// The episode ends at its last data, with no post-roll: the
			// cell has been silent since, so a post-roll would only add a
			// gap to every stream and make the episode degraded.
			c.cur.Postroll = 0
			tr = c.stop(last, now, StopIdleTimeout, tr)
		case roll >= 0 && roll <= now:
			tr = c.rollover(roll, now, tr)
		default:
			return c.settle(now, tr)
		}
	}
	return c.settle(now, tr)
}

// stop closes the recording episode at stop (the episode's time), recording
// the change at now.
func (c *Cell) stop(stop, now int64, reason string, tr []Transition) []Transition {
	e := *c.cur
	c.cur = nil
	e.Stop = stop
	e.StopReason = reason
	e.State = episode.Closed
	e.Updated = now
	c.pending = append(c.pending, e)
	return append(tr, Transition{Stopped, cloneEpisode(e)})
}

// rollover ends the recording episode at boundary b and continues it as a
// new linked episode starting at b. The windows touch without overlapping
// data: the old one has no post-roll and the new one no pre-roll.
func (c *Cell) rollover(b, now int64, tr []Transition) []Transition {
	old := *c.cur
	id, err := c.o.NewID(b)
	if err != nil {
		// Without an id there is no continuation: stop instead.
		return c.stop(b, now, StopMaxDuration, tr)
	}
	next := old
	next.ID = id
	next.Labels = maps.Clone(old.Labels)
	next.Streams = slices.Clone(old.Streams)
	next.Trigger = TriggerRollover
	next.Start = b
	next.Preroll = 0
	next.Previous = old.ID
	next.Created, next.Updated = now, now

	old.Next = id
	old.Postroll = 0
	c.cur = &old
	tr = c.stop(b, now, StopMaxDuration, tr)
	c.cur = &next
	return append(tr, Transition{Started, cloneEpisode(next)})
}

// settle emits Settled for stopped episodes whose window is complete.
func (c *Cell) settle(now int64, tr []Transition) []Transition {
	kept := c.pending[:0]
	for _, e := range c.pending {
		if now >= e.Stop+e.Postroll {
			tr = append(tr, Transition{Settled, cloneEpisode(e)})
			continue
		}
		kept = append(kept, e)
	}
	c.pending = kept
	return tr
}

// Track adds a stopped episode whose post-roll may not have elapsed (found
// in storage after a restart) so that a later Tick settles it.
func (c *Cell) Track(e episode.Episode) error {
	if e.Cell != c.o.ID || !e.State.Finished() {
		return fmt.Errorf("track episode %s on cell %s: want a finished episode of this cell", e.ID, c.o.ID)
	}
	c.pending = append(c.pending, cloneEpisode(e))
	return nil
}

// Interrupt closes an episode found recording after a crash or restart. It
// ends at lastDurable, the time of its last durable sample across its
// streams (0 if none, then it ends at its start), with state interrupted,
// stop reason crash and no post-roll: data arriving after the restart does
// not belong to it. now is the record's update time. The episode is settled
// at once.
func Interrupt(e episode.Episode, lastDurable, now int64) episode.Episode {
	e = cloneEpisode(e)
	e.Stop = max(e.Start, lastDurable)
	e.Postroll = 0
	e.State = episode.Interrupted
	e.StopReason = StopCrash
	e.Updated = now
	return e
}

func cloneEpisode(e episode.Episode) episode.Episode {
	e.Labels = maps.Clone(e.Labels)
	e.Streams = slices.Clone(e.Streams)
	e.Quality = slices.Clone(e.Quality)
	return e
}

// NewV7At returns a UUIDv7 string for gateway time now (ns): 48 bits of
// Unix milliseconds, then the sub-millisecond fraction in the 12 rand_a
// bits (RFC 9562 method 3, so ids made in one process sort by time), then
// 62 random bits. It does not read the clock, unlike uuid.NewV7.
func NewV7At(now int64) (string, error) {
	if now < 0 {
		return "", fmt.Errorf("ingest: uuid v7 for negative time %d", now)
	}
	var u uuid.UUID
	if _, err := rand.Read(u[8:]); err != nil {
		return "", fmt.Errorf("ingest: uuid v7 random bits: %w", err)
	}
	ms := uint64(now / 1e6)
	for i := 5; i >= 0; i-- {
		u[i] = byte(ms)
		ms >>= 8
	}
	frac := uint64(now%1e6) * 4096 / 1e6
	u[6] = 0x70 | byte(frac>>8)
	u[7] = byte(frac)
	u[8] = u[8]&0x3f | 0x80
	return u.String(), nil
}
