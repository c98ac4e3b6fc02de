package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/episoded/episoded/sample"
)

var errSimulatedCrash = errors.New("storage: simulated crash (test)")

// maxBatchBytes caps one Pebble batch (see pending.batches).
const maxBatchBytes = 4 << 20

// keyOverhead approximates the bytes a sample costs beyond its payload
// (key, record fields, memtable overhead), for pending-bytes accounting.
const keyOverhead = 64

// pending is everything queued for the next commit.
type pending struct {
	// batches hold inline samples, already encoded, in Append order. A new
	// batch starts before an Append would take the current one past
	// cutBytes (see Append): Pebble turns a batch bigger than half a
	// memtable into its own flushable, forcing a memtable rotation and
	// flush on every commit, and a batch whose buffer outgrew what
	// newBatch retains is reallocated on its next use.
	batches []*pebble.Batch
	// reserve[i] is what the commit will add to batches[i]: the index
	// entries of the large samples queued in it.
	reserve []int
	large   []largeEntry // samples whose payload goes to a segment file
	dones   []func(error)
	bytes   int64
	n       int
	ext     extents // per stream, the T extent of the queued samples
}

type largeEntry struct {
	batch   int // index in pending.batches of the Append's batch
	key     []byte
	rec     sampleRec
	payload []byte
	stream  string
	t       int64
}

func newPending() *pending { return &pending{ext: make(extents)} }

var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// Append queues samples (Stream, Seq and T set by the caller) for the next
// commit. done, if not nil, is called exactly once from the store's commit
// goroutine: nil once every sample is durable, or the commit's error.
// done is only called when Append returns nil. It runs on the goroutine
// that commits (Run's, or Close's) and must not block.
//
// Append never does disk I/O. It blocks only when MaxPending bytes are
// already queued (a slow disk or a Pebble write stall), for at most
// AppendTimeout, and then returns ErrOverloaded. It returns ErrFull when
// the samples would not fit the room the last space check left (quota,
// min_free, the disk; counting what is queued and in flight), or after
// the filesystem said ENOSPC until space returns; ErrFailed after a fatal
// Pebble error.
func (s *Store) Append(samples []sample.Sample, done func(error)) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if s.failed.Load() {
		return ErrFailed
	}
	if s.enospc.refusing() {
		return s.refuse(len(samples))
	}
	var size int64
	for i := range samples {
		if err := checkStream(samples[i].Stream); err != nil {
			return fmt.Errorf("append: %w", err)
		}
		size += int64(len(samples[i].Payload)) + keyOverhead
	}
	if size > s.opts.MaxPending {
		return fmt.Errorf("append: %w: %d bytes in one call exceeds MaxPending %d", ErrInvalid, size, s.opts.MaxPending)
	}

	// Encode inline samples outside the lock. enc holds key/value pairs
	// back to back; large samples are only referenced.
	bufp := scratchPool.Get().(*[]byte)
	enc := (*bufp)[:0]
	type kv struct{ k0, k1, v1 int }
	var kvs []kv
	var large []largeEntry
	for i := range samples {
		sm := &samples[i]
		rec := sampleRec{V: formatVersion, SrcT: sm.SrcT, RecvT: sm.RecvT, Flags: uint8(sm.Flags), Lost: sm.Lost, Dropped: sm.Dropped, PTSOffset: sm.PTSOffset}
		if s.opts.SegmentThreshold > 0 && len(sm.Payload) >= s.opts.SegmentThreshold {
			large = append(large, largeEntry{
				key: appendSampleKey(make([]byte, 0, sampleKeyLen(len(sm.Stream))), sm.Stream, sm.T, sm.Seq),
				rec: rec, payload: sm.Payload, stream: sm.Stream, t: sm.T,
			})
			continue
		}
		rec.Payload = sm.Payload
		k0 := len(enc)
		enc = appendSampleKey(enc, sm.Stream, sm.T, sm.Seq)
		k1 := len(enc)
		var err error
		enc, err = appendRecord(enc, &rec)
		if err != nil {
			*bufp = enc
			scratchPool.Put(bufp)
			return fmt.Errorf("append: encode sample %s seq %d: %w", sm.Stream, sm.Seq, err)
		}
		kvs = append(kvs, kv{k0, k1, len(enc)})
	}

	s.mu.Lock()
	// The hard floor: what the last check measured, less what was
	// committed since and what is queued or in flight.
	if s.room.Load()-s.estimate.Load()-s.mu.bytes-size < 0 {
		s.mu.Unlock()
		*bufp = enc
		scratchPool.Put(bufp)
		return s.refuse(len(samples))
	}
	var timer *time.Timer
	for s.mu.bytes+size > s.opts.MaxPending && !s.mu.stopped {
		if timer == nil {
			timer = time.NewTimer(s.opts.AppendTimeout)
			defer timer.Stop()
		}
		freed := s.mu.freed
		s.mu.Unlock()
		s.kick(s.kickCommit)
		select {
		case <-freed:
		case <-timer.C:
			s.m.overloaded.Add(float64(len(samples)))
			*bufp = enc
			scratchPool.Put(bufp)
			return ErrOverloaded
		case <-s.closing:
			*bufp = enc
			scratchPool.Put(bufp)
			return ErrClosed
		}
		s.mu.Lock()
	}
	if s.mu.stopped {
		s.mu.Unlock()
		*bufp = enc
		scratchPool.Put(bufp)
		return ErrClosed
	}
	p := s.mu.p
	// Every sample of one Append goes into one batch (inline records now,
	// index entries of large payloads at commit), in Append order, so a
	// crash keeps a prefix of the Appends: never a hole in a stream.
	// A batch is cut before this Append, with the index entries its
	// large samples will add at commit, would take it past cutBytes
	// (unless it is empty), so that its buffer stays within what
	// newBatch retains for reuse.
	need, reserve := batchSize(len(enc), len(kvs)), indexReserve(large)
	if n := len(p.batches); n == 0 || ((p.batches[n-1].Count() > 0 || p.reserve[n-1] > 0) &&
		p.batches[n-1].Len()+p.reserve[n-1]+need+reserve > cutBytes(s.batchBytes)) {
		p.batches = append(p.batches, s.newBatch())
		p.reserve = append(p.reserve, 0)
	}
	bi := len(p.batches) - 1
	p.reserve[bi] += reserve
	b := p.batches[bi]
	for _, e := range kvs {
		// Batch.Set copies key and value into the batch.
		_ = b.Set(enc[e.k0:e.k1], enc[e.k1:e.v1], nil)
	}
	for i := range large {
		large[i].batch = bi
	}
	p.large = append(p.large, large...)
	if done != nil {
		p.dones = append(p.dones, done)
	}
	p.bytes += size
	p.n += len(samples)
	p.ext.add(samples)
	s.mu.bytes += size
	kick := p.bytes >= s.opts.CommitBytes
	s.mu.Unlock()
	*bufp = enc
	scratchPool.Put(bufp)
	s.m.pendingBytes.Add(float64(size))
	if kick {
		s.kick(s.kickCommit)
	}
	return nil
}

