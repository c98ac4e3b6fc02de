package lifecycle

import (
	"context"
	"errors"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
)

// TestStartStopPostroll: an API start stores the episode recording; a stop
// keeps it recording (Stop set) while its post-roll is captured; once the
// post-roll and the settle margin have passed it is stored closed, with a
// report of its whole window [start-preroll, stop+postroll] built from the
// stored index, and handed on once.
func TestStartStopPostroll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const pre, post = time.Second, 2 * time.Second
		r := newRig(t, t.TempDir(), rigOptions{cells: []CellOptions{{ID: "c1", Preroll: pre, Postroll: post}}, cams: 2})
		r.run()
		ctx := context.Background()
		got := r.feed(time.Second, 100, nil) // pre-roll: before the start
		e, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "pick"})
		if err != nil {
			t.Fatal(err)
		}
		if s := r.episode(e.ID); s.State != episode.Recording || s.Stop != 0 || s.Task != "pick" || !slices.Equal(s.Streams, r.streams["c1"]) {
			t.Fatalf("stored after start: %s stop %d task %q streams %v", s.State, s.Stop, s.Task, s.Streams)
		}
		if _, err := r.cells.Start(ctx, "c1", ingest.StartRequest{}); !errors.Is(err, ingest.ErrRecording) {
			t.Fatalf("a second start on a recording cell: %v", err)
		}
		if _, err := r.cells.Start(ctx, "c9", ingest.StartRequest{}); !errors.Is(err, ErrUnknownCell) {
			t.Fatalf("start on an unknown cell: %v", err)
		}
		got.add(r.feed(3*time.Second, 100, nil))
		if _, err := r.cells.Stop(ctx, "c1", "0193a1b2-0000-7000-8000-000000000000", ingest.StopAPI); !errors.Is(err, ingest.ErrNotRecording) {
			t.Fatalf("stop of another episode id: %v", err)
		}
		stopped, err := r.cells.Stop(ctx, "c1", e.ID, ingest.StopAPI)
		if err != nil {
			t.Fatal(err)
		}
		if s := r.episode(e.ID); s.State != episode.Recording || s.Stop != stopped.Stop || s.StopReason != ingest.StopAPI {
			t.Fatalf("stored after stop: %s stop %d (want %d) reason %q", s.State, s.Stop, stopped.Stop, s.StopReason)
		}
		got.add(r.feed(post, 100, nil)) // post-roll: after the stop
		// Just before the settle is due it is still capturing.
		time.Sleep(time.Until(time.Unix(0, stopped.Stop+int64(post)+int64(r.cells.settleMargin))) - time.Millisecond)
		synctest.Wait()
		if s := r.episode(e.ID); s.State != episode.Recording || len(r.settledIDs()) != 0 {
			t.Fatalf("settled before its post-roll and margin passed: %s, handed on %v", s.State, r.settledIDs())
		}
		r.settleWait(stopped.Stop, post) // the next tick settles it
		c := r.episode(e.ID)
		if c.State != episode.Closed || c.Verdict == nil || c.Verdict.Status != episode.QualityOK {
			t.Fatalf("after settling: %s, verdict %+v", c.State, c.Verdict)
		}
		from, to := c.Window(0)
		if from != e.Start-int64(pre) || to != stopped.Stop+int64(post) {
			t.Fatalf("window [%d, %d], want [start-preroll, stop+postroll]", from, to)
		}
		for _, s := range r.streams["c1"] {
			q := report(t, c, s)
			if want := got.in(s, from, to); q.Samples != want || q.Gaps != 0 || q.Coverage < 0.99 || want < 170 {
				t.Errorf("%s: %d samples (want %d), %d gaps, coverage %v", s, q.Samples, want, q.Gaps, q.Coverage)
			}
		}
		if ids := r.settledIDs(); !slices.Equal(ids, []string{e.ID}) {
			t.Fatalf("handed on %v, want %s once", ids, e.ID)
		}
		if n := r.count(r.cells.closed, "c1", episode.QualityOK); n != 1 {
			t.Fatalf("closed ok counter %v", n)
		}
	})
}

