package ingest

import (
	"errors"
	"fmt"
	"iter"
	"math"

	"github.com/episoded/episoded/sample"
)

// ViewOptions describe a synchronized view of an episode.
type ViewOptions struct {
	// Streams are the stream ids in the view, in output order; others in
	// the input are skipped. Required, no duplicates.
	Streams []string
	// From and To bound the frame times: frames are at From, From+period,
	// ... up to and including To.
	From, To int64
	// RateHz is the frame rate. Required, positive.
	RateHz float64
	// Tolerance: a stream's sample is used for a frame only if
	// |T - frame time| <= Tolerance; otherwise that stream misses the
	// frame. Must not be negative. A common choice is half the slowest
	// stream's period.
	Tolerance int64
}

// Frame is one instant of a synchronized view. Its slices are indexed like
// ViewOptions.Streams and are reused for the next frame: copy what you keep.
type Frame struct {
	// Index is the frame number from 0; T its time.
	Index int
	T     int64
	// Samples holds each stream's nearest sample; meaningful only where Hit
	// is true. Payloads are the input's, not copied.
	Samples []sample.Sample
	// Hit says whether the stream had a sample within the tolerance.
	Hit []bool
	// Misses counts the streams without a sample within the tolerance.
	Misses int
}

// ViewStats count the frames and, per stream, the hits and misses.
type ViewStats struct {
	Frames uint64
	Hits   []uint64
	Misses []uint64
}

// View iterates an episode as frames at a fixed rate, taking for each
// stream the sample nearest to the frame time within the tolerance (on a
// tie, the earlier one) and reporting misses. It consumes a time-ordered
// sample sequence (such as storage's merge over the episode's streams) in
// one pass, holding only the samples within the tolerance of the current
// frame. A View is used once.
type View struct {
	o      ViewOptions
	period float64
	idx    map[string]int
	bufs   [][]sample.Sample
	stats  ViewStats
	frame  Frame
	used   bool
}

// NewView checks the options.
func NewView(o ViewOptions) (*View, error) {
	var errs []error
	if len(o.Streams) == 0 {
		errs = append(errs, errors.New("streams: at least one"))
	}
	idx := make(map[string]int, len(o.Streams))
	for i, s := range o.Streams {
		if _, dup := idx[s]; dup {
			errs = append(errs, fmt.Errorf("streams: %q twice", s))
		}
		idx[s] = i
	}
	if !(o.RateHz > 0) || math.IsInf(o.RateHz, 0) {
		errs = append(errs, fmt.Errorf("rate %v Hz: must be positive", o.RateHz))
	}
	if o.To < o.From {
		errs = append(errs, errors.New("window: to before from"))
	}
	if o.Tolerance < 0 {
		errs = append(errs, errors.New("tolerance: negative"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("ingest: view: %w", errors.Join(errs...))
	}
	n := len(o.Streams)
	return &View{
		o:      o,
		period: 1e9 / o.RateHz,
		idx:    idx,
		bufs:   make([][]sample.Sample, n),
		stats:  ViewStats{Hits: make([]uint64, n), Misses: make([]uint64, n)},
		frame:  Frame{Samples: make([]sample.Sample, n), Hit: make([]bool, n)},
	}, nil
}

// frameTime returns the time of frame k.
func (v *View) frameTime(k int) int64 {
	return v.o.From + int64(math.Round(float64(k)*v.period))
}

// Frames consumes in and yields the frames. An error from in, or a sample
// out of time order, is yielded once and ends the view.
func (v *View) Frames(in iter.Seq2[sample.Sample, error]) iter.Seq2[*Frame, error] {
	return func(yield func(*Frame, error) bool) {
		if v.used {
			yield(nil, errors.New("ingest: view: already used"))
			return
		}
		v.used = true
		k := 0
		ft := v.frameTime(0)
		last := int64(math.MinInt64)
		tol := v.o.Tolerance
		for s, err := range in {
			if err != nil {
				yield(nil, fmt.Errorf("ingest: view: read samples: %w", err))
				return
			}
			if s.T < last {
				yield(nil, fmt.Errorf("ingest: view: sample %s/%d at %d before %d: input not in time order", s.Stream, s.Seq, s.T, last))
				return
			}
			last = s.T
			// Every frame whose tolerance window ends before s is final.
			for ft <= v.o.To && s.T > ft+tol {
				if !yield(v.emit(k, ft), nil) {
					return
				}
				k++
				ft = v.frameTime(k)
				v.prune(ft - tol)
			}
			if ft > v.o.To {
				return
			}
			i, ok := v.idx[s.Stream]
			if !ok || s.T < ft-tol {
				continue
			}
			v.bufs[i] = append(v.bufs[i], s)
		}
		for ft <= v.o.To {
			if !yield(v.emit(k, ft), nil) {
				return
			}
			k++
			ft = v.frameTime(k)
			v.prune(ft - tol)
		}
	}
}

// emit fills the frame for time ft from the buffers.
func (v *View) emit(k int, ft int64) *Frame {
	f := &v.frame
	f.Index, f.T, f.Misses = k, ft, 0
	tol := v.o.Tolerance
	for i, buf := range v.bufs {
		best, bd := -1, int64(math.MaxInt64)
		for j := range buf {
			d := buf[j].T - ft
			if d < 0 {
				d = -d
			}
			if d <= tol && d < bd {
				best, bd = j, d
			}
		}
		if best < 0 {
			f.Hit[i] = false
			f.Samples[i] = sample.Sample{}
			f.Misses++
			v.stats.Misses[i]++
			continue
		}
		f.Hit[i] = true
		f.Samples[i] = buf[best]
		v.stats.Hits[i]++
	}
	v.stats.Frames++
	return f
}

// prune drops buffered samples older than t.
func (v *View) prune(t int64) {
	for i, buf := range v.bufs {
		j := 0
		for j < len(buf) && buf[j].T < t {
			j++
		}
		if j > 0 {
			n := copy(buf, buf[j:])
			clear(buf[n:])
			v.bufs[i] = buf[:n]
		}
	}
}

// Stats returns the counts so far (complete once Frames is exhausted).
func (v *View) Stats() ViewStats {
	return ViewStats{Frames: v.stats.Frames, Hits: append([]uint64(nil), v.stats.Hits...), Misses: append([]uint64(nil), v.stats.Misses...)}
}