// spareBatches is how many committed batches are kept for reuse: a
// commit of small records uses one or two.
const spareBatches = 4

// batchSize is what n keys and values of enc bytes in all take in a
// Pebble batch: each entry adds a kind byte and two uvarint lengths.
func batchSize(enc, n int) int { return enc + n*(1+2*binary.MaxVarintLen32) }

// maxIndexRec bounds an index entry's encoded record (a sampleRec with
// its segment reference; TestIndexRecordFits).
const maxIndexRec = 128

// indexReserve is what the index entries of large take in a batch.
func indexReserve(large []largeEntry) int {
	n := 0
	for i := range large {
		n += batchSize(len(large[i].key)+maxIndexRec, 1)
	}
	return n
}

// cutBytes is how full Append lets a batch get: batchBytes less a
// sixteenth, the room the first batch of a commit keeps for the records
// of the segments the commit touched (writeSegmentsLocked).
func cutBytes(batchBytes int) int { return batchBytes - batchBytes/16 }

// newBatch returns an empty batch, reused across commits: allocating a
// fresh 4 MiB batch for every 100 ms commit was half of all the bytes the
// MQTT path allocated. A new batch starts small and grows (by doubling)
// to what commits need; a recycled one keeps its buffer up to
// batchBytes rounded up to a power of two, so a daemon whose commits
// hold a few KiB of index entries and telemetry keeps a few KiB per
// batch, not batchBytes each (issue 20: four preallocated 2 MiB batches
// were a quarter of the daemon's live heap). After a burst of big commits
// (an MQTT flood) the spares keep up to spareBatches x batchBytes.
func (s *Store) newBatch() *pebble.Batch {
	s.spare.Lock()
	if n := len(s.spare.batches); n > 0 {
		b := s.spare.batches[n-1]
		s.spare.batches = s.spare.batches[:n-1]
		s.spare.Unlock()
		return b
	}
	s.spare.Unlock()
	return s.db.NewBatch(pebble.WithMaxRetainedSizeBytes(1 << bits.Len(uint(s.batchBytes-1))))
}