// TestRollover: an episode longer than max_duration is cut at exact
// boundaries into linked episodes whose windows touch; every sample is in
// one of them, and the last one is still recording.
func TestRollover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const maxDur = 10 * time.Second
		r := newRig(t, t.TempDir(), rigOptions{cells: []CellOptions{{ID: "c1", MaxDuration: maxDur, Postroll: time.Second}}})
		r.run()
		e1, err := r.cells.Start(context.Background(), "c1", ingest.StartRequest{Task: "long"})
		if err != nil {
			t.Fatal(err)
		}
		got := r.feed(25*time.Second, 10, nil)
		time.Sleep(3 * time.Second)
		synctest.Wait()

		st := r.cells.Status()
		if len(st) != 1 || st[0].Recording == nil {
			t.Fatalf("status %+v: want the third episode recording", st)
		}
		ids := []string{e1.ID}
		var eps []episode.Episode
		for i := range 2 {
			e := r.episode(ids[i])
			eps = append(eps, e)
			if e.State != episode.Closed || e.StopReason != ingest.StopMaxDuration || e.Stop != e1.Start+int64(i+1)*int64(maxDur) ||
				e.Postroll != 0 || e.Next == "" || e.Task != "long" {
				t.Fatalf("episode %d: %s reason %q stop %+d postroll %d next %q", i, e.State, e.StopReason, e.Stop-e1.Start, e.Postroll, e.Next)
			}
			ids = append(ids, e.Next)
		}
		e3 := *st[0].Recording
		if e3.ID != ids[2] || e3.Previous != ids[1] || e3.Trigger != ingest.TriggerRollover || e3.Start != eps[1].Stop || e3.Preroll != 0 {
			t.Fatalf("recording episode %+v, want the continuation of %s", e3, ids[1])
		}
		if eps[1].Previous != e1.ID || eps[1].Start != eps[0].Stop || eps[1].Preroll != 0 || eps[1].Trigger != ingest.TriggerRollover {
			t.Fatalf("second episode %+v", eps[1])
		}
		s := r.streams["c1"][0]
		var sum uint64
		for _, e := range eps {
			from, to := e.Window(0)
			q := report(t, e, s)
			if want := got.in(s, from, to); q.Samples != want || q.Gaps != 0 || want < 299 {
				t.Errorf("%s: %d samples, want %d; %d gaps", e.ID, q.Samples, want, q.Gaps)
			}
			sum += q.Samples
		}
		if rest := got.in(s, e3.Start+1, time.Now().UnixNano()); sum+rest != uint64(len(got[s])) {
			t.Errorf("%d + %d samples in the episodes, %d written", sum, rest, len(got[s]))
		}
		if h := r.settledIDs(); !slices.Equal(h, ids[:2]) {
			t.Fatalf("handed on %v, want %v", h, ids[:2])
		}
	})
}

// TestIdleTimeout: when no sample arrives on the cell for idle_timeout the
// episode stops at its last sample (with no post-roll) and settles;
// the cell then takes a new start.
func TestIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle, post = 5 * time.Second, time.Second
		r := newRig(t, t.TempDir(), rigOptions{cells: []CellOptions{{ID: "c1", IdleTimeout: idle, Postroll: post}}})
		r.run()
		ctx := context.Background()
		e, err := r.cells.Start(ctx, "c1", ingest.StartRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got := r.feed(3*time.Second, 10, nil)
		s := r.streams["c1"][0]
		last := got[s][len(got[s])-1]
		// Silent from now on.
		time.Sleep(idle - 500*time.Millisecond)
		synctest.Wait()
		if st := r.cells.Status(); st[0].Recording == nil {
			t.Fatal("stopped before the idle timeout")
		}
		time.Sleep(idle)
		synctest.Wait()
		c := r.episode(e.ID)
		if c.State != episode.Closed || c.StopReason != ingest.StopIdleTimeout || c.Stop != last {
			t.Fatalf("after idling: %s reason %q stop %+d (want the last sample, %+d)", c.State, c.StopReason, c.Stop-e.Start, last-e.Start)
		}
		// No post-roll after an idle stop: the cell has been silent since
		// the last sample, so a post-roll would only be a gap in every
		// stream, and every idle-stopped episode degraded.
		q := report(t, c, s)
		if _, to := c.Window(0); c.Postroll != 0 || to != last {
			t.Errorf("window ends %+d after the last sample (post-roll %v), want at it", to-last, time.Duration(c.Postroll))
		}
		if q.Samples != uint64(len(got[s])) || len(q.GapList) != 0 {
			t.Fatalf("report: %d samples of %d, gaps %+v (want none)", q.Samples, len(got[s]), q.GapList)
		}
		if c.QualityStatus() != episode.QualityOK {
			t.Errorf("verdict %+v, want ok: the recording itself was whole", c.Verdict)
		}
		if _, err := r.cells.Start(ctx, "c1", ingest.StartRequest{}); err != nil {
			t.Fatalf("start after the idle stop: %v", err)
		}
	})
}

