package ingest

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
)

const t0 = synthEpoch

// seqIDs returns a deterministic id generator: e1, e2, ...
func seqIDs() func(int64) (string, error) {
	n := 0
	return func(int64) (string, error) {
		n++
		return fmt.Sprintf("e%d", n), nil
	}
}

func rel(t int64) time.Duration { return time.Duration(t - t0) }

// render prints transitions compactly, with times relative to t0.
func render(tr []Transition) string {
	var parts []string
	for _, x := range tr {
		e := x.Episode
		var s string
		switch x.Kind {
		case Started:
			s = fmt.Sprintf("started %s start=%v trig=%s", e.ID, rel(e.Start), e.Trigger)
			if e.Previous != "" {
				s += " prev=" + e.Previous
			}
		case Stopped:
			s = fmt.Sprintf("stopped %s stop=%v reason=%s", e.ID, rel(e.Stop), e.StopReason)
			if e.Next != "" {
				s += " next=" + e.Next
			}
		case Settled:
			from, to := e.Window(0)
			s = fmt.Sprintf("settled %s window=[%v,%v]", e.ID, rel(from), rel(to))
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// step is one scripted action at a time relative to t0:
//
//	start [k=v ...]   API start (task=, robot=, label.k=)
//	stop              API stop
//	shutdown          stop for shutdown
//	mqtt {json}       a trigger message from MQTT
//	sample            a sample arrives on the cell
//	tick              the periodic timer
//
// want is the rendered transitions, or "error: <substring>" followed by
// the transitions, if any, after " | ".
type step struct {
	at   time.Duration
	cmd  string
	want string
}

var errKinds = map[string]error{"recording": ErrRecording, "not-recording": ErrNotRecording, "bad-trigger": ErrBadTrigger}

func runScript(t *testing.T, o CellOptions, steps []step) *Cell {
	t.Helper()
	o.NewID = seqIDs()
	c, err := NewCell(o)
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range steps {
		now := t0 + int64(st.at)
		verb, arg, _ := strings.Cut(st.cmd, " ")
		var tr []Transition
		var err error
		switch verb {
		case "start":
			r := StartRequest{Labels: map[string]string{}}
			for _, kv := range strings.Fields(arg) {
				k, v, _ := strings.Cut(kv, "=")
				switch {
				case k == "task":
					r.Task = v
				case k == "robot":
					r.Robot = v
				case strings.HasPrefix(k, "label."):
					r.Labels[strings.TrimPrefix(k, "label.")] = v
				default:
					t.Fatalf("step %d: bad start arg %q", i, kv)
				}
			}
			tr, err = c.Start(now, r)
		case "stop":
			tr, err = c.Stop(now, StopAPI)
		case "shutdown":
			tr, err = c.Stop(now, StopShutdown)
		case "mqtt":
			var trig Trigger
			trig, err = ParseTrigger([]byte(arg))
			if err == nil {
				tr, err = c.Apply(now, trig)
			}
		case "sample":
			c.Observe(now)
		case "tick":
			tr = c.Tick(now)
		default:
			t.Fatalf("step %d: unknown command %q", i, st.cmd)
		}
		got := render(tr)
		if err != nil {
			kind := "?"
			for k, e := range errKinds {
				if errors.Is(err, e) {
					kind = k
				}
			}
			got = "error: " + kind
			if len(tr) > 0 {
				got += " | " + render(tr)
			}
		}
		if got != st.want {
			t.Fatalf("step %d at %v %q:\n got: %s\nwant: %s", i, st.at, st.cmd, got, st.want)
		}
	}
	return c
}

const s = time.Second

func TestCellScripts(t *testing.T) {
	tests := []struct {
		name  string
		opts  CellOptions
		steps []step
	}{
		{
			name: "start stop with preroll and postroll",
			opts: CellOptions{ID: "c1", Streams: []string{"c1/cam"}, Preroll: 5 * s, Postroll: 2 * s},
			steps: []step{
				{10 * s, "start task=pick", "started e1 start=10s trig=api"},
				{20 * s, "tick", ""},
				{30 * s, "stop", "stopped e1 stop=30s reason=api"},
				{31 * s, "tick", ""},
				{32 * s, "tick", "settled e1 window=[5s,32s]"},
				{33 * s, "tick", ""},
			},
		},
		{
			name: "second start is a conflict and changes nothing",
			opts: CellOptions{ID: "c1"},
			steps: []step{
				{1 * s, "start", "started e1 start=1s trig=api"},
				{2 * s, "start task=other", "error: recording"},
				{3 * s, `mqtt {"action":"start","task":"x"}`, "error: recording"},
				{4 * s, "stop", "stopped e1 stop=4s reason=api; settled e1 window=[1s,4s]"},
				{5 * s, "stop", "error: not-recording"},
				{6 * s, "start", "started e2 start=6s trig=api"},
			},
		},
		{
			name: "mqtt triggers versus the api",
			opts: CellOptions{ID: "c1", Postroll: 1 * s},
			steps: []step{
				{1 * s, `mqtt {"action":"start","task":"weld","operator":"ana","robot":"r1","labels":{"shift":"a"},"priority":true}`, "started e1 start=1s trig=mqtt"},
				{2 * s, "stop", "stopped e1 stop=2s reason=api"},
				{3 * s, "start", "settled e1 window=[1s,3s]; started e2 start=3s trig=api"},
				{4 * s, `mqtt {"action":"stop"}`, "stopped e2 stop=4s reason=mqtt"},
				{4 * s, `mqtt {"action":"stop"}`, "error: not-recording"},
				{5 * s, `mqtt {"action":"pause"}`, "error: bad-trigger"},
				{6 * s, "tick", "settled e2 window=[3s,5s]"},
			},
		},
		{
			name: "bad trigger messages change nothing",
			opts: CellOptions{ID: "c1"},
			steps: []step{
				{1 * s, `mqtt {"action":"start","tsak":"typo"}`, "error: bad-trigger"},
				{1 * s, `mqtt not json`, "error: bad-trigger"},
				{1 * s, `mqtt {"action":"start"} {"action":"stop"}`, "error: bad-trigger"},
				{1 * s, `mqtt {"action":"start","labels":{"":"x"}}`, "error: bad-trigger"},
				{1 * s, `mqtt {"task":"no action"}`, "error: bad-trigger"},
				{2 * s, "stop", "error: not-recording"},
				{3 * s, `mqtt {"action":"start"}`, "started e1 start=3s trig=mqtt"},
			},
		},
		{
			name: "max duration rolls over into linked episodes",
			opts: CellOptions{ID: "c1", Preroll: 3 * s, Postroll: 2 * s, MaxDuration: 60 * s},
			steps: []step{
				{0, "start task=long", "started e1 start=0s trig=api"},
				{59 * s, "tick", ""},
				{61 * s, "tick", "stopped e1 stop=1m0s reason=max_duration next=e2; started e2 start=1m0s trig=rollover prev=e1; settled e1 window=[-3s,1m0s]"},
				// A late tick still cuts at the exact boundaries.
				{190 * s, "tick", "stopped e2 stop=2m0s reason=max_duration next=e3; started e3 start=2m0s trig=rollover prev=e2; stopped e3 stop=3m0s reason=max_duration next=e4; started e4 start=3m0s trig=rollover prev=e3; settled e2 window=[1m0s,2m0s]; settled e3 window=[2m0s,3m0s]"},
				{200 * s, "stop", "stopped e4 stop=3m20s reason=api"},
				{202 * s, "tick", "settled e4 window=[3m0s,3m22s]"},
			},
		},
		{
			name: "idle timeout stops at the last sample",
			opts: CellOptions{ID: "c1", Postroll: 2 * s, IdleTimeout: 10 * s},
			steps: []step{
				{0, "start", "started e1 start=0s trig=api"},
				{1 * s, "sample", ""},
				{3 * s, "sample", ""},
				{12 * s, "tick", ""},
				{13 * s, "tick", "stopped e1 stop=3s reason=idle_timeout; settled e1 window=[0s,3s]"},
				{14 * s, "tick", ""},
			},
		},
		{
			name: "idle timeout counts from the start when no sample came",
			opts: CellOptions{ID: "c1", IdleTimeout: 10 * s},
			steps: []step{
				{0, "sample", ""},
				{5 * s, "start", "started e1 start=5s trig=api"},
				{14 * s, "tick", ""},
				// A start after the timeout but before any tick first stops
				// the stale episode.
				{20 * s, "start", "stopped e1 stop=5s reason=idle_timeout; settled e1 window=[5s,5s]; started e2 start=20s trig=api"},
			},
		},
		{
			name: "idle and rollover: whichever is due first",
			opts: CellOptions{ID: "c1", MaxDuration: 60 * s, IdleTimeout: 30 * s},
			steps: []step{
				{0, "start", "started e1 start=0s trig=api"},
				{50 * s, "sample", ""},
				{70 * s, "tick", "stopped e1 stop=1m0s reason=max_duration next=e2; started e2 start=1m0s trig=rollover prev=e1; settled e1 window=[0s,1m0s]"},
				{95 * s, "tick", "stopped e2 stop=1m0s reason=idle_timeout; settled e2 window=[1m0s,1m0s]"},
			},
		},
		{
			name: "shutdown",
			opts: CellOptions{ID: "c1", Postroll: 5 * s},
			steps: []step{
				{0, "start", "started e1 start=0s trig=api"},
				{10 * s, "shutdown", "stopped e1 stop=10s reason=shutdown"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { runScript(t, tc.opts, tc.steps) })
	}
}

func TestCellEpisodeMetadata(t *testing.T) {
	labels := map[string]string{"shift": "a"}
	c, err := NewCell(CellOptions{ID: "c1", Streams: []string{"c1/cam", "c1/joints"}, Preroll: time.Second, Postroll: 2 * time.Second, NewID: seqIDs()})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := c.Start(t0, StartRequest{Task: "pick", Operator: "ana", Robot: "r1", Labels: labels, Priority: true, Trigger: TriggerMQTT})
	if err != nil {
		t.Fatal(err)
	}
	labels["shift"] = "mutated" // the episode must not alias the caller's map
	e := tr[0].Episode
	want := episode.Episode{ID: "e1", Cell: "c1", Task: "pick", Operator: "ana", Robot: "r1", Labels: map[string]string{"shift": "a"},
		Priority: true, Trigger: "mqtt", Start: t0, Preroll: int64(time.Second), Postroll: int64(2 * time.Second),
		Streams: []string{"c1/cam", "c1/joints"}, State: episode.Recording, Created: t0, Updated: t0}
	if fmt.Sprintf("%+v", e) != fmt.Sprintf("%+v", want) {
		t.Fatalf("started episode\n got %+v\nwant %+v", e, want)
	}
	if cur, ok := c.Recording(); !ok || cur.Labels["shift"] != "a" {
		t.Fatalf("Recording() = %+v, %v", cur, ok)
	}
	tr, err = c.Stop(t0+int64(10*time.Second), StopAPI)
	if err != nil {
		t.Fatal(err)
	}
	if e := tr[0].Episode; e.State != episode.Closed || e.Stop != t0+int64(10*time.Second) || e.Updated != e.Stop || e.Task != "pick" {
		t.Fatalf("stopped episode %+v", e)
	}
	if from, to := tr[0].Episode.Window(0); from != t0-int64(time.Second) || to != t0+int64(12*time.Second) {
		t.Fatalf("window [%v,%v]", rel(from), rel(to))
	}
	if p := c.Pending(); len(p) != 1 || p[0].ID != "e1" {
		t.Fatalf("pending %+v", p)
	}
	if _, err := c.Stop(t0, "bogus"); err == nil {
		t.Fatal("stop with an invalid reason succeeded")
	}
}

// TestCellCrashBecomesInterrupted simulates a crash mid-episode: the cell
// state is lost, storage still holds the episode as recording, and on
// restart the wiring passes the last durable sample time.
func TestCellCrashBecomesInterrupted(t *testing.T) {
	o := CellOptions{ID: "c1", Preroll: 2 * time.Second, Postroll: 5 * time.Second, NewID: seqIDs()}
	c, _ := NewCell(o)
	tr, err := c.Start(t0, StartRequest{Task: "pick"})
	if err != nil {
		t.Fatal(err)
	}
	stored := tr[0].Episode // what storage holds
	lastDurable := t0 + int64(42*time.Second)
	// crash: c is gone. Restart:
	restart := t0 + int64(100*time.Second)
	e := Interrupt(stored, lastDurable, restart)
	if e.State != episode.Interrupted || e.StopReason != StopCrash || e.Stop != lastDurable || e.Postroll != 0 || e.Updated != restart {
		t.Fatalf("interrupted episode %+v", e)
	}
	if from, to := e.Window(restart); from != t0-int64(2*time.Second) || to != lastDurable {
		t.Fatalf("window [%v,%v], want [-2s,42s]", rel(from), rel(to))
	}
	if stored.State != episode.Recording {
		t.Fatal("Interrupt modified its argument")
	}
	// No durable sample at all: it ends where it started.
	if e := Interrupt(stored, 0, restart); e.Stop != stored.Start {
		t.Fatalf("no samples: stop %v", rel(e.Stop))
	}
	// The new cell is idle and can start at once; a finished episode can be
	// tracked until it settles.
	c2, _ := NewCell(o)
	if err := c2.Track(e); err != nil {
		t.Fatal(err)
	}
	if err := c2.Track(stored); err == nil {
		t.Fatal("tracking a recording episode succeeded")
	}
	tr, err = c2.Start(restart, StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := render(tr); got != "settled e1 window=[-2s,42s]; started e2 start=1m40s trig=api" {
		t.Fatalf("after restart: %s", got)
	}
}

func TestNewV7At(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	var ids []string
	for i := range 100 {
		id, err := NewV7At(t0 + int64(i)*int64(137*time.Microsecond))
		if err != nil {
			t.Fatal(err)
		}
		if !re.MatchString(id) {
			t.Fatalf("%q is not a UUIDv7", id)
		}
		ids = append(ids, id)
	}
	if !slices.IsSorted(ids) {
		t.Fatal("ids made at increasing times do not sort")
	}
	// The first 48 bits are the Unix milliseconds.
	want := fmt.Sprintf("%012x", uint64(t0/1e6))
	if got := strings.ReplaceAll(ids[0][:13], "-", ""); got != want {
		t.Fatalf("timestamp field %s, want %s", got, want)
	}
	if _, err := NewV7At(-1); err == nil {
		t.Fatal("negative time accepted")
	}
}
