package storage

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// segStats are the segment totals, published for readers that must not
// wait on segMu.
type segStats struct {
	bytes int64
	count int
}

// segWriter is the open, append-only segment of one stream.
type segWriter struct {
	id     uint64
	f      vfs.File
	bw     *bufio.Writer
	size   int64 // bytes written, including the buffer
	rec    segRec
	closed bool
}

func (s *Store) segPath(id uint64) string {
	return filepath.Join(s.segDir, fmt.Sprintf("%016x.seg", id))
}

func parseSegName(name string) (uint64, bool) {
	hexID, ok := strings.CutSuffix(name, ".seg")
	if !ok || len(hexID) != 16 {
		return 0, false
	}
	id, err := strconv.ParseUint(hexID, 16, 64)
	return id, err == nil
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// writeSegmentsLocked writes the large payloads to their streams' segments
// and makes the segments durable. Each index entry goes into its Append's
// batch; the segments' new committed sizes go into the first batch, so
// that no committed index entry ever points past a segment's committed
// size (a size covering bytes no entry references yet is harmless). Called
// with segMu held; the caller commits the batches while still holding it.
func (s *Store) writeSegmentsLocked(batches []*pebble.Batch, large []largeEntry) error {
	if s.segMu.active == nil {
		s.segMu.active = make(map[string]*segWriter)
	}
	touched := make(map[uint64]*segWriter)
	var val []byte
	for i := range large {
		e := &large[i]
		w, err := s.segmentForLocked(e.stream, e.t, touched)
		if err != nil {
			return err
		}
		off := w.size
		if _, err := w.bw.Write(e.payload); err != nil {
			s.abandonLocked(w)
			return fmt.Errorf("write segment %d: %w", w.id, err)
		}
		w.size += int64(len(e.payload))
		w.rec.MinT = min(w.rec.MinT, e.t)
		w.rec.MaxT = max(w.rec.MaxT, e.t)
		e.rec.Seg, e.rec.Off, e.rec.Len = w.id, off, uint32(len(e.payload))
		e.rec.Sum = crc32.Checksum(e.payload, castagnoli)
		val, _ = appendRecord(val[:0], &e.rec)
		if err := batches[e.batch].Set(e.key, val, nil); err != nil {
			return err
		}
	}
	// Make every touched segment durable before the index that points into
	// it. Segments are synced concurrently: the disk merges the flushes.
	var wg sync.WaitGroup
	errs := make([]error, 0, len(touched))
	var errMu sync.Mutex
	for _, w := range touched {
		if w.closed {
			continue // synced when it was rolled
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.flushSync(); err != nil {
				errMu.Lock()
				errs = append(errs, fmt.Errorf("sync segment %d: %w", w.id, err))
				errMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, w := range touched {
			s.abandonLocked(w)
		}
		return err
	}
	if s.segMu.created {
		if err := s.syncSegDir(); err != nil {
			return fmt.Errorf("sync segment dir: %w", err)
		}
		s.segMu.created = false
	}
	for _, w := range touched {
		rec := w.rec
		rec.Size = w.size
		v, err := marshal(&rec)
		if err != nil {
			return err
		}
		if err := batches[0].Set(segKey(w.id), v, nil); err != nil {
			return err
		}
	}
	s.segMu.pendingTouched = touched
	return nil
}

// segCommittedLocked publishes the sizes of the segments written by the
// batch just committed. Called with segMu held.
func (s *Store) segCommittedLocked() {
	for id, w := range s.segMu.pendingTouched {
		r := s.segMu.segs[id]
		if r == nil {
			r = &segRec{}
			s.segMu.segs[id] = r
		}
		s.segMu.bytes += w.size - r.Size
		*r = w.rec
		r.Size = w.size
	}
	s.segStats.Store(segStats{s.segMu.bytes, len(s.segMu.segs)})
	s.segMu.pendingTouched = nil
}

func (w *segWriter) flushSync() error {
	if err := w.bw.Flush(); err != nil {
		return err
	}
	return w.f.SyncData() // fdatasync
}

// syncSegDir makes segment creations and removals durable.
func (s *Store) syncSegDir() error {
	d, err := s.fs.OpenDir(s.segDir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// segmentForLocked returns the open segment for a sample of stream at t,
// rolling to a new segment when t enters a later time slice or the segment
// is full. Out-of-order samples from an earlier slice go to the current
// segment; MinT/MaxT keep the segment's true span. Called with segMu held.
func (s *Store) segmentForLocked(stream string, t int64, touched map[uint64]*segWriter) (*segWriter, error) {
	slice := floorDiv(t, int64(s.opts.SegmentSlice))
	w := s.segMu.active[stream]
	if w != nil && (slice > w.rec.Slice || w.size >= s.opts.SegmentMaxBytes) {
		if err := w.flushSync(); err != nil {
			s.abandonLocked(w)
			return nil, fmt.Errorf("sync segment %d: %w", w.id, err)
		}
		w.f.Close()
		w.closed = true
		s.spareBufLocked(w)
		delete(s.segMu.active, stream)
		w = nil
	}
	if w != nil {
		touched[w.id] = w
		return w, nil
	}
	id := s.segMu.nextID
	s.segMu.nextID++
	f, err := s.fs.Create(s.segPath(id), vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, fmt.Errorf("create segment: %w", err)
	}
	s.segMu.created = true
	var bw *bufio.Writer
	if n := len(s.segMu.spareBufs); n > 0 {
		bw = s.segMu.spareBufs[n-1]
		s.segMu.spareBufs = s.segMu.spareBufs[:n-1]
		bw.Reset(f)
	} else {
		bw = bufio.NewWriterSize(f, segBufSize)
	}
	w = &segWriter{
		id: id, f: f, bw: bw,
		rec: segRec{V: formatVersion, Stream: stream, Slice: slice, MinT: t, MaxT: t},
	}
	s.segMu.active[stream] = w
	touched[id] = w
	return w, nil
}

// segBufSize is a segment writer's buffer: a commit's payloads of one
// stream (a 100 ms commit of a 4 Mbit/s camera is 50 KB, a lidar frame
// 100 KB) go out in one write. It is live heap for every stream that
// writes segments plus the spares (13 at 8 cameras and a lidar): at 1 MiB
// that was 9-13 MiB of the daemon's live heap (BenchmarkDaemonRSS8Cameras).
const segBufSize = 256 << 10

// maxSpareBufs bounds the buffers kept for reuse.
const maxSpareBufs = 4

// spareBufLocked keeps the buffer of w, flushed and closed, for the next
// segment: every stream rolls to a new segment each SegmentSlice, and a
// fresh buffer each time was most of what the commit path allocated.
func (s *Store) spareBufLocked(w *segWriter) {
	if w.bw != nil && len(s.segMu.spareBufs) < maxSpareBufs {
		w.bw.Reset(nil)
		s.segMu.spareBufs = append(s.segMu.spareBufs, w.bw)
	}
	w.bw = nil // a closed segment is never written again
}

// abandonLocked closes a segment after a write error; the next sample of
// the stream opens a new one. Bytes beyond the committed size are cut off
// at once (a segment no commit reached is removed), so that a failed
// commit, for example on ENOSPC, gives its space back; what cannot be
// cut now is truncated on the next open. Called with segMu held.
func (s *Store) abandonLocked(w *segWriter) {
	if !w.closed {
		w.f.Close()
		w.closed = true
	}
	if s.segMu.active[w.rec.Stream] == w {
		delete(s.segMu.active, w.rec.Stream)
	}
	path := s.segPath(w.id)
	if r := s.segMu.segs[w.id]; r != nil {
		if err := os.Truncate(path, r.Size); err != nil && !os.IsNotExist(err) {
			s.log.Warn("truncate abandoned segment", "segment", w.id, "err", err)
		}
	} else if err := s.fs.Remove(path); err != nil && !os.IsNotExist(err) {
		s.log.Warn("remove abandoned segment", "segment", w.id, "err", err)
	}
}

// sealLocked closes a stream's active segment (for eviction). Its data is
// durable: commits hold segMu until their batch is committed. Called with
// segMu held.
func (s *Store) sealLocked(stream string) {
	if w := s.segMu.active[stream]; w != nil {
		w.bw.Flush()
		w.f.Close()
		w.closed = true
		s.spareBufLocked(w)
		delete(s.segMu.active, stream)
	}
}

// recoverSegments loads segment records and reconciles the files: torn
// tails beyond the committed size are truncated, files no record points to
// (created by a commit that never reached Pebble) are removed.
func (s *Store) recoverSegments() error {
	if err := s.fs.MkdirAll(s.segDir, 0o750); err != nil {
		return err
	}
	s.segMu.segs = make(map[uint64]*segRec)
	s.segMu.active = make(map[string]*segWriter)
	s.segMu.punched = make(map[uint64]int64)
	lo, hi := prefixBounds(pfxSegment)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	var maxID uint64
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != 9 {
			continue
		}
		id := beUint64(k[1:])
		var rec segRec
		if err := unmarshal(it.Value(), &rec); err != nil {
			it.Close()
			return fmt.Errorf("%w: segment record %d: %v", ErrCorrupt, id, err)
		}
		s.segMu.segs[id] = &rec
		maxID = max(maxID, id+1)
	}
	if err := it.Close(); err != nil {
		return err
	}
	names, err := s.fs.List(s.segDir)
	if err != nil {
		return err
	}
	seen := make(map[uint64]bool)
	for _, name := range names {
		id, ok := parseSegName(name)
		if !ok {
			continue
		}
		maxID = max(maxID, id+1)
		path := filepath.Join(s.segDir, name)
		rec := s.segMu.segs[id]
		if rec == nil {
			s.log.Info("removing segment not referenced by the index (crash before commit)", "segment", name)
			if err := s.fs.Remove(path); err != nil {
				return err
			}
			continue
		}
		seen[id] = true
		info, err := s.fs.Stat(path)
		if err != nil {
			return err
		}
		switch {
		case info.Size() > rec.Size:
			s.log.Info("truncating torn segment tail", "segment", name, "size", info.Size(), "committed", rec.Size)
			// vfs has no truncate; Options.FS is backed by the OS filesystem.
			if err := os.Truncate(path, rec.Size); err != nil {
				return err
			}
		case info.Size() < rec.Size:
			s.log.Error("segment shorter than its committed size; samples in the missing tail will fail to read",
				"segment", name, "size", info.Size(), "committed", rec.Size)
		}
		// Holes punched by eviction take no space.
		var st syscall.Stat_t
		if syscall.Stat(path, &st) == nil && st.Blocks*512 < rec.Size {
			s.segMu.punched[id] = rec.Size - st.Blocks*512
		}
	}
	for id, rec := range s.segMu.segs {
		if !seen[id] {
			s.log.Error("segment file missing; its samples will fail to read", "segment", id, "stream", rec.Stream)
		}
		s.segMu.bytes += rec.Size - s.segMu.punched[id]
	}
	s.segStats.Store(segStats{s.segMu.bytes, len(s.segMu.segs)})
	s.segMu.nextID = max(maxID, 1)
	return s.syncSegDir()
}

func beUint64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// segReader reads payloads for one iteration, caching open files. With
// shared, every payload is read into buf (grown to the largest), so a
// payload is only valid until the next read.
type segReader struct {
	s      *Store
	files  map[uint64]segFile
	shared bool
	buf    []byte
}

type segFile struct {
	f    vfs.File
	size int64
}

func (r *segReader) read(rec *sampleRec) ([]byte, error) {
	if r.files == nil {
		r.files = make(map[uint64]segFile)
	}
	sf, ok := r.files[rec.Seg]
	if !ok {
		f, err := r.s.fs.Open(r.s.segPath(rec.Seg))
		if err != nil {
			return nil, fmt.Errorf("open segment %d: %w", rec.Seg, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("stat segment %d: %w", rec.Seg, err)
		}
		if len(r.files) >= 16 {
			r.close()
			r.files = make(map[uint64]segFile)
		}
		sf = segFile{f, st.Size()}
		r.files[rec.Seg] = sf
	}
	// Bound the read by the file before allocating: a corrupt length must
	// not turn into a huge allocation.
	if rec.Off < 0 || rec.Off+int64(rec.Len) > sf.size {
		if st, err := sf.f.Stat(); err == nil { // the active segment grows
			sf.size = st.Size()
			r.files[rec.Seg] = sf
		}
		if rec.Off < 0 || rec.Off+int64(rec.Len) > sf.size {
			return nil, fmt.Errorf("segment %d: range %d+%d beyond its %d bytes", rec.Seg, rec.Off, rec.Len, sf.size)
		}
	}
	var buf []byte
	if r.shared {
		if cap(r.buf) < int(rec.Len) {
			r.buf = make([]byte, rec.Len)
		}
		buf = r.buf[:rec.Len]
	} else {
		buf = make([]byte, rec.Len)
	}
	if _, err := sf.f.ReadAt(buf, rec.Off); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read segment %d at %d+%d: %w", rec.Seg, rec.Off, rec.Len, err)
	}
	if sum := crc32.Checksum(buf, castagnoli); sum != rec.Sum {
		return nil, fmt.Errorf("checksum mismatch in segment %d at %d+%d: %08x, want %08x", rec.Seg, rec.Off, rec.Len, sum, rec.Sum)
	}
	return buf, nil
}

func (r *segReader) close() {
	for _, sf := range r.files {
		sf.f.Close()
	}
	r.files = nil
}