// TestRecoverAfterCrash: a crash leaves one episode recording, one
// stopped in post-roll and one closed in the store. Reopening the real
// store, Recover closes the first as interrupted at its last durable
// sample (with a report, stored before any device runs), the second
// settles normally once its post-roll has passed, and the third is left
// alone; each is recovered exactly once, and a second restart changes
// nothing.
func TestRecoverAfterCrash(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		const post2 = 30 * time.Second
		o := rigOptions{cells: []CellOptions{{ID: "c1"}, {ID: "c2", Postroll: post2}}}
		r := newRig(t, dir, o)
		r.run()
		ctx := context.Background()
		c, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "closed"})
		if err != nil {
			t.Fatal(err)
		}
		r.feed(time.Second, 10, nil, "c1")
		cs, err := r.cells.Stop(ctx, "c1", c.ID, ingest.StopAPI)
		if err != nil {
			t.Fatal(err)
		}
		r.settleWait(cs.Stop, 0)
		closedBefore := r.episode(c.ID)
		if closedBefore.State != episode.Closed {
			t.Fatalf("first episode %s", closedBefore.State)
		}

		a, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "open"})
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.cells.Start(ctx, "c2", ingest.StartRequest{Task: "post-roll"})
		if err != nil {
			t.Fatal(err)
		}
		got := r.feed(3*time.Second, 10, nil, "c1", "c2")
		b, err = r.cells.Stop(ctx, "c2", b.ID, ingest.StopAPI)
		if err != nil {
			t.Fatal(err)
		}
		got.add(r.feed(time.Second, 10, nil, "c1", "c2"))
		r.crash()
		sa, sb := r.streams["c1"][0], r.streams["c2"][0]
		lastA := got[sa][len(got[sa])-1]

		time.Sleep(10 * time.Second) // down for a while (less than the post-roll)
		r2 := newRig(t, dir, o)
		r2.run() // Recover, then Run
		ia := r2.episode(a.ID)
		if ia.State != episode.Interrupted || ia.StopReason != ingest.StopCrash || ia.Stop != lastA || ia.Verdict == nil {
			t.Fatalf("open episode after recovery: %s reason %q stop %+d (want %+d), verdict %v", ia.State, ia.StopReason, ia.Stop-a.Start, lastA-a.Start, ia.Verdict)
		}
		if q := report(t, ia, sa); q.Samples != got.in(sa, a.Start, lastA) || q.Samples < 119 {
			t.Fatalf("interrupted report: %d samples, want %d", q.Samples, got.in(sa, a.Start, lastA))
		}
		if n := r2.count(r2.cells.episodes, "c1", string(episode.Interrupted)); n != 1 {
			t.Fatalf("interrupted counter %v", n)
		}
		if sbs := r2.episode(b.ID); sbs.State != episode.Recording || sbs.Stop != b.Stop {
			t.Fatalf("stopped episode settled before its post-roll passed: %s", sbs.State)
		}
		if r2.episode(c.ID).Updated != closedBefore.Updated {
			t.Fatal("a closed episode was rewritten by recovery")
		}
		r2.settleWait(b.Stop, post2)
		cb := r2.episode(b.ID)
		if cb.State != episode.Closed || cb.StopReason != ingest.StopAPI || cb.Stop != b.Stop {
			t.Fatalf("post-roll episode after recovery: %s reason %q", cb.State, cb.StopReason)
		}
		from, to := cb.Window(0)
		if q := report(t, cb, sb); q.Samples != got.in(sb, from, to) || q.Samples < 119 {
			t.Fatalf("post-roll report: %d samples, want %d", q.Samples, got.in(sb, from, to))
		}
		if ids := r2.settledIDs(); !slices.Equal(ids, []string{a.ID, b.ID}) {
			t.Fatalf("handed on %v, want %s then %s, once each", ids, a.ID, b.ID)
		}

		// Another restart: nothing left to recover.
		r2.stopCells()
		r2.stopStore()
		r3 := newRig(t, dir, o)
		r3.run()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if ids := r3.settledIDs(); len(ids) != 0 {
			t.Fatalf("second restart recovered %v again", ids)
		}
		for _, e := range []episode.Episode{ia, cb} {
			if got := r3.episode(e.ID); got.State != e.State || got.Stop != e.Stop {
				t.Fatalf("%s changed on the second restart: %s", e.ID, got.State)
			}
		}
		if st := r3.cells.Status(); st[0].Recording != nil || st[1].Recording != nil {
			t.Fatalf("recording after recovery: %+v", st)
		}
	})
}

