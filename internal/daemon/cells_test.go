package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// fakeClock is the gateway clock of a test: it moves only when told.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time           { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration)  { c.ns.Add(int64(d)) }
func (c *fakeClock) set(t int64)              { c.ns.Store(t) }
func newFakeClock(t int64) *fakeClock         { c := &fakeClock{}; c.set(t); return c }
func (c *fakeClock) at(d time.Duration) int64 { return c.ns.Load() + int64(d) }

// closeRig is a store, a pipeline and the cells of one cell with n cameras
// (arrival-stamped video streams c1/cam1..camN), on a fake clock.
type closeRig struct {
	store *storage.Store
	pipe  *pipeline
	cells *cells
	clock *fakeClock
	cs    *cellState
	ids   []string
}

func newCloseRig(t testing.TB, n int) *closeRig {
	t.Helper()
	store, err := storage.Open(storage.Options{Dir: t.TempDir(), MinFree: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- store.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-runDone
		store.Close()
	})
	cfg := &config.Config{Cells: []config.Cell{{ID: "c1"}}}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("cam%d", i)
		cfg.Devices = append(cfg.Devices, config.Device{ID: id, Type: config.DeviceRTSP, URL: "rtsp://127.0.0.1:1/" + id, Clock: "arrival", Rate: 30})
		cfg.Cells[0].Devices = append(cfg.Cells[0].Devices, id)
	}
	cfg.EnsureDefaults()
	log := slog.New(slog.DiscardHandler)
	clock := newFakeClock(time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC).UnixNano())
	pipe := newPipeline(store, log, nil)
	pipe.now = clock.now
	c, err := newCells(cfg, store, pipe, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.now = clock.now
	pipe.cellOf = func(string) string { return "c1" }
	pipe.observe = c.observe
	pipe.onStream = c.addStream
	r := &closeRig{store: store, pipe: pipe, cells: c, clock: clock, cs: c.byID["c1"]}
	for _, d := range cfg.Devices {
		r.ids = append(r.ids, d.Stream)
		if err := pipe.Describe(sample.Descriptor{Stream: d.Stream, Kind: sample.KindVideo, Codec: sample.CodecH264,
			Device: d.ID, Clock: sample.ClockArrival}); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// record writes dur of 30 fps frames of size bytes on every stream,
// starting at the fake clock's now, and waits until they are durable.
func (r *closeRig) record(t testing.TB, dur time.Duration, size int) int {
	return r.recordSkip(t, dur, size, nil)
}

// recordSkip is record without the frames for which skip returns true; it
// returns the number of frames written per stream.
func (r *closeRig) recordSkip(t testing.TB, dur time.Duration, size int, skip func(t int64) bool) int {
	t.Helper()
	const period = int64(time.Second) / 30
	start := r.clock.at(0)
	var wg sync.WaitGroup
	var failed atomic.Value
	n := 0
	for k := int64(0); k < int64(dur)*30/int64(time.Second); k++ {
		if skip != nil && skip(start+k*period) {
			continue
		}
		n++
		for _, s := range r.ids {
			wg.Add(1)
			err := r.pipe.Write(sample.Sample{Stream: s, RecvT: start + k*period, Flags: sample.Keyframe, Payload: make([]byte, size)},
				func(err error) {
					if err != nil {
						failed.Store(err)
					}
					wg.Done()
				})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	r.clock.set(start + int64(dur))
	return n
}

// runCells runs the cells' workers (and ticks) until the test ends.
func (r *closeRig) runCells(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.cells.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitState polls the store until episode id is in state st.
func (r *closeRig) waitState(t testing.TB, id string, st episode.State) episode.Episode {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		e, err := r.store.Episode(id)
		if err == nil && e.State == st {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("episode %s is %s (%v), want %s", id, e.State, err, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCloseHoldsNoCellLock: the final report of a long 8-camera episode is
// built and stored while the test holds the cell's lock, which every
// device write takes (pipeline.Write -> cells.observe): closing an episode
// needs nothing a device needs. The report is built from the index only,
// measures every stream against the window, and the next episode records
// meanwhile.
func TestCloseHoldsNoCellLock(t *testing.T) {
	r := newCloseRig(t, 8)
	r.runCells(t)
	ctx := context.Background()
	e1, err := r.cells.start(ctx, "c1", ingest.StartRequest{Task: "long"})
	if err != nil {
		t.Fatal(err)
	}
	const dur = 10 * time.Second
	r.record(t, dur, 20<<10) // 8 x 300 frames of 20 KiB: segment payloads
	if _, err := r.cells.stop(ctx, "c1", e1.ID, ingest.StopAPI); err != nil {
		t.Fatal(err)
	}
	e2, err := r.cells.start(ctx, "c1", ingest.StartRequest{Task: "next"})
	if err != nil {
		t.Fatal(err)
	}
	r.clock.advance(r.cells.settleMargin)

	r.cs.mu.Lock()
	if len(r.cs.late) != 1 || r.cs.late[0].ID != e1.ID {
		r.cs.mu.Unlock()
		t.Fatalf("late episodes %+v, want %s", r.cs.late, e1.ID)
	}
	r.cells.settleLateLocked(r.cs, 0)
	// Still holding the cell's lock: the worker must close e1 without it.
	deadline := time.Now().Add(2 * time.Minute)
	var closed episode.Episode
	for {
		got, err := r.store.Episode(e1.ID)
		if err == nil && got.State == episode.Closed {
			closed = got
			break
		}
		if time.Now().After(deadline) {
			r.cs.mu.Unlock()
			t.Fatalf("episode not closed while the cell lock is held: the close path takes the cell's lock (%s, %v)", got.State, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.cs.mu.Unlock()

	if closed.Verdict == nil || closed.Verdict.Status != episode.QualityOK || len(closed.Quality) != 8 {
		t.Fatalf("closed episode: verdict %+v, %d reports", closed.Verdict, len(closed.Quality))
	}
	for _, q := range closed.Quality {
		if q.Samples != 300 || q.Expected != 300 || q.Coverage != 1 || q.Gaps != 0 || q.Bytes != 300*20<<10 || q.RateSource != "config" {
			t.Errorf("%s: %d samples, expected %d, coverage %v, gaps %d, bytes %d, rate %s", q.Stream, q.Samples, q.Expected, q.Coverage, q.Gaps, q.Bytes, q.RateSource)
		}
	}
	// The next episode records on: samples arrive and it stops cleanly.
	n := r.record(t, time.Second, 1<<10)
	if _, err := r.cells.stop(ctx, "c1", e2.ID, ingest.StopAPI); err != nil {
		t.Fatal(err)
	}
	r.clock.advance(r.cells.settleMargin)
	r.cells.tick()
	got := r.waitState(t, e2.ID, episode.Closed)
	if got.Quality[0].Samples != uint64(n) {
		t.Fatalf("next episode: %+v", got.Quality[0])
	}
}

// TestEpisodeOutagesThroughCells: a camera that goes silent at the start,
// in the middle, at the end and for the whole of an episode, and whose
// connection is down meanwhile, turns the episode degraded with the right
// reason and the gap accounted to device_offline; a stream refused by
// storage is accounted to storage_rejected. (Real devices: see
// internal/e2e TestOutagesRealCamera.)
func TestEpisodeOutagesThroughCells(t *testing.T) {
	r := newCloseRig(t, 1)
	r.runCells(t)
	ctx := context.Background()
	const period = int64(time.Second) / 30
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
		t.Run(c.name, func(t *testing.T) {
			e, err := r.cells.start(ctx, "c1", ingest.StartRequest{Task: c.name})
			if err != nil {
				t.Fatal(err)
			}
			start := r.clock.at(0)
			off := ingest.Interval{From: start + int64(c.silentFrom), To: start + int64(c.silentTo)}
			r.cells.offline.mu.Lock()
			r.cells.offline.mu.conns["cam1"] = &connLog{past: []ingest.Interval{off}}
			r.cells.offline.mu.Unlock()
			n := r.recordSkip(t, 10*time.Second, 1, func(tk int64) bool { return tk >= off.From && tk < off.To })
			if _, err := r.cells.stop(ctx, "c1", e.ID, ingest.StopAPI); err != nil {
				t.Fatal(err)
			}
			r.clock.advance(r.cells.settleMargin)
			r.cells.tick()
			got := r.waitState(t, e.ID, episode.Closed)
			q := got.Quality[0]
			if q.Samples != uint64(n) || q.Expected != 300 {
				t.Errorf("samples %d expected %d, want %d of 300", q.Samples, q.Expected, n)
			}
			if len(q.GapList) != 1 || q.GapList[0].Cause != episode.CauseDeviceOffline {
				t.Fatalf("gaps %+v, want one device_offline", q.GapList)
			}
			g := q.GapList[0]
			if abs(g.From-off.From) > period || abs(g.To-off.To) > period {
				t.Errorf("gap [%v, %v], outage [%v, %v] (relative to the start)", time.Duration(g.From-start), time.Duration(g.To-start), c.silentFrom, c.silentTo)
			}
			v := got.Verdict
			if v == nil || v.Status != episode.QualityDegraded || len(v.Reasons) != 1 || v.Reasons[0].Code != c.reason {
				t.Errorf("verdict %+v, want degraded: %s", v, c.reason)
			}
			r.clock.advance(time.Second)
		})
	}
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// BenchmarkCloseWhileRecording closes a 10-minute 8-camera episode while
// the next one records: 8 writers, each fed at 30 fps through a bounded
// queue of 128 frames (the RTSP camera's default QueueSize, dropping when
// full), write into the pipeline meanwhile. It reports the drops (the goal
// is 0), the longest a write waited, and how long the close took.
//
//	go test -run '^$' -bench CloseWhileRecording -benchtime 1x ./internal/daemon/
func BenchmarkCloseWhileRecording(b *testing.B) {
	const (
		cams    = 8
		long    = 10 * time.Minute
		period  = time.Second / 30
		queueSz = 128
	)
	for b.Loop() {
		b.StopTimer()
		r := newCloseRig(b, cams)
		r.runCells(b)
		ctx := context.Background()
		e1, err := r.cells.start(ctx, "c1", ingest.StartRequest{Task: "long"})
		if err != nil {
			b.Fatal(err)
		}
		r.record(b, long, 256)
		if _, err := r.cells.stop(ctx, "c1", e1.ID, ingest.StopAPI); err != nil {
			b.Fatal(err)
		}
		if _, err := r.cells.start(ctx, "c1", ingest.StartRequest{Task: "next"}); err != nil {
			b.Fatal(err)
		}
		base := r.clock.at(0)
		b.StartTimer()

		// 8 paced cameras: a producer per camera fills a bounded queue at
		// 30 fps, a writer drains it into the pipeline.
		stop := make(chan struct{})
		var drops, frames atomic.Int64
		var maxWait atomic.Int64
		var wg sync.WaitGroup
		for i, s := range r.ids {
			q := make(chan sample.Sample, queueSz)
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer close(q)
				tk := time.NewTicker(period)
				defer tk.Stop()
				for k := int64(0); ; k++ {
					select {
					case <-stop:
						return
					case <-tk.C:
					}
					x := sample.Sample{Stream: s, RecvT: base + k*int64(period) + int64(i) + 1, Payload: make([]byte, 256)}
					select {
					case q <- x:
					default:
						drops.Add(1)
					}
				}
			}()
			go func() {
				defer wg.Done()
				for x := range q {
					t0 := time.Now()
					if err := r.pipe.Write(x, nil); err != nil {
						drops.Add(1)
						continue
					}
					frames.Add(1)
					for w := int64(time.Since(t0)); ; {
						old := maxWait.Load()
						if w <= old || maxWait.CompareAndSwap(old, w) {
							break
						}
					}
				}
			}()
		}
		time.Sleep(200 * time.Millisecond) // the writers are running
		r.clock.advance(r.cells.settleMargin)
		closeStart := time.Now()
		r.cs.mu.Lock()
		done := r.cells.settleLateLocked(r.cs, 0)
		r.cs.mu.Unlock()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		closeTook := time.Since(closeStart)
		time.Sleep(200 * time.Millisecond) // and keep running after it
		close(stop)
		wg.Wait()
		got, err := r.store.Episode(e1.ID)
		if err != nil || got.State != episode.Closed || got.Quality[0].Samples != uint64(long/period) {
			b.Fatalf("long episode: %v %s %+v", err, got.State, got.Quality)
		}
		// Baseline, same run: reading the episode's samples with their
		// payloads (what the report used to do, under the cell's lock).
		from, to := got.Window(0)
		readStart := time.Now()
		for _, st := range r.ids {
			for _, err := range r.store.Range(st, from, to) {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(time.Since(readStart).Seconds()*1e3, "full_read_ms")
		b.ReportMetric(float64(drops.Load()), "drops")
		b.ReportMetric(float64(frames.Load()), "frames_written")
		b.ReportMetric(float64(maxWait.Load())/1e6, "max_write_ms")
		b.ReportMetric(closeTook.Seconds()*1e3, "close_ms")
	}
}

// TestStreamNeverSeen: a configured stream that never produced a sample
// (no descriptor stored) is reported with no samples, one gap as long as
// the window, and makes the episode degraded.
func TestStreamNeverSeen(t *testing.T) {
	r := newCloseRig(t, 1)
	r.cells.devs["ghost"] = config.Device{ID: "ghost", Type: config.DeviceRTSP, Stream: "c1/ghost", Rate: 30}
	r.cells.streamDev["c1/ghost"] = "ghost"
	r.cells.addStream("c1", "c1/ghost")
	r.runCells(t)
	ctx := context.Background()
	e, err := r.cells.start(ctx, "c1", ingest.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	from := r.clock.at(0)
	r.record(t, 2*time.Second, 10)
	if _, err := r.cells.stop(ctx, "c1", e.ID, ingest.StopAPI); err != nil {
		t.Fatal(err)
	}
	r.clock.advance(r.cells.settleMargin)
	r.cells.tick()
	got := r.waitState(t, e.ID, episode.Closed)
	var ghost *episode.StreamReport
	for i := range got.Quality {
		if got.Quality[i].Stream == "c1/ghost" {
			ghost = &got.Quality[i]
		}
	}
	if ghost == nil || ghost.Samples != 0 || ghost.Coverage != 0 || ghost.Expected != 60 || ghost.Kind != "video" ||
		len(ghost.GapList) != 1 || ghost.GapList[0].From != from || ghost.GapList[0].To != from+int64(2*time.Second) {
		t.Fatalf("ghost stream report: %+v", ghost)
	}
	v := got.Verdict
	if v == nil || v.Status != episode.QualityDegraded || len(v.Reasons) != 1 || v.Reasons[0].Stream != "c1/ghost" || v.Reasons[0].Code != episode.ReasonMissingStream {
		t.Fatalf("verdict %+v", v)
	}
}

// TestRefusedGap: after storage refused samples of a stream, the next
// stored one is flagged Refused and the gap is accounted to
// storage_rejected. (Storage's refusal is injected at the pipeline's
// append seam: making a real store refuse on cue depends on its space
// watcher's timing; storage's own tests cover when it refuses.)
func TestRefusedGap(t *testing.T) {
	r := newCloseRig(t, 1)
	r.runCells(t)
	realAppend := r.pipe.appendFn
	var refuse atomic.Bool
	r.pipe.appendFn = func(s []sample.Sample, done func(error)) error {
		if refuse.Load() {
			return storage.ErrFull
		}
		return realAppend(s, done)
	}
	ctx := context.Background()
	e, err := r.cells.start(ctx, "c1", ingest.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	start := r.clock.at(0)
	const period = int64(time.Second) / 30
	var wg sync.WaitGroup
	for k := int64(0); k < 90; k++ {
		refuse.Store(k >= 30 && k < 50)
		wg.Add(1)
		err := r.pipe.Write(sample.Sample{Stream: r.ids[0], RecvT: start + k*period, Payload: []byte{1}}, func(error) { wg.Done() })
		if (err != nil) != (k >= 30 && k < 50) {
			t.Fatalf("frame %d: %v", k, err)
		}
		if err != nil {
			wg.Done()
		}
	}
	wg.Wait()
	r.clock.set(start + 90*period)
	if _, err := r.cells.stop(ctx, "c1", e.ID, ingest.StopAPI); err != nil {
		t.Fatal(err)
	}
	r.clock.advance(r.cells.settleMargin)
	r.cells.tick()
	got := r.waitState(t, e.ID, episode.Closed)
	q := got.Quality[0]
	if q.Samples != 70 || len(q.GapList) != 1 || q.GapList[0].Cause != episode.CauseStorageRejected ||
		q.GapList[0].From != start+29*period || q.GapList[0].To != start+50*period {
		t.Fatalf("report: %d samples, gaps %+v", q.Samples, q.GapList)
	}
}
