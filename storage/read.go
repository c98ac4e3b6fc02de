package storage

import (
	"container/heap"
	"errors"
	"fmt"
	"iter"
	"math"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/episoded/episoded/sample"
)

// CorruptError reports a record that could not be decoded. It matches
// ErrCorrupt with errors.Is.
type CorruptError struct {
	Key []byte
	Err error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("storage: corrupt record: %s: %v", describeKey(e.Key), e.Err)
}
func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

// decodeSample turns a sample key/value into a Sample. On error the
// returned sample still carries Stream, T and Seq from the key.
func (s *Store) decodeSample(key, value []byte, segs *segReader) (sample.Sample, error) {
	stream, t, seq, ok := parseSampleKey(key)
	sm := sample.Sample{Stream: stream, T: t, Seq: seq}
	if !ok {
		return sm, &CorruptError{Key: slices.Clone(key), Err: errors.New("malformed sample key")}
	}
	var rec sampleRec
	if err := unmarshal(value, &rec); err != nil {
		return sm, &CorruptError{Key: slices.Clone(key), Err: err}
	}
	sm.SrcT, sm.RecvT, sm.Flags, sm.Lost, sm.Dropped = rec.SrcT, rec.RecvT, sample.Flags(rec.Flags), rec.Lost, rec.Dropped
	sm.PTSOffset = rec.PTSOffset
	if rec.Seg != 0 {
		p, err := segs.read(&rec)
		if err != nil {
			return sm, &CorruptError{Key: slices.Clone(key), Err: err}
		}
		sm.Payload = p
	} else if rec.Payload != nil {
		// unmarshal already copied the bytes out of Pebble's buffer.
		sm.Payload = rec.Payload
	}
	return sm, nil
}

// Range yields the committed samples of stream with T in [from, to], ordered
// by (T, Seq). A record that cannot be decoded is yielded as an error
// (with Stream, T and Seq set from its key) and iteration goes on.
func (s *Store) Range(stream string, from, to int64) iter.Seq2[sample.Sample, error] {
	return s.rangeSamples(stream, from, to, false)
}

// rangeSamples is Range; with shared, payloads read from segment files
// share one buffer, overwritten by the next sample's (see MergeFromShared).
func (s *Store) rangeSamples(stream string, from, to int64, shared bool) iter.Seq2[sample.Sample, error] {
	return func(yield func(sample.Sample, error) bool) {
		if s.closed.Load() {
			yield(sample.Sample{}, ErrClosed)
			return
		}
		if err := checkStream(stream); err != nil {
			yield(sample.Sample{}, err)
			return
		}
		if from > to {
			return
		}
		lo, hi := sampleRangeBounds(stream, from, to)
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			yield(sample.Sample{}, fmt.Errorf("range %s: %w", stream, err))
			return
		}
		segs := &segReader{s: s, shared: shared}
		defer segs.close()
		defer it.Close()
		for it.First(); it.Valid(); it.Next() {
			v, err := it.ValueAndErr()
			var sm sample.Sample
			if err != nil {
				err = &CorruptError{Key: slices.Clone(it.Key()), Err: err}
			} else {
				sm, err = s.decodeSample(it.Key(), v, segs)
			}
			if !yield(sm, err) {
				return
			}
		}
		if err := it.Error(); err != nil {
			yield(sample.Sample{}, fmt.Errorf("range %s: %w", stream, err))
		}
	}
}

// mergeSrc is one stream's cursor in Merge.
type mergeSrc struct {
	next func() (sample.Sample, error, bool)
	stop func()
	cur  sample.Sample
	err  error
}

type mergeHeap []*mergeSrc