// recycleBatch keeps a committed (or abandoned) batch for reuse, or closes
// it when enough are kept.
func (s *Store) recycleBatch(b *pebble.Batch) {
	s.spare.Lock()
	defer s.spare.Unlock()
	if len(s.spare.batches) >= spareBatches {
		_ = b.Close()
		return
	}
	b.Reset() // keeps the buffer: its capacity is within WithMaxRetainedSizeBytes
	s.spare.batches = append(s.spare.batches, b)
}

// refuse counts n samples refused for space, raises the full alarm and
// asks the watcher to evict or re-measure.
func (s *Store) refuse(n int) error {
	s.m.rejected.Add(float64(n))
	if !s.full.Load() {
		s.setFull(true, s.usageSnapshot())
	}
	s.kick(s.kickWatch)
	return ErrFull
}

func (s *Store) usageSnapshot() Usage {
	s.usage.Lock()
	defer s.usage.Unlock()
	return s.usage.u
}

// kick wakes a worker without blocking: a kick already pending is enough.
func (s *Store) kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// commit makes everything pending durable: payloads are written to
// segment files and fdatasync'ed, then one Pebble batch holding the index
// entries, inline samples and segment sizes is committed with fsync.
// Callers hold commitMu.
func (s *Store) commit() error {
	s.mu.Lock()
	p := s.mu.p
	if p.n == 0 && len(p.dones) == 0 {
		s.mu.Unlock()
		return nil
	}
	s.mu.p = newPending()
	s.mu.Unlock()

	start := time.Now()
	err := s.commitPending(p)
	elapsed := time.Since(start)

	if err == nil {
		// Counted before the pending bytes are released, so that Append's
		// room check never misses these bytes.
		if s.estimate.Add(p.bytes) > s.spaceSlack() {
			s.kick(s.kickWatch)
		}
	}
	// Even a failed commit may have applied some batches: retention must
	// look at their streams.
	s.tl.committed(p.ext)
	s.mu.Lock()
	s.mu.bytes -= p.bytes
	close(s.mu.freed)
	s.mu.freed = make(chan struct{})
	s.mu.Unlock()
	s.m.pendingBytes.Sub(float64(p.bytes))

	if err != nil {
		err = fmt.Errorf("commit %d samples: %w", p.n, err)
		s.m.commitErrors.Inc()
	} else {
		s.m.commitSeconds.Observe(elapsed.Seconds())
		if s.commitHook != nil {
			s.commitHook(elapsed)
		}
		s.m.samplesWritten.Add(float64(p.n))
		s.m.bytesWritten.Add(float64(p.bytes))
	}
	if err != nil && isENOSPC(err) && s.enospc.report() {
		s.log.Error("disk full (ENOSPC) on commit: refusing samples until space returns", "err", err)
		s.kick(s.kickWatch)
	}
	for _, d := range p.dones {
		d(err)
	}
	return err
}

func (s *Store) commitPending(p *pending) (err error) {
	defer func() {
		for _, b := range p.batches {
			if err != nil {
				// A batch that met an error is not reused (Pebble's advice).
				_ = b.Close()
				continue
			}
			s.recycleBatch(b)
		}
	}()
	if len(p.batches) == 0 {
		return nil
	}
	if len(p.large) > 0 {
		s.segMu.Lock()
		defer s.segMu.Unlock()
		if err := s.writeSegmentsLocked(p.batches, p.large); err != nil {
			return err
		}
	}
	// Batches are committed in Append order; only the last one syncs the
	// WAL, which makes all of them durable. A crash in between can leave
	// a prefix of the batches, never a later batch without an earlier one.
	for i, b := range p.batches {
		if s.testCrashAfter > 0 && i == s.testCrashAfter {
			return errSimulatedCrash
		}
		b = s.sortBatch(b)
		p.batches[i] = b
		opt := pebble.NoSync
		if i == len(p.batches)-1 {
			opt = pebble.Sync
		}
		if err := s.commitBatch(b, opt); err != nil {
			return err
		}
	}
	if len(p.large) > 0 {
		s.segCommittedLocked()
	}
	return nil
}

