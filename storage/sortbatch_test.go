package storage

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
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