func (h mergeHeap) Len() int { return len(h) }
func (h mergeHeap) Less(i, j int) bool {
	a, b := &h[i].cur, &h[j].cur
	if a.T != b.T {
		return a.T < b.T
	}
	if a.Stream != b.Stream {
		return a.Stream < b.Stream
	}
	return a.Seq < b.Seq
}
func (h mergeHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *mergeHeap) Push(x any)   { *h = append(*h, x.(*mergeSrc)) }
func (h *mergeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Merge yields the samples of all streams with T in [from, to], ordered by
// (T, Stream, Seq). Errors (such as a corrupt record) are yielded in place
// and iteration goes on.
func (s *Store) Merge(streams []string, from, to int64) iter.Seq2[sample.Sample, error] {
	return s.merge(streams, from, to, false)
}

// merge is Merge; shared as in rangeSamples (each stream has its own
// buffer, refilled only after its current sample was yielded).
func (s *Store) merge(streams []string, from, to int64, shared bool) iter.Seq2[sample.Sample, error] {
	return func(yield func(sample.Sample, error) bool) {
		streams := slices.Clone(streams)
		slices.Sort(streams)
		streams = slices.Compact(streams)
		h := make(mergeHeap, 0, len(streams))
		defer func() {
			for _, src := range h {
				src.stop()
			}
		}()
		for _, st := range streams {
			next, stop := iter.Pull2(s.rangeSamples(st, from, to, shared))
			src := &mergeSrc{stop: stop}
			src.next = func() (sample.Sample, error, bool) { return next() }
			var ok bool
			if src.cur, src.err, ok = src.next(); ok {
				h = append(h, src)
			} else {
				stop()
			}
		}
		heap.Init(&h)
		for len(h) > 0 {
			src := h[0]
			if !yield(src.cur, src.err) {
				return
			}
			var ok bool
			if src.cur, src.err, ok = src.next(); ok {
				heap.Fix(&h, 0)
			} else {
				src.stop()
				heap.Pop(&h)
			}
		}
	}
}

// EpisodeSamples yields the samples of every stream of an episode over its
// window, merged in (T, Stream, Seq) order. A recording episode's window
// runs to the newest sample.
func (s *Store) EpisodeSamples(id string) iter.Seq2[sample.Sample, error] {
	return func(yield func(sample.Sample, error) bool) {
		e, err := s.Episode(id)
		if err != nil {
			yield(sample.Sample{}, err)
			return
		}
		from, to := e.Window(maxTime)
		for sm, err := range s.Merge(e.Streams, from, to) {
			if !yield(sm, err) {
				return
			}
		}
	}
}

// LastSample returns the sample of stream with the highest (T, Seq), or
// ErrNotFound. Right after Open (the use for continuing seq numbering and
// closing interrupted episodes) it is durable; while Run is committing it
// may be one of a commit whose fsync is still in flight. If that record is corrupt, the error comes with
// Stream, T and Seq taken from its key, so seq numbering can still go on.
func (s *Store) LastSample(stream string) (sample.Sample, error) {
	if s.closed.Load() {
		return sample.Sample{}, ErrClosed
	}
	if err := checkStream(stream); err != nil {
		return sample.Sample{}, err
	}
	lo, hi := streamBounds(stream)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return sample.Sample{}, fmt.Errorf("last sample %s: %w", stream, err)
	}
	defer it.Close()
	if !it.Last() {
		if err := it.Error(); err != nil {
			return sample.Sample{}, fmt.Errorf("last sample %s: %w", stream, err)
		}
		return sample.Sample{}, fmt.Errorf("last sample %s: %w", stream, ErrNotFound)
	}
	segs := &segReader{s: s}
	defer segs.close()
	v, err := it.ValueAndErr()
	if err != nil {
		return sample.Sample{}, fmt.Errorf("last sample %s: %w", stream, err)
	}
	return s.decodeSample(it.Key(), v, segs)
}

// Streams returns every stream that has a descriptor or samples, sorted.
func (s *Store) Streams() ([]string, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	set := make(map[string]struct{})
	for _, p := range []byte{pfxDesc, pfxSample} {
		lo, hi := prefixBounds(p)
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return nil, fmt.Errorf("list streams: %w", err)
		}
		for valid := it.First(); valid; {
			k := it.Key()
			end := slices.Index(k[1:], 0)
			if end < 0 {
				valid = it.Next()
				continue
			}
			name := string(k[1 : 1+end])
			set[name] = struct{}{}
			// Skip to the next stream: prefix + name + 0x01.
			next := append([]byte{p}, name...)
			valid = it.SeekGE(append(next, 1))
		}
		err = it.Close()
		if err != nil {
			return nil, fmt.Errorf("list streams: %w", err)
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out, nil
}

// IndexEntry is one sample as the index knows it: everything but the
// payload, and the payload's size.
type IndexEntry struct {
	// Sample has Stream, Seq, T, SrcT, RecvT, Flags, Lost and Dropped set
	// and no Payload.
	Sample sample.Sample
	// Size is the payload's length in bytes.
	Size int
}

// RangeIndex is Range without payloads: it yields the index entries of the
// committed samples of stream with T in [from, to], ordered by (T, Seq),
// and reads no payload (no segment file is opened, and inline payloads are
// skipped, not copied). Quality reports are built from it. A record that
// cannot be decoded is yielded as an error (with Stream, T and Seq set from
// its key) and iteration goes on.
func (s *Store) RangeIndex(stream string, from, to int64) iter.Seq2[IndexEntry, error] {
	return func(yield func(IndexEntry, error) bool) {
		if s.closed.Load() {
			yield(IndexEntry{}, ErrClosed)
			return
		}
		if err := checkStream(stream); err != nil {
			yield(IndexEntry{}, err)
			return
		}
		if from > to {
			return
		}
		lo, hi := sampleRangeBounds(stream, from, to)
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			yield(IndexEntry{}, fmt.Errorf("range index %s: %w", stream, err))
			return
		}
		defer it.Close()
		for it.First(); it.Valid(); it.Next() {
			key := it.Key()
			st, t, seq, ok := parseSampleKey(key)
			e := IndexEntry{Sample: sample.Sample{Stream: st, T: t, Seq: seq}}
			if !ok {
				err = &CorruptError{Key: slices.Clone(key), Err: errors.New("malformed sample key")}
			} else if v, verr := it.ValueAndErr(); verr != nil {
				err = &CorruptError{Key: slices.Clone(key), Err: verr}
			} else if err = decodeIndex(v, &e); err != nil {
				err = &CorruptError{Key: slices.Clone(key), Err: err}
			}
			if !yield(e, err) {
				return
			}
		}
		if err := it.Error(); err != nil {
			yield(IndexEntry{}, fmt.Errorf("range index %s: %w", stream, err))
		}
	}
}

