package lifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// Most tests here run inside a testing/synctest bubble: the real store
// (Pebble on a temp dir) and the cells run on the bubble's fake clock, so
// timers (ticks, idle timeout, post-roll, settling) fire at exact times
// and no test waits on the wall clock.

const period = time.Second / 30

// rigOptions describe a rig: cells (default one cell "c1") and cams
// cameras per cell (arrival-stamped video streams <cell>/camN at 30 fps).
type rigOptions struct {
	cells []CellOptions
	cams  int
	// store adjusts the store's options.
	store func(*storage.Options)
	// syncInterval is Options.SyncInterval (the settle margin less 1s).
	syncInterval time.Duration
}

// rig is a real store, a sink and cells, opened on dir.
type rig struct {
	t     testing.TB
	dir   string
	o     rigOptions
	store *storage.Store
	sink  *Sink
	cells *Cells
	reg   *prometheus.Registry
	// streams are the camera streams by cell.
	streams map[string][]string

	stopStore func()
	stopCells func()

	mu      sync.Mutex
	settled []episode.Episode
}

func newRig(t testing.TB, dir string, o rigOptions) *rig {
	t.Helper()
	if len(o.cells) == 0 {
		o.cells = []CellOptions{{ID: "c1"}}
	}
	if o.cams == 0 {
		o.cams = 1
	}
	r := &rig{t: t, dir: dir, o: o, reg: prometheus.NewRegistry(), streams: map[string][]string{}}
	so := storage.Options{Dir: dir, MinFree: -1, Logger: slog.New(slog.DiscardHandler)}
	if o.store != nil {
		o.store(&so)
	}
	store, err := storage.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	r.store = store
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- store.Run(ctx) }()
	var once sync.Once
	r.stopStore = func() {
		once.Do(func() {
			cancel()
			<-runDone
			store.Close()
		})
	}
	t.Cleanup(r.stopStore)

	lo := Options{Cells: o.cells, SyncInterval: o.syncInterval, Logger: slog.New(slog.DiscardHandler), Registerer: r.reg,
		Settled: func(e episode.Episode) {
			r.mu.Lock()
			r.settled = append(r.settled, e)
			r.mu.Unlock()
		}}
	for _, c := range o.cells {
		for i := 1; i <= o.cams; i++ {
			id := fmt.Sprintf("%s-cam%d", c.ID, i)
			stream := fmt.Sprintf("%s/cam%d", c.ID, i)
			lo.Devices = append(lo.Devices, Device{ID: id, Cell: c.ID, Stream: stream, Kind: sample.KindVideo, Codec: sample.CodecH264, Rate: 30})
			r.streams[c.ID] = append(r.streams[c.ID], stream)
		}
	}
	r.sink = NewSink(store, SinkOptions{Registerer: r.reg})
	r.cells, err = New(store, r.sink, lo)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range lo.Devices {
		if err := r.sink.Describe(sample.Descriptor{Stream: d.Stream, Kind: sample.KindVideo, Codec: sample.CodecH264,
			Device: d.ID, Clock: sample.ClockArrival}); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// run recovers and runs the cells until the test ends (or stopCells).
func (r *rig) run() {
	r.t.Helper()
	if err := r.cells.Recover(context.Background()); err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.cells.Run(ctx) }()
	var once sync.Once
	r.stopCells = func() { once.Do(func() { cancel(); <-done }) }
	r.t.Cleanup(r.stopCells)
}

// crash ends the rig as a crash would: the store stops taking anything
// (what was committed stays), then the cells are stopped, and what they
// try to store on the way out is refused.
func (r *rig) crash() {
	r.stopStore()
	r.stopCells()
}

// frames is what a feed wrote: every stream's accepted sample times.
type frames map[string][]int64

// in counts the frames of stream with T in [from, to].
func (f frames) in(stream string, from, to int64) uint64 {
	var n uint64
	for _, t := range f[stream] {
		if t >= from && t <= to {
			n++
		}
	}
	return n
}

func (f frames) add(g frames) {
	for s, ts := range g {
		f[s] = append(f[s], ts...)
	}
}

// feed writes dur/period frames of size bytes at 30 fps, stamped now, on
// every camera of the given cells (default c1), sleeping a frame period
// between frames (the bubble's clock) and then to the end of dur. It
// skips the frames at times for which skip returns true, and waits until
// every one written is durable.
func (r *rig) feed(dur time.Duration, size int, skip func(t int64) bool, cells ...string) frames {
	r.t.Helper()
	if len(cells) == 0 {
		cells = []string{"c1"}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed error
	out := frames{}
	start := time.Now()
	for k := range int(dur / period) {
		time.Sleep(time.Until(start.Add(time.Duration(k) * period)))
		t := time.Now().UnixNano()
		if skip != nil && skip(t) {
			continue
		}
		for _, c := range cells {
			for _, s := range r.streams[c] {
				wg.Add(1)
				err := r.sink.Write(sample.Sample{Stream: s, RecvT: t, Flags: sample.Keyframe, Payload: make([]byte, size)},
					func(err error) {
						if err != nil {
							mu.Lock()
							failed = err
							mu.Unlock()
						}
						wg.Done()
					})
				if err != nil {
					r.t.Fatalf("write %s: %v", s, err)
				}
				out[s] = append(out[s], t)
			}
		}
	}
	time.Sleep(time.Until(start.Add(dur)))
	wg.Wait()
	if failed != nil {
		r.t.Fatal(failed)
	}
	return out
}

// settleWait sleeps until an episode stopped at stop with postroll has
// surely been settled by a tick (its post-roll and the settle margin
// passed, then the tick after), and until every goroutine of the bubble
// is idle.
func (r *rig) settleWait(stop int64, postroll time.Duration) {
	time.Sleep(time.Until(time.Unix(0, stop+int64(postroll)+int64(r.cells.settleMargin))) + 1500*time.Millisecond)
	synctest.Wait()
}

// episode reads episode id from the store.
func (r *rig) episode(id string) episode.Episode {
	r.t.Helper()
	e, err := r.store.Episode(id)
	if err != nil {
		r.t.Fatalf("episode %s: %v", id, err)
	}
	return e
}

// settledIDs returns the ids handed on by Options.Settled, in order.
func (r *rig) settledIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, e := range r.settled {
		ids = append(ids, e.ID)
	}
	return ids
}

// count reads a counter of the rig's registry.
func (r *rig) count(c *prometheus.CounterVec, labels ...string) float64 {
	return testutil.ToFloat64(c.WithLabelValues(labels...))
}

// report returns e's report of stream.
func report(t testing.TB, e episode.Episode, stream string) episode.StreamReport {
	t.Helper()
	i := slices.IndexFunc(e.Quality, func(q episode.StreamReport) bool { return q.Stream == stream })
	if i < 0 {
		t.Fatalf("episode %s has no report of %s (%d reports)", e.ID, stream, len(e.Quality))
	}
	return e.Quality[i]
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
