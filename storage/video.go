package storage

import (
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/episoded/episoded/sample"
)

// VideoStart finds where stream's video for the window [from, to] starts
// (see sample.VideoStart). It reads sample records only, never payloads.
func (s *Store) VideoStart(stream string, from, to int64) (sample.VideoStart, error) {
	vs := sample.VideoStart{Stream: stream}
	if s.closed.Load() {
		return vs, ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return vs, err
	}
	lo, hi := streamBounds(stream)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return vs, fmt.Errorf("video start %s: %w", stream, err)
	}
	defer it.Close()
	flagsAt := func() (sample.Flags, int64, uint64, bool) {
		_, t, seq, ok := parseSampleKey(it.Key())
		if !ok {
			return 0, 0, 0, false
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, t, seq, false
		}
		var rec sampleRec
		if unmarshal(v, &rec) != nil {
			return 0, t, seq, false
		}
		return sample.Flags(rec.Flags), t, seq, true
	}
	// Backwards from the last sample at or before from.
	_, upper := sampleRangeBounds(stream, from, from)
	for valid := it.SeekLT(upper); valid; valid = it.Prev() {
		f, t, seq, ok := flagsAt()
		if ok && f.Has(sample.Keyframe) {
			vs.Found, vs.T, vs.Seq = true, t, seq
			return vs, nil
		}
	}
	if err := it.Error(); err != nil {
		return vs, fmt.Errorf("video start %s: %w", stream, err)
	}
	// No keyframe at or before from: the first one inside the window.
	lower := appendSampleKey(nil, stream, from, 0)
	for valid := it.SeekGE(lower); valid; valid = it.Next() {
		f, t, seq, ok := flagsAt()
		if t > to {
			break
		}
		if ok && f.Has(sample.Keyframe) {
			vs.Found, vs.T, vs.Seq = true, t, seq
			return vs, nil
		}
		vs.Skipped++
	}
	if err := it.Error(); err != nil {
		return vs, fmt.Errorf("video start %s: %w", stream, err)
	}
	return vs, nil
}

// MergeFrom yields the samples of streams with T in [from, to] in (T,
// stream, seq) order, as Merge does, except that a stream with an entry in
// starts begins at that start instead (earlier than from for pre-roll, or
// later), and yields nothing if its start was not found.
func (s *Store) MergeFrom(streams []string, starts map[string]sample.VideoStart, from, to int64) func(yield func(sample.Sample, error) bool) {
	return s.mergeFrom(streams, starts, from, to, false)
}

// MergeFromShared is MergeFrom for a reader that is done with each sample
// before it asks for the next: a payload read from a segment file (video
// frames, large records) is only valid until the next sample is yielded,
// since the next one of its stream is read into the same buffer. This
// spares an allocation per frame: export reads every episode once,
// 8 cameras x 30 frames/s of about 17 kB each. Samples stored inline in
// Pebble still get their own copy.
func (s *Store) MergeFromShared(streams []string, starts map[string]sample.VideoStart, from, to int64) func(yield func(sample.Sample, error) bool) {
	return s.mergeFrom(streams, starts, from, to, true)
}

func (s *Store) mergeFrom(streams []string, starts map[string]sample.VideoStart, from, to int64, shared bool) func(yield func(sample.Sample, error) bool) {
	lo := from
	for _, st := range starts {
		if st.Found && st.T < lo {
			lo = st.T
		}
	}
	streams = slices.Clone(streams)
	return func(yield func(sample.Sample, error) bool) {
		for sm, err := range s.merge(streams, lo, to, shared) {
			if err == nil || sm.Stream != "" {
				if st, ok := starts[sm.Stream]; ok {
					if !st.Found || st.Before(sm.T, sm.Seq) {
						continue
					}
				} else if sm.T < from {
					continue
				}
			}
			if !yield(sm, err) {
				return
			}
		}
	}
}

// keepKeyframes moves the start of every protected span of a video stream
// back to the last keyframe at or before it (see VideoStart), so that
// eviction of the uncovered timeline never removes the keyframe a covered
// window's video starts at. Other streams are left as they are.
func (s *Store) keepKeyframes(prot map[string]spans) {
	for st, ss := range prot {
		descs, err := s.Descriptors(st)
		if err != nil || len(descs) == 0 || descs[len(descs)-1].Kind != sample.KindVideo {
			continue
		}
		for i := range ss {
			if vs, err := s.VideoStart(st, ss[i].from, ss[i].from); err == nil && vs.Found && vs.T < ss[i].from {
				ss[i].from = vs.T
			}
		}
		prot[st] = ss.normalize()
	}
}