// decodeIndex reads a sample record's fields but its payload. The record
// layout is the one appendRecord writes (an 11-element array); anything
// else (an older or hand-made encoding) goes through the generic decoder.
func decodeIndex(v []byte, e *IndexEntry) error {
	d := cborReader{b: v}
	n, ok := d.head(4) // 11 fields in format 1, 12 (PTSOffset) since format 2
	if !ok || (n != 11 && n != 12) {
		return decodeIndexSlow(v, e)
	}
	ver, ok1 := d.uint()
	srcT, ok2 := d.int()
	recvT, ok3 := d.int()
	flags, ok4 := d.uint()
	lost, ok5 := d.uint()
	dropped, ok6 := d.uint()
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || ver > 0xff || flags > 0xff || lost > 0xffffffff || dropped > 0xffffffff {
		return decodeIndexSlow(v, e)
	}
	inline := -1
	if d.i < len(d.b) && d.b[d.i] == 0xf6 { // null: no inline payload
		d.i++
	} else {
		n, ok := d.head(2)
		if !ok || n > uint64(len(d.b)-d.i) {
			return decodeIndexSlow(v, e)
		}
		inline = int(n)
		d.i += inline
	}
	seg, ok7 := d.uint()
	if _, ok := d.int(); !ok || !ok7 { // Off
		return decodeIndexSlow(v, e)
	}
	ln, ok8 := d.uint()
	if _, ok := d.uint(); !ok || !ok8 { // Sum
		return decodeIndexSlow(v, e)
	}
	var ptsOffset int64
	if n == 12 {
		var ok9 bool
		if ptsOffset, ok9 = d.int(); !ok9 {
			return decodeIndexSlow(v, e)
		}
	}
	if d.i != len(d.b) {
		return decodeIndexSlow(v, e)
	}
	if ver > formatVersion {
		return fmt.Errorf("%w: record version %d, this build reads up to %d", ErrNewerFormat, ver, formatVersion)
	} else if ver < 1 {
		return errors.New("record has no version")
	}
	e.Sample.SrcT, e.Sample.RecvT = srcT, recvT
	e.Sample.Flags, e.Sample.Lost, e.Sample.Dropped = sample.Flags(flags), uint32(lost), uint32(dropped)
	e.Sample.PTSOffset = ptsOffset
	e.Size = max(inline, 0)
	if seg != 0 {
		e.Size = int(ln)
	}
	return nil
}

func decodeIndexSlow(v []byte, e *IndexEntry) error {
	var rec sampleRec
	if err := unmarshal(v, &rec); err != nil {
		return err
	}
	e.Sample.SrcT, e.Sample.RecvT, e.Sample.Flags = rec.SrcT, rec.RecvT, sample.Flags(rec.Flags)
	e.Sample.Lost, e.Sample.Dropped, e.Sample.PTSOffset = rec.Lost, rec.Dropped, rec.PTSOffset
	e.Size = len(rec.Payload)
	if rec.Seg != 0 {
		e.Size = int(rec.Len)
	}
	return nil
}

// cborReader reads the few CBOR heads a sample record uses.
type cborReader struct {
	b []byte
	i int
}

// head reads a head of major type major and returns its argument.
func (r *cborReader) head(major byte) (uint64, bool) {
	if r.i >= len(r.b) || r.b[r.i]>>5 != major {
		return 0, false
	}
	ai := r.b[r.i] & 0x1f
	r.i++
	var n int
	switch {
	case ai < 24:
		return uint64(ai), true
	case ai == 24:
		n = 1
	case ai == 25:
		n = 2
	case ai == 26:
		n = 4
	case ai == 27:
		n = 8
	default:
		return 0, false
	}
	if len(r.b)-r.i < n {
		return 0, false
	}
	var v uint64
	for _, c := range r.b[r.i : r.i+n] {
		v = v<<8 | uint64(c)
	}
	r.i += n
	return v, true
}

func (r *cborReader) uint() (uint64, bool) { return r.head(0) }

func (r *cborReader) int() (int64, bool) {
	if r.i < len(r.b) && r.b[r.i]>>5 == 1 {
		v, ok := r.head(1)
		if !ok || v > math.MaxInt64 {
			return 0, false
		}
		return -1 - int64(v), true
	}
	v, ok := r.head(0)
	if !ok || v > math.MaxInt64 {
		return 0, false
	}
	return int64(v), true
}