// TestEpisodeOutagesThroughCells: a camera that goes silent at the start,
// in the middle, at the end and for the whole of an episode, and whose
// connection is down meanwhile, turns the episode degraded with the right
// reason and the gap accounted to device_offline. (Real devices: see
// internal/e2e TestOutagesRealCamera.)
func TestEpisodeOutagesThroughCells(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, t.TempDir(), rigOptions{})
		r.run()
		ctx := context.Background()
		type tc struct {
			name       string
			silentFrom time.Duration // relative to the episode start
			silentTo   time.Duration
			reason     string
		}
		for _, c := range []tc{
			{"start", 0, 2 * time.Second, episode.ReasonLowCoverage},
			{"middle", 3 * time.Second, 5 * time.Second, episode.ReasonLowCoverage},
			{"end", 8 * time.Second, 10 * time.Second, episode.ReasonLowCoverage},
			{"whole", 0, 10 * time.Second, episode.ReasonMissingStream},
		} {
			e, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: c.name})
			if err != nil {
				t.Fatal(err)
			}
			off := ingest.Interval{From: e.Start + int64(c.silentFrom), To: e.Start + int64(c.silentTo)}
			r.cells.offline.mu.Lock()
			r.cells.offline.mu.conns["c1-cam1"] = &connLog{past: []ingest.Interval{off}}
			r.cells.offline.mu.Unlock()
			got := r.feed(10*time.Second, 1, func(tk int64) bool { return tk >= off.From && tk < off.To })
			stopped, err := r.cells.Stop(ctx, "c1", e.ID, ingest.StopAPI)
			if err != nil {
				t.Fatal(err)
			}
			r.settleWait(stopped.Stop, 0)
			ce := r.episode(e.ID)
			if ce.State != episode.Closed {
				t.Fatalf("%s: %s", c.name, ce.State)
			}
			s := r.streams["c1"][0]
			q := report(t, ce, s)
			if q.Samples != uint64(len(got[s])) || q.Expected != 300 {
				t.Errorf("%s: samples %d expected %d, want %d of 300", c.name, q.Samples, q.Expected, len(got[s]))
			}
			if len(q.GapList) != 1 || q.GapList[0].Cause != episode.CauseDeviceOffline {
				t.Fatalf("%s: gaps %+v, want one device_offline", c.name, q.GapList)
			}
			g := q.GapList[0]
			if abs(g.From-off.From) > int64(period) || abs(g.To-off.To) > int64(period) {
				t.Errorf("%s: gap [%v, %v], outage [%v, %v] (relative to the start)", c.name, time.Duration(g.From-e.Start), time.Duration(g.To-e.Start), c.silentFrom, c.silentTo)
			}
			v := ce.Verdict
			if v == nil || v.Status != episode.QualityDegraded || len(v.Reasons) != 1 || v.Reasons[0].Code != c.reason {
				t.Errorf("%s: verdict %+v, want degraded: %s", c.name, v, c.reason)
			}
		}
	})
}

// TestStreamNeverSeen: a configured stream that never produced a sample
// (no descriptor stored) is reported with no samples, one gap as long as
// the window, and makes the episode degraded.
func TestStreamNeverSeen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, t.TempDir(), rigOptions{})
		r.cells.devs["ghost"] = Device{ID: "ghost", Cell: "c1", Stream: "c1/ghost", Kind: "video", Codec: "h264", Conn: "ghost", Rate: 30}
		r.cells.streamDev["c1/ghost"] = "ghost"
		r.cells.AddStream("c1", "c1/ghost")
		r.run()
		ctx := context.Background()
		e, err := r.cells.Start(ctx, "c1", ingest.StartRequest{})
		if err != nil {
			t.Fatal(err)
		}
		r.feed(2*time.Second, 10, nil)
		stopped, err := r.cells.Stop(ctx, "c1", e.ID, ingest.StopAPI)
		if err != nil {
			t.Fatal(err)
		}
		r.settleWait(stopped.Stop, 0)
		got := r.episode(e.ID)
		ghost := report(t, got, "c1/ghost")
		if ghost.Samples != 0 || ghost.Coverage != 0 || ghost.Expected != 60 || ghost.Kind != "video" ||
			len(ghost.GapList) != 1 || ghost.GapList[0].From != e.Start || ghost.GapList[0].To != stopped.Stop {
			t.Fatalf("ghost stream report: %+v", ghost)
		}
		v := got.Verdict
		if v == nil || v.Status != episode.QualityDegraded || len(v.Reasons) != 1 || v.Reasons[0].Stream != "c1/ghost" || v.Reasons[0].Code != episode.ReasonMissingStream {
			t.Fatalf("verdict %+v", v)
		}
	})
}
