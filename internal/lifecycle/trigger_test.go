package lifecycle

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
)

// TestTriggerMessages: MQTT trigger messages start and stop episodes
// without waiting for storage; hostile and invalid ones (not JSON,
// unknown fields, a stop with nothing recording, an unknown cell) change
// nothing and are counted by result.
func TestTriggerMessages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, t.TempDir(), rigOptions{})
		r.run()
		r.cells.Trigger("c1", []byte(`{"action":"stop"}`)) // nothing recording
		r.cells.Trigger("c1", []byte(`{"action":"start","task":"t1","labels":{"k":"v"}}`))
		r.cells.Trigger("c1", []byte(`{"action":"start"}`)) // already recording
		for _, bad := range []string{`not json`, `{"action":"start","rm":"-rf"}`, `{"action":"launch"}`, `{"action":"start"} trailing`, ""} {
			r.cells.Trigger("c1", []byte(bad))
		}
		r.cells.Trigger("nope", []byte(`{"action":"start"}`))
		synctest.Wait()
		st := r.cells.Status()
		if st[0].Recording == nil || st[0].Recording.Task != "t1" || st[0].Recording.Trigger != ingest.TriggerMQTT {
			t.Fatalf("status %+v: want t1 recording, started by mqtt", st)
		}
		id := st[0].Recording.ID
		if e := r.episode(id); e.State != episode.Recording || e.Labels["k"] != "v" {
			t.Fatalf("stored %s labels %v", e.State, e.Labels)
		}
		r.feed(time.Second, 10, nil)
		r.cells.Trigger("c1", []byte(`{"action":"stop"}`))
		synctest.Wait()
		e := r.episode(id)
		if e.Stop == 0 || e.StopReason != ingest.StopMQTT {
			t.Fatalf("after the stop message: stop %d reason %q", e.Stop, e.StopReason)
		}
		r.settleWait(e.Stop, 0)
		if e := r.episode(id); e.State != episode.Closed {
			t.Fatalf("not closed: %s", e.State)
		}
		for _, c := range []struct {
			source, result string
			want           float64
		}{
			// (start and stop messages share the source label "mqtt")
			{ingest.StopMQTT, "not_recording", 1},
			{ingest.TriggerMQTT, "ok", 2},
			{ingest.TriggerMQTT, "already_recording", 1},
			{ingest.TriggerMQTT, "bad_message", 5},
		} {
			if n := r.count(r.cells.triggers, "c1", c.source, c.result); n != c.want {
				t.Errorf("triggers{source=%s,result=%s} = %v, want %v", c.source, c.result, n, c.want)
			}
		}
	})
}

// TestFinish: Finish (what `episoded demo --duration` does before it
// exits) stops the recording episode, waits out its post-roll, and
// returns once it is stored closed, on the bubble's clock.
func TestFinish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const post = 3 * time.Second
		r := newRig(t, t.TempDir(), rigOptions{cells: []CellOptions{{ID: "c1", Postroll: post}}})
		r.run()
		ctx := context.Background()
		e, err := r.cells.Start(ctx, "c1", ingest.StartRequest{})
		if err != nil {
			t.Fatal(err)
		}
		r.feed(2*time.Second, 10, nil)
		before := time.Now()
		if err := r.cells.Finish(ctx); err != nil {
			t.Fatal(err)
		}
		c := r.episode(e.ID)
		if c.State != episode.Closed || c.StopReason != ingest.StopShutdown || time.Since(before) < post {
			t.Fatalf("after Finish (%v): %s reason %q", time.Since(before), c.State, c.StopReason)
		}
		if st := r.cells.Status(); st[0].Recording != nil {
			t.Fatalf("still recording: %+v", st[0].Recording)
		}
	})
}
