package replay

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// schedule sends the read-ahead's samples as they come due: sample k of
// pass n at t0 + (T_k − From + n·span) / Rate. It runs on Run's goroutine.
type schedule struct {
	p      *Player
	h      Header
	byName map[string]*stream
	span   int64 // one pass, ns (at least 1 ms)

	hists       map[string]*histogram // per sink: actual − intended send time
	outstanding sync.WaitGroup        // MQTT publishes not yet acknowledged
}

func (p *Player) newSchedule(h Header, streams []*stream) *schedule {
	sc := &schedule{p: p, h: h, byName: make(map[string]*stream, len(streams)),
		span:  max(h.To-h.From, int64(time.Millisecond)),
		hists: map[string]*histogram{SinkMQTT: {}, SinkRTSP: {}}}
	for _, st := range streams {
		sc.byName[st.info.Stream] = st
	}
	return sc
}

// play sends until the read-ahead ends, a sink fails for good or ctx is
// cancelled, and fills sum's passes, start and elapsed time. The error is
// why it stopped early (nil for the end of the selection or ctx).
func (sc *schedule) play(ctx context.Context, ra *readAhead, sum *Summary) error {
	t0 := time.Now()
	sum.Started = t0
	var runErr error
	lastPass := int64(-1)
loop:
	for it := range ra.items {
		ra.took(it)
		if it.end {
			sum.Passes = int(it.pass + 1)
			if it.err != nil {
				runErr = fmt.Errorf("read samples: %w", it.err)
				break loop
			}
			continue
		}
		if it.pass != lastPass {
			lastPass = it.pass
			sc.p.log.Debug("replay pass", "pass", it.pass+1)
		}
		st := sc.byName[it.s.Stream]
		if st == nil {
			continue
		}
		if it.err != nil {
			st.skipped++
			continue
		}
		if st.sink == "" {
			continue
		}
		media := (it.s.T - sc.h.From) + it.pass*sc.span
		intended := t0.Add(time.Duration(float64(media) / sc.p.o.Rate))
		if err := sleepUntil(ctx, intended); err != nil {
			break loop
		}
		sent, err := sc.send(st, it, media)
		if err != nil {
			runErr = err
			break loop
		}
		if !sent {
			continue
		}
		sc.hists[st.sink].add(time.Since(intended))
		st.sent++
	}
	sum.Interrupted = ctx.Err() != nil
	sum.Passes = max(sum.Passes, int(lastPass+1))
	sum.Elapsed = time.Since(t0)
	return runErr
}

// send hands one due sample to its stream's sink. It returns false for a
// unit left out or one the sink refused (counted on st), and an error only
// when the replay cannot go on (the MQTT connection is gone).
func (sc *schedule) send(st *stream, it item, media int64) (bool, error) {
	switch st.sink {
	case SinkMQTT:
		sc.outstanding.Add(1)
		err := sc.p.o.MQTT.Publish(st.target, QoS, it.s.Payload, func(err error) {
			defer sc.outstanding.Done()
			if err != nil {
				st.nacked.Add(1)
				msg := err.Error()
				st.firstErr.CompareAndSwap(nil, &msg)
				return
			}
			st.acked.Add(1)
		})
		if err != nil {
			sc.outstanding.Done()
			return false, fmt.Errorf("publish %s: %w", st.target, err)
		}
	case SinkRTSP:
		au, ok := sc.accessUnit(st, it)
		if !ok {
			st.skipped++
			return false, nil
		}
		// RTP and sender-report times are presentation times; the pacing
		// follows T, the decode order.
		pts := media + it.s.PTSOffset
		if err := st.video.WriteAccessUnit(time.Duration(pts), it.s.PTS(), au); err != nil {
			st.failed++
			msg := err.Error()
			if st.firstErr.CompareAndSwap(nil, &msg) {
				sc.p.log.Warn("access unit not sent", "stream", st.info.Stream, "seq", it.s.Seq, "err", err)
			}
			return false, nil
		}
	}
	return true, nil
}

// accessUnit returns the access unit to send for a video sample, or false
// if a decoder starting at this pass's first keyframe could not decode it
// (H.265 RASL pictures after a CRA). Every keyframe carries its parameter
// sets, so that a reader can start decoding at any of them: those of the
// descriptor in force are prepended where missing (counted).
func (sc *schedule) accessUnit(st *stream, it item) ([]byte, bool) {
	au := it.s.Payload
	if st.start.C == nil || st.startPass != it.pass {
		st.start, st.startPass = video.StartFilter{C: video.CodecOf(st.sdp.Codec)}, it.pass
	}
	if nalus, ok := video.SplitAU(au); ok && st.start.Skip(nalus) {
		return nil, false
	}
	if !it.s.Flags.Has(sample.Keyframe) {
		return au, true
	}
	if d := st.info.At(it.s.T); d != nil {
		if c := video.CodecOf(d.Codec); c != nil {
			if nalus, ok := video.SplitAU(au); ok && !c.HasParams(nalus) {
				au = video.AnnexB(c.WithParams(nalus, d.Params, true))
				st.inserted++
			}
		}
	}
	return au, true
}

// preciseWindow is the last stretch before a deadline that sleepUntil
// sleeps with a nanosleep system call instead of a Go timer.
const preciseWindow = 1500 * time.Microsecond

// sleepUntil sleeps until t: on a Go timer (cancellable) until
// preciseWindow before t, then with nanosleep(2) for the rest. Go timers
// wake through the network poller, whose timeout on Linux has millisecond
// granularity, so a plain timer is late by up to 1 ms (p50 ≈ 0.6 ms
// measured here); the system call brings that to tens of µs without
// busy-waiting. The final stretch is not cancellable; it is at most
// preciseWindow long.
//
// Under testing/synctest, time.Now is the bubble's clock, which nanosleep
// does not move: the last timer wait takes it to t exactly (outside a
// bubble t has passed by then and it returns at once).
func sleepUntil(ctx context.Context, t time.Time) error {
	if err := sleepFor(ctx, time.Until(t)-preciseWindow); err != nil {
		return err
	}
	if d := time.Until(t); d > 0 {
		nanosleep(d)
	}
	if err := sleepFor(ctx, time.Until(t)); err != nil {
		return err
	}
	return ctx.Err()
}

// sleepFor waits d on a timer, or returns ctx's error.
func sleepFor(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