// batchEntry is one key/value of a batch, pointing into its buffer.
type batchEntry struct{ k, v []byte }

func cmpEntries(x, y batchEntry) int { return bytes.Compare(x.k, y.k) }

// batchSorter is sortBatch's scratch, reused across commits (commits are
// serialized by commitMu).
type batchSorter struct {
	index   map[string]int // bucket key -> bucket
	names   [][]byte       // bucket keys, pointing into the batch
	buckets [][]batchEntry
	order   []int
}

// sortBatch returns a batch holding b's entries in key order (b is
// recycled), or b itself when it is already sorted or holds anything but
// plain sets. Appends interleave streams, so a batch in Append order puts
// each record somewhere else in the memtable's skiplist: the search for
// its place, a cache miss per level, was a fifth of the store's CPU per
// small record. In key order each insert lands just after the previous
// one, where the skiplist's insert hint already points.
//
// A stream's records arrive in time order, so entries are bucketed by
// stream (sample keys: 's' + stream + 0x00; any other key is a bucket of
// its own), the buckets are ordered by that prefix, which orders their
// keys too, and a bucket is sorted (stably) only if it is not already.
//
// A batch is atomic, so the order of its entries is invisible: the crash
// semantics (a prefix of the batches, each Append in one batch) are
// unchanged, and a key set twice in one batch keeps its last value.
// Callers hold commitMu.
func (s *Store) sortBatch(b *pebble.Batch) *pebble.Batch {
	if b.Count() < 2 {
		return b
	}
	st := &s.sorter
	if st.index == nil {
		st.index = make(map[string]int)
	}
	clear(st.index)
	st.names = st.names[:0]
	defer func() {
		for i := range st.buckets {
			clear(st.buckets[i])
			st.buckets[i] = st.buckets[i][:0]
		}
		clear(st.names)
	}()
	sorted := true
	var prev []byte
	r := b.Reader()
	for {
		kind, k, v, ok, err := r.Next()
		if err != nil || (ok && kind != pebble.InternalKeyKindSet) {
			return b
		}
		if !ok {
			break
		}
		if prev != nil && bytes.Compare(prev, k) > 0 {
			sorted = false
		}
		prev = k
		bk := k
		if len(k) > 1 && k[0] == pfxSample {
			if i := bytes.IndexByte(k[1:], 0); i >= 0 {
				bk = k[:i+2]
			}
		}
		n, seen := st.index[string(bk)]
		if !seen {
			n = len(st.names)
			st.index[string(bk)] = n
			st.names = append(st.names, bk)
			if n == len(st.buckets) {
				st.buckets = append(st.buckets, nil)
			}
		}
		st.buckets[n] = append(st.buckets[n], batchEntry{k, v})
	}
	if sorted {
		return b
	}
	st.order = st.order[:0]
	for i := range st.names {
		st.order = append(st.order, i)
	}
	slices.SortFunc(st.order, func(x, y int) int { return bytes.Compare(st.names[x], st.names[y]) })
	nb := s.newBatch()
	for _, n := range st.order {
		bucket := st.buckets[n]
		if !slices.IsSortedFunc(bucket, cmpEntries) {
			slices.SortStableFunc(bucket, cmpEntries)
		}
		for _, e := range bucket {
			_ = nb.Set(e.k, e.v, nil)
		}
	}
	s.recycleBatch(b)
	return nb
}

// commitBatch commits one Pebble batch. Pebble treats a failed WAL write or
// sync as fatal and calls Logger.Fatalf, which panics (pebbleLogger) on
// this goroutine: the panic becomes ErrFailed, the store stops taking
// samples and raises an alarm, and the daemon stays up to serve what is
// stored. The batch is not reported durable.
func (s *Store) commitBatch(b *pebble.Batch, opt *pebble.WriteOptions) (err error) {
	defer func() {
		if r := recover(); r != nil {
			msg, ok := r.(string)
			if !ok || !strings.HasPrefix(msg, pebbleFatalPrefix) {
				panic(r)
			}
			if !s.failed.Swap(true) {
				s.log.Error("pebble failed on the commit path; refusing samples until restart", "err", msg)
				s.kick(s.kickWatch)
			}
			err = fmt.Errorf("%w: %s", ErrFailed, msg)
		}
	}()
	return b.Commit(opt)
}
