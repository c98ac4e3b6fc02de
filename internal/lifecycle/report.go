package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// settleStep builds the final quality report of a stopped episode, stores
// it closed (or interrupted) and hands it on. It runs on the cell's worker
// and takes no cell lock.
func (c *Cells) settleStep(cs *cellState, e episode.Episode) step {
	return func(ctx context.Context) error {
		if e.State == episode.Recording || e.State == "" {
			e.State = episode.Closed
		}
		c.pollDevices() // connection states up to now
		if err := c.finalReport(ctx, cs.cfg, &e); err != nil {
			return fmt.Errorf("quality report of %s: %w", e.ID, err)
		}
		return c.storeFinal(e)
	}
}

// storeFinal stores an episode closed or interrupted with its final
// report, counts it and hands it on (Options.Settled).
func (c *Cells) storeFinal(e episode.Episode) error {
	if c.timeSync != nil {
		e.TimeSync = c.timeSync()
	}
	e.Updated = time.Now().UnixNano()
	if err := c.store.PutEpisode(e); err != nil {
		return fmt.Errorf("store episode %s: %w", e.ID, err)
	}
	c.episodes.WithLabelValues(e.Cell, string(e.State)).Inc()
	c.closed.WithLabelValues(e.Cell, e.QualityStatus()).Inc()
	c.log.Info("episode closed", "cell", e.Cell, "episode", e.ID, "state", e.State, "quality", e.QualityStatus(),
		"duration", time.Duration(e.Stop-e.Start).Round(time.Millisecond), "streams", len(e.Quality))
	if c.settled != nil {
		c.settled(e)
	}
	return nil
}

// finalReport sets e's quality report and verdict, with the thresholds of
// cell.
func (c *Cells) finalReport(ctx context.Context, cell CellOptions, e *episode.Episode) error {
	q, err := c.report(ctx, cell.GapFactor, *e)
	if err != nil {
		return err
	}
	e.Quality = q
	v := ingest.Judge(*e, cell.quality())
	e.Verdict = &v
	return nil
}

// descriptorOf returns the stored descriptor of stream or, for a
// configured stream that never produced a sample, one made from its
// device's options.
func (c *Cells) descriptorOf(stream string) (sample.Descriptor, error) {
	d, err := c.store.Descriptor(stream)
	if !errors.Is(err, storage.ErrNotFound) {
		return d, err
	}
	d = sample.Descriptor{Stream: stream, Kind: sample.KindTelemetry, Clock: sample.ClockArrival}
	if dev, ok := c.devs[c.streamDev[stream]]; ok {
		d.Device, d.Kind, d.Codec = dev.ID, dev.Kind, dev.Codec
	}
	return d, nil
}

// connOf returns the connection whose outages silence device.
func (c *Cells) connOf(device string) string {
	if d, ok := c.devs[device]; ok {
		return d.Conn
	}
	return device
}

// report builds the quality report of every stream of e from the stored
// index (no payload is read), measured against e's window.
func (c *Cells) report(ctx context.Context, gapFactor float64, e episode.Episode) ([]episode.StreamReport, error) {
	from, to := e.Window(0)
	now := time.Now().UnixNano()
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
func (c *Cells) priorPeriod(ctx context.Context, d sample.Descriptor, from int64) int64 {
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
func (c *Cells) streamReport(ctx context.Context, e episode.Episode, d sample.Descriptor, o ingest.ReportOptions) (episode.StreamReport, error) {
	from, to := o.From, o.To
	st := c.sink.stream(d.Stream)
	if st != nil {
		st.mu.Lock()
		o.Refused = st.refusalsLocked(from, to)
		st.mu.Unlock()
	}
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
	// the figures re-derived from the stored samples.) The stream's lock
	// is taken here, on the worker, never under a cell's lock.
	var bound int64
	var haveBound bool
	if st != nil && e.State != episode.Interrupted {
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
