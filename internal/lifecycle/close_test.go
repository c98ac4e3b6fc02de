package lifecycle

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// backfill writes n frames of size bytes per stream of cell c1, stamped
// 30 fps apart and ending one period before now (the past: no waiting on
// any clock), and waits until they are durable.
func (r *rig) backfill(n int, size int) {
	r.t.Helper()
	start := time.Now().Add(-time.Duration(n) * period).UnixNano()
	var wg sync.WaitGroup
	var failed atomic.Value
	for k := range n {
		for _, s := range r.streams["c1"] {
			wg.Add(1)
			err := r.sink.Write(sample.Sample{Stream: s, RecvT: start + int64(k)*int64(period), Flags: sample.Keyframe, Payload: make([]byte, size)},
				func(err error) {
					if err != nil {
						failed.Store(err)
					}
					wg.Done()
				})
			if err != nil {
				r.t.Fatal(err)
			}
		}
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		r.t.Fatal(err)
	}
}

// TestCloseHoldsNoCellLock: the final report of an 8-camera episode is
// built and stored while the test holds the cell's lock, which every
// device write takes (Sink.Write -> observe): closing an episode needs
// nothing a device needs. The report is built from the index only and
// measures every stream against the window, and the next episode records
// meanwhile.
//
// This test runs on the real clock, not in a bubble: a worker blocked on
// the cell's lock would stop a bubble's clock, so the test could not time
// out and fail. It waits on no clock: its 10 s of frames lie in the past,
// inside the episode's 30 s pre-roll, and the settle is forced
// (settleLateLocked with now 0) rather than waited for.
func TestCloseHoldsNoCellLock(t *testing.T) {
	const pre = 30 * time.Second
	// A settle margin of an hour: no tick settles the episode on its own,
	// however slow the machine.
	r := newRig(t, t.TempDir(), rigOptions{cells: []CellOptions{{ID: "c1", Preroll: pre}}, cams: 8, syncInterval: time.Hour})
	r.run()
	ctx := context.Background()
	r.backfill(300, 20<<10) // 8 x 300 frames of 20 KiB: segment payloads
	e1, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "long"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.cells.Stop(ctx, "c1", e1.ID, ingest.StopAPI); err != nil {
		t.Fatal(err)
	}
	e2, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "next"})
	if err != nil {
		t.Fatal(err)
	}

	cs := r.cells.byID["c1"]
	cs.mu.Lock()
	if len(cs.late) != 1 || cs.late[0].ID != e1.ID {
		cs.mu.Unlock()
		t.Fatalf("late episodes %+v, want %s", cs.late, e1.ID)
	}
	done := r.cells.settleLateLocked(cs, 0)
	// Still holding the cell's lock: the worker must close e1 without it.
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		cs.mu.Unlock()
		t.Fatal("episode not closed while the cell lock is held: the close path takes the cell's lock")
	}
	cs.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}

	// (The window is wider than the frames: the report is not ok, but it
	// counts every frame, from the index.)
	closed := r.episode(e1.ID)
	if closed.State != episode.Closed || closed.Verdict == nil || len(closed.Quality) != 8 {
		t.Fatalf("closed episode: %s, verdict %+v, %d reports", closed.State, closed.Verdict, len(closed.Quality))
	}
	for _, q := range closed.Quality {
		if q.Samples != 300 || q.Bytes != 300*20<<10 || q.RateSource != "config" {
			t.Errorf("%s: %d samples, expected %d, coverage %v, gaps %d, bytes %d, rate %s", q.Stream, q.Samples, q.Expected, q.Coverage, q.Gaps, q.Bytes, q.RateSource)
		}
	}
	// The next episode records on.
	if st := r.cells.Status(); st[0].Recording == nil || st[0].Recording.ID != e2.ID {
		t.Fatalf("status %+v, want %s recording", st, e2.ID)
	}
}

