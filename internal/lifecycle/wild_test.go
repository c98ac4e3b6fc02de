package lifecycle

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/sample"
)

// TestWildDeviceTimes: a camera on its own clock (RTCP time, 40 ms ahead
// of the gateway's) sends a burst of frames stamped an hour back, a burst
// an hour ahead, a frame at int64 max, and then steps its clock back by
// 30 s for good, while an episode records. Every frame still lands in the
// episode's window (wild times are held and stamped from arrival, or
// taken for a step and stamped through it; the steps are detected), in
// order, within the report's stated alignment bound of its capture, and
// that bound is well under a second: so the episode's report counts every
// frame written, the episode closes, and its bound means something.
func TestWildDeviceTimes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, t.TempDir(), rigOptions{})
		const stream = "c1/wild"
		r.cells.devs["wild"] = Device{ID: "wild", Cell: "c1", Stream: stream, Kind: sample.KindVideo, Codec: sample.CodecH264, Conn: "wild", Rate: 30}
		r.cells.streamDev[stream] = "wild"
		if err := r.sink.Describe(sample.Descriptor{Stream: stream, Kind: sample.KindVideo, Codec: sample.CodecH264,
			Device: "wild", Clock: sample.ClockDevice}); err != nil {
			t.Fatal(err)
		}
		r.run()
		ctx := context.Background()
		e, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "wild"})
		if err != nil {
			t.Fatal(err)
		}
		const ahead = 40 * time.Millisecond
		var wg sync.WaitGroup
		start := time.Now()
		const n = 600 // 20 s
		for k := range n {
			time.Sleep(time.Until(start.Add(time.Duration(k) * period)))
			now := time.Now().UnixNano()
			src := now + int64(ahead)
			switch {
			case k >= 100 && k < 110:
				src -= int64(time.Hour)
			case k >= 200 && k < 210:
				src += int64(time.Hour)
			case k == 250:
				src = 1<<63 - 1
			case k >= 300:
				src -= int64(30 * time.Second) // the device clock steps back
			}
			wg.Add(1)
			if err := r.sink.Write(sample.Sample{Stream: stream, SrcT: src, RecvT: now, Flags: sample.Keyframe, Payload: []byte{byte(k)}},
				func(error) { wg.Done() }); err != nil {
				t.Fatalf("frame %d: %v", k, err)
			}
		}
		wg.Wait()
		stopped, err := r.cells.Stop(ctx, "c1", e.ID, ingest.StopAPI)
		if err != nil {
			t.Fatal(err)
		}
		r.settleWait(stopped.Stop, 0)
		c := r.episode(e.ID)
		q := report(t, c, stream)
		if c.State != episode.Closed || q.Samples != n {
			t.Fatalf("%s: %d of %d frames in the episode (gaps %+v)", c.State, q.Samples, n, q.GapList)
		}
		// The stated bound: honest (below), and not the wild times' offset
		// (a return from an hour-off burst merged as a delay swing stated
		// an hour).
		bound := time.Duration(q.AlignmentErrorBoundMs * float64(time.Millisecond))
		t.Logf("stated alignment bound %v; gaps %+v", bound, q.GapList)
		if bound <= 0 || bound > time.Second {
			t.Errorf("stated alignment bound %v, want (0, 1s]", bound)
		}
		var prev int64
		for s, err := range r.store.Range(stream, 0, 1<<62) {
			if err != nil {
				t.Fatal(err)
			}
			if s.T < prev || s.T < e.Start || s.T > stopped.Stop {
				t.Fatalf("frame %d stored at %+v after %+v, window [0, %+v]", s.Payload[0], time.Duration(s.T-e.Start), time.Duration(prev-e.Start), time.Duration(stopped.Stop-e.Start))
			}
			prev = s.T
			// Ground truth: in the bubble a frame arrives the instant it
			// is captured.
			if d := time.Duration(s.T - s.RecvT).Abs(); d > bound {
				t.Errorf("frame %d stored %v from its capture, beyond the stated bound %v", s.Payload[0], d, bound)
			}
			if s.Payload[0] == 250 && s.Flags&sample.ArrivalTime == 0 {
				t.Errorf("the frame at int64 max was not stamped at arrival (flags %b)", s.Flags)
			}
		}
		for _, s := range r.sink.Status() {
			if s.Stream == stream {
				t.Logf("counters %+v clock jumps %d outliers %d", s.Counters, s.Clock.Jumps, s.Clock.Outliers)
				if s.Clock.Jumps == 0 || s.Clock.Outliers == 0 {
					t.Errorf("clock jumps %d, outliers %d: want the steps and the wild frames counted", s.Clock.Jumps, s.Clock.Outliers)
				}
			}
		}
	})
}
