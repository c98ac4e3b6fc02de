package storage

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/episoded/episoded/sample"
)

// TestRangeIndexReadsNoPayload: RangeIndex yields the same index fields as
// Range, and the payload sizes, for inline and segment payloads; with every
// segment file made unreadable it still works, while Range fails: it reads
// no payload.
func TestRangeIndexReadsNoPayload(t *testing.T) {
	dir := t.TempDir()
	s := openRunning(t, Options{Dir: dir})
	const stream = "c1/cam"
	var in []sample.Sample
	for i := range 200 {
		n := 10 + i
		if i%3 == 0 {
			n = 4096 + 100*i // segment payload
		}
		x := sample.Sample{Stream: stream, Seq: uint64(i + 1), T: int64(1e18) + int64(i)*33e6, SrcT: int64(-5 + i), RecvT: math.MaxInt64 - int64(i),
			Flags: sample.Flags(i % 16), Lost: uint32(i * 7), Dropped: uint32(i * 1000003), Payload: payloadFor(stream, uint64(i), n)}
		in = append(in, x)
	}
	appendWait(t, s, in)

	var got []IndexEntry
	for e, err := range s.RangeIndex(stream, in[0].T, in[len(in)-1].T) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if len(got) != len(in) {
		t.Fatalf("%d entries, want %d", len(got), len(in))
	}
	for i, e := range got {
		w := in[i]
		x := e.Sample
		if x.Stream != w.Stream || x.Seq != w.Seq || x.T != w.T || x.SrcT != w.SrcT || x.RecvT != w.RecvT || x.Flags != w.Flags ||
			x.Lost != w.Lost || x.Dropped != w.Dropped || x.Payload != nil || e.Size != len(w.Payload) {
			t.Fatalf("entry %d: %+v size %d, want %+v size %d", i, x, e.Size, w, len(w.Payload))
		}
	}
	// Make every segment unreadable: Range must fail, RangeIndex not.
	segs, _ := filepath.Glob(filepath.Join(dir, "seg", "*"))
	if len(segs) == 0 {
		t.Fatal("no segment files written")
	}
	for _, f := range segs {
		if err := os.Truncate(f, 0); err != nil {
			t.Fatal(err)
		}
	}
	rangeErrs := 0
	for _, err := range s.Range(stream, in[0].T, in[len(in)-1].T) {
		if err != nil {
			rangeErrs++
		}
	}
	if rangeErrs == 0 {
		t.Fatal("Range read truncated segments without error: the test cannot tell payload reads apart")
	}
	n := 0
	for _, err := range s.RangeIndex(stream, in[0].T, in[len(in)-1].T) {
		if err != nil {
			t.Fatalf("RangeIndex touched a payload: %v", err)
		}
		n++
	}
	if n != len(in) {
		t.Fatalf("%d entries after truncation", n)
	}
}

func TestDecodeIndexMatchesGeneric(t *testing.T) {
	for _, r := range []sampleRec{
		{V: 1, SrcT: -5, RecvT: 7, Flags: 3, Lost: 1 << 31, Dropped: 9, Payload: []byte("abc")},
		{V: 1, SrcT: math.MinInt64, RecvT: math.MaxInt64, Seg: 1 << 40, Off: 1 << 33, Len: 1 << 30, Sum: 0xffffffff},
		{V: 1, Payload: []byte{}},
		{V: 2, SrcT: 1, RecvT: 2, PTSOffset: -66_000_000, Seg: 3, Off: 4, Len: 5},
		{V: 2, PTSOffset: math.MaxInt64, Payload: []byte("x")},
	} {
		b, _ := appendRecord(nil, &r)
		var e IndexEntry
		if err := decodeIndex(b, &e); err != nil {
			t.Fatal(err)
		}
		var g IndexEntry
		if err := decodeIndexSlow(b, &g); err != nil {
			t.Fatal(err)
		}
		if e.Size != g.Size || e.Sample.SrcT != g.Sample.SrcT || e.Sample.RecvT != g.Sample.RecvT || e.Sample.Flags != g.Sample.Flags || e.Sample.Lost != g.Sample.Lost || e.Sample.Dropped != g.Sample.Dropped || e.Sample.PTSOffset != g.Sample.PTSOffset {
			t.Fatalf("fast %+v, generic %+v", e, g)
		}
	}
	// A newer record version is refused.
	b, _ := appendRecord(nil, &sampleRec{V: formatVersion + 1})
	var e IndexEntry
	if err := decodeIndex(b, &e); err == nil {
		t.Fatal("newer record accepted")
	}
}