// TestConcurrentWritesDuringClose: 8 cameras write at 30 fps, each from
// its own goroutine, while a 20 s episode closes (report from the index,
// stored by the cell's worker) and the next one records. Run with -race.
// No write is refused or fails, the close happens while they write, and
// both episodes count every frame of their windows.
func TestConcurrentWritesDuringClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, t.TempDir(), rigOptions{cams: 8})
		r.run()
		ctx := context.Background()
		e1, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "long"})
		if err != nil {
			t.Fatal(err)
		}
		got := r.feed(20*time.Second, 1<<10, nil)
		stopped, err := r.cells.Stop(ctx, "c1", e1.ID, ingest.StopAPI)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "next"})
		if err != nil {
			t.Fatal(err)
		}

		const writeFor = 5 * time.Second
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []error
		var accepted, durable atomic.Int64
		for _, s := range r.streams["c1"] {
			wg.Go(func() {
				start := time.Now()
				for k := range int(writeFor / period) {
					time.Sleep(time.Until(start.Add(time.Duration(k) * period)))
					t := time.Now().UnixNano()
					err := r.sink.Write(sample.Sample{Stream: s, RecvT: t, Payload: make([]byte, 1<<10)}, func(err error) {
						if err != nil {
							mu.Lock()
							errs = append(errs, err)
							mu.Unlock()
							return
						}
						durable.Add(1)
					})
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						continue
					}
					accepted.Add(1)
					mu.Lock()
					got[s] = append(got[s], t)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		writersDone := time.Now()
		stopped2, err := r.cells.Stop(ctx, "c1", e2.ID, ingest.StopAPI)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // the last commit
		synctest.Wait()
		if len(errs) > 0 || accepted.Load() != durable.Load() || accepted.Load() != int64(8*int(writeFor/period)) {
			t.Fatalf("%d frames accepted, %d durable, errors %v", accepted.Load(), durable.Load(), errs)
		}
		c1 := r.episode(e1.ID)
		if c1.State != episode.Closed || c1.Updated >= writersDone.UnixNano() {
			t.Fatalf("first episode %s, stored at %v; the writers ran until %v", c1.State, time.Unix(0, c1.Updated), writersDone)
		}
		r.settleWait(stopped2.Stop, 0)
		c2 := r.episode(e2.ID)
		for _, e := range []episode.Episode{c1, c2} {
			from, to := e.Window(0)
			for _, s := range r.streams["c1"] {
				if q, want := report(t, e, s), got.in(s, from, to); q.Samples != want || q.Gaps != 0 || want < 150 {
					t.Errorf("%s %s: %d samples, want %d, %d gaps", e.Task, s, q.Samples, want, q.Gaps)
				}
			}
		}
		if stopped.Stop != c1.Stop {
			t.Fatalf("stop moved: %d -> %d", stopped.Stop, c1.Stop)
		}
	})
}

// TestStoreRefusesWrites: a real store at its quota (reject-new) refuses a
// camera's frames while an episode records. Every refusal reaches the
// device as an error (nothing is dropped silently), the stream's next
// stored frame is flagged, and the episode's report accounts every gap to
// storage_rejected and is degraded; the frames stored are all counted.
func TestStoreRefusesWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const quota = 64 << 20
		r := newRig(t, t.TempDir(), rigOptions{store: func(o *storage.Options) {
			o.Quota = quota
			o.TimelineRetention = time.Hour
		}})
		r.run()
		ctx := context.Background()
		e, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "full"})
		if err != nil {
			t.Fatal(err)
		}
		s := r.streams["c1"][0]
		room := quota - storage.FixedOverhead(quota)
		const size = 256 << 10
		limit := 3 * int(room/size) // frames; the store must refuse before
		var stored []int64
		var refused, failed int
		var wg sync.WaitGroup
		var mu sync.Mutex
		start := time.Now()
		for k := 0; k < limit && refused < 60; k++ {
			time.Sleep(time.Until(start.Add(time.Duration(k) * period)))
			now := time.Now().UnixNano()
			wg.Add(1)
			err := r.sink.Write(sample.Sample{Stream: s, RecvT: now, Flags: sample.Keyframe, Payload: make([]byte, size)}, func(err error) {
				if err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
				}
				wg.Done()
			})
			switch {
			case errors.Is(err, storage.ErrFull):
				wg.Done()
				refused++
			case err != nil:
				t.Fatalf("frame %d: %v", k, err)
			default:
				stored = append(stored, now)
			}
		}
		wg.Wait()
		if refused == 0 || failed != 0 {
			t.Fatalf("%d frames of %d KiB written to a %d MiB quota: %d refused, %d failed after acceptance", len(stored), size>>10, quota>>20, refused, failed)
		}
		if n := r.count(r.sink.refused, s, "full"); n != float64(refused) {
			t.Fatalf("refusal counter %v, %d refused", n, refused)
		}
		stopped, err := r.cells.Stop(ctx, "c1", e.ID, ingest.StopAPI)
		if err != nil {
			t.Fatal(err)
		}
		r.settleWait(stopped.Stop, 0)
		c := r.episode(e.ID)
		q := report(t, c, s)
		if c.State != episode.Closed || q.Samples != uint64(len(stored)) {
			t.Fatalf("%s: %d samples, %d stored", c.State, q.Samples, len(stored))
		}
		if len(q.GapList) == 0 || c.Verdict == nil || c.Verdict.Status != episode.QualityDegraded {
			t.Fatalf("gaps %+v, verdict %+v: want the refusals accounted", q.GapList, c.Verdict)
		}
		// Storage refused until the stop: the trailing gap has no stored
		// frame after it to carry the Refused flag, and is still accounted
		// to storage.
		for _, g := range q.GapList {
			if g.Cause != episode.CauseStorageRejected {
				t.Errorf("gap [%v, %v] caused by %s, want %s", time.Duration(g.From-c.Start), time.Duration(g.To-c.Start), g.Cause, episode.CauseStorageRejected)
			}
		}
	})
}

