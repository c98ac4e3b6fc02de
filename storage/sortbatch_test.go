package storage

import (
	"bytes"
	"fmt"
	"math"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/episoded/episoded/sample"
)

// TestSortBatch: a batch in Append order (streams interleaved, one stream
// out of time order, a key set twice, segment keys among the samples)
// comes out in key order with every entry, the twice-set key's values in
// their original order (so the last one wins), and an already sorted
// batch or one with anything but sets is left as it is.
func TestSortBatch(t *testing.T) {
	s := openRunning(t, Options{Dir: t.TempDir()})
	s.commitMu.Lock()
	defer s.commitMu.Unlock()

	type kv struct{ k, v string }
	var in []kv
	streams := []string{"cell/b", "cell/a", "cell/a/x", "cell/c"}
	for i := range 20 {
		for j, st := range streams {
			tm := int64(i)
			if st == "cell/c" {
				tm = int64(20 - i) // out of time order
			}
			in = append(in, kv{string(appendSampleKey(nil, st, tm, uint64(i))), fmt.Sprintf("%d/%d", i, j)})
		}
		if i%7 == 0 {
			in = append(in, kv{string(segKey(uint64(100 - i))), fmt.Sprintf("seg%d", i)})
		}
	}
	dup := string(appendSampleKey(nil, "cell/a", 5, 5))
	in = append(in, kv{dup, "second"})

	b := s.newBatch()
	for _, e := range in {
		if err := b.Set([]byte(e.k), []byte(e.v), nil); err != nil {
			t.Fatal(err)
		}
	}
	out := s.sortBatch(b)
	if out == b {
		t.Fatal("an unsorted batch came back as it was")
	}
	var got []kv
	r := out.Reader()
	for {
		kind, k, v, ok, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if kind != pebble.InternalKeyKindSet {
			t.Fatalf("kind %v", kind)
		}
		got = append(got, kv{string(k), string(v)})
	}
	if len(got) != len(in) {
		t.Fatalf("%d entries out, %d in", len(got), len(in))
	}
	count := map[kv]int{}
	for _, e := range in {
		count[e]++
	}
	for i, e := range got {
		count[e]--
		if i > 0 && bytes.Compare([]byte(got[i-1].k), []byte(e.k)) > 0 {
			t.Fatalf("entry %d (%s) sorts before entry %d (%s)", i, describeKey([]byte(e.k)), i-1, describeKey([]byte(got[i-1].k)))
		}
		if e.k == dup && e.v == "second" && (i == 0 || got[i-1].k != dup) {
			t.Fatalf("the second value of a twice-set key does not follow its first")
		}
	}
	for e, n := range count {
		if n != 0 {
			t.Fatalf("entry %q=%q: %d more in than out", e.k, e.v, n)
		}
	}
	if again := s.sortBatch(out); again != out {
		t.Fatal("a sorted batch was rebuilt")
	}

	mixed := s.newBatch()
	_ = mixed.Set(appendSampleKey(nil, "cell/b", 1, 1), []byte("x"), nil)
	_ = mixed.Delete(appendSampleKey(nil, "cell/a", 1, 1), nil)
	if s.sortBatch(mixed) != mixed {
		t.Fatal("a batch with a delete was rebuilt")
	}
}

// TestBatchesKeepWhatCommitsNeed: a batch is cut before an Append would
// take it past batchBytes, so a recycled batch keeps its buffer (within
// what newBatch retains) instead of being dropped and allocated afresh
// every commit; and a store whose commits hold a few KiB keeps a few KiB
// per spare batch, not batchBytes each (issue 20: four preallocated
// 2 MiB batches were a quarter of the daemon's live heap).
func TestBatchesKeepWhatCommitsNeed(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), MinFree: -1, Logger: testLogger(t)}) // not running: this test commits
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.batchBytes = 64 << 10
	commit := func() {
		t.Helper()
		s.commitMu.Lock()
		defer s.commitMu.Unlock()
		if err := s.commit(); err != nil {
			t.Fatal(err)
		}
	}
	appendN := func(n, size int) {
		t.Helper()
		for i := range n {
			seq := uint64(i + 1)
			st := fmt.Sprintf("cell/s%d", i%3)
			if err := s.Append([]sample.Sample{{Stream: st, Seq: seq, T: int64(seq), Payload: payloadFor(st, seq, size)}}, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	spares := func() (caps []int) {
		s.spare.Lock()
		defer s.spare.Unlock()
		for _, b := range s.spare.batches {
			caps = append(caps, cap(b.Repr()))
		}
		return caps
	}

	// A commit of a few small records.
	appendN(10, 100)
	commit()
	caps := spares()
	if len(caps) == 0 {
		t.Fatal("no batch kept for reuse after a commit")
	}
	for _, c := range caps {
		if c > 16<<10 {
			t.Errorf("after a commit of 10 records of 100 B, a spare batch holds %d bytes; want at most 16 KiB", c)
		}
	}

	// A commit of 400 KiB in 1 KiB records: several batches, each within
	// batchBytes, all kept.
	appendN(400, 1024)
	s.mu.Lock()
	var lens []int
	for _, b := range s.mu.p.batches {
		lens = append(lens, b.Len())
	}
	s.mu.Unlock()
	if len(lens) < 6 {
		t.Fatalf("400 KiB queued in %d batches of at most %d bytes", len(lens), s.batchBytes)
	}
	for i, l := range lens {
		if l > s.batchBytes {
			t.Errorf("batch %d holds %d bytes, more than batchBytes %d", i, l, s.batchBytes)
		}
	}
	commit()
	checkKept := func(what string) {
		t.Helper()
		caps := spares()
		if len(caps) != spareBatches {
			t.Errorf("%s: %d spare batches; want %d", what, len(caps), spareBatches)
		}
		for _, c := range caps {
			// A batch whose buffer outgrew what newBatch retains comes
			// back empty (1 KiB when first used): kept, it holds about
			// what the commit put in it.
			if c > s.batchBytes || c < s.batchBytes/2 {
				t.Errorf("%s: a spare batch keeps %d bytes; want the buffer it filled, within batchBytes %d", what, c, s.batchBytes)
			}
		}
	}
	checkKept("after 400 KiB of inline records")

	// Inline records and large ones (to segment files) interleaved: the
	// index entries that the commit adds to each Append's batch were
	// counted when the batch was cut.
	for i := range 2000 {
		seq := uint64(1000 + i)
		size := 8 << 10
		if i%5 == 0 {
			size = 1024
		}
		if err := s.Append([]sample.Sample{{Stream: "cell/mixed", Seq: seq, T: int64(seq), Payload: payloadFor("cell/mixed", seq, size)}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	commit()
	checkKept("after inline and large records")
}

// TestIndexRecordFits: an index entry's record with every field at its
// widest fits maxIndexRec, what Append reserves for it in a batch.
func TestIndexRecordFits(t *testing.T) {
	rec := sampleRec{V: formatVersion, SrcT: math.MinInt64, RecvT: math.MinInt64, Flags: math.MaxUint8, Lost: math.MaxUint32, Dropped: math.MaxUint32,
		Seg: math.MaxUint64, Off: math.MinInt64, Len: math.MaxUint32, Sum: math.MaxUint32, PTSOffset: math.MinInt64}
	b, err := appendRecord(nil, &rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > maxIndexRec {
		t.Errorf("an index record takes %d bytes, more than maxIndexRec %d", len(b), maxIndexRec)
	}
}