// BenchmarkCloseWhileRecording closes a 10-minute 8-camera episode while
// the next one records: 8 writers, each fed at 30 fps through a bounded
// queue of 128 frames (the RTSP camera's default QueueSize, dropping when
// full), write into the sink meanwhile. It reports the drops (the goal is
// 0), the longest a write waited, and how long the close took. The long
// episode's frames are backfilled (stamped in the past, inside its
// pre-roll), so the benchmark runs on the real clock without recording
// for 10 minutes.
//
//	go test -run '^$' -bench CloseWhileRecording -benchtime 1x ./internal/lifecycle/
func BenchmarkCloseWhileRecording(b *testing.B) {
	const (
		cams    = 8
		long    = 10 * time.Minute
		queueSz = 128
	)
	for b.Loop() {
		b.StopTimer()
		r := newRig(b, b.TempDir(), rigOptions{cells: []CellOptions{{ID: "c1", Preroll: long + time.Minute}}, cams: cams, syncInterval: time.Hour,
			store: func(o *storage.Options) { o.TimelineRetention = time.Hour }})
		r.run()
		ctx := context.Background()
		r.backfill(int(long/period), 256)
		e1, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "long"})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.cells.Stop(ctx, "c1", e1.ID, ingest.StopAPI); err != nil {
			b.Fatal(err)
		}
		if _, err := r.cells.Start(ctx, "c1", ingest.StartRequest{Task: "next"}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		// 8 paced cameras: a producer per camera fills a bounded queue at
		// 30 fps, a writer drains it into the sink.
		stop := make(chan struct{})
		var drops, frames atomic.Int64
		var maxWait atomic.Int64
		var wg sync.WaitGroup
		for _, s := range r.streams["c1"] {
			q := make(chan sample.Sample, queueSz)
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer close(q)
				tk := time.NewTicker(period)
				defer tk.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tk.C:
					}
					x := sample.Sample{Stream: s, RecvT: time.Now().UnixNano(), Payload: make([]byte, 256)}
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
					if err := r.sink.Write(x, nil); err != nil {
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
		cs := r.cells.byID["c1"]
		closeStart := time.Now()
		cs.mu.Lock()
		done := r.cells.settleLateLocked(cs, 0)
		cs.mu.Unlock()
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
		for _, st := range r.streams["c1"] {
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

// TestRefusedGap: after storage refused samples of a stream in the middle
// of an episode, the next stored one is flagged Refused and the gap, with
// its exact bounds, is accounted to storage_rejected. (The refusal is
// injected at the sink's append seam, to place it exactly;
// TestStoreRefusesWrites has a real store refuse.)
func TestRefusedGap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, t.TempDir(), rigOptions{})
		r.run()
		realAppend := r.sink.appendFn
		var refuse atomic.Bool
		r.sink.appendFn = func(s []sample.Sample, done func(error)) error {
			if refuse.Load() {
				return storage.ErrFull
			}
			return realAppend(s, done)
		}
		ctx := context.Background()
		e, err := r.cells.Start(ctx, "c1", ingest.StartRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var times []int64
		for k := range 90 {
			refuse.Store(k >= 30 && k < 50)
			wg.Add(1)
			now := time.Now().UnixNano()
			times = append(times, now)
			err := r.sink.Write(sample.Sample{Stream: r.streams["c1"][0], RecvT: now, Payload: []byte{1}}, func(error) { wg.Done() })
			if (err != nil) != (k >= 30 && k < 50) {
				t.Fatalf("frame %d: %v", k, err)
			}
			if err != nil {
				wg.Done()
			}
			time.Sleep(period)
		}
		wg.Wait()
		stopped, err := r.cells.Stop(ctx, "c1", e.ID, ingest.StopAPI)
		if err != nil {
			t.Fatal(err)
		}
		r.settleWait(stopped.Stop, 0)
		q := report(t, r.episode(e.ID), r.streams["c1"][0])
		if q.Samples != 70 || len(q.GapList) != 1 || q.GapList[0].Cause != episode.CauseStorageRejected ||
			q.GapList[0].From != times[29] || q.GapList[0].To != times[50] {
			t.Fatalf("report: %d samples, gaps %+v", q.Samples, q.GapList)
		}
	})
}
