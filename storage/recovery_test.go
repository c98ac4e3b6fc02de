package storage

import (
	"errors"
	"github.com/cockroachdb/pebble/v2/vfs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/episoded/episoded/sample"
)

// TestSegmentRecovery simulates what a crash between a segment write and
// the Pebble commit leaves behind — a torn tail after the last indexed byte
// and a segment file no record points to — and checks that Open repairs
// both and that appends continue correctly afterwards.
func TestSegmentRecovery(t *testing.T) {
	dir := t.TempDir()
	// Sample times are in 1970: keep the timeline.
	s := openRunning(t, Options{Dir: dir, SyncInterval: 5 * time.Millisecond, TimelineRetention: 1e6 * time.Hour})
	var batch []sample.Sample
	for seq := uint64(1); seq <= 5; seq++ {
		batch = append(batch, sample.Sample{Stream: "c/v", Seq: seq, T: int64(seq), Payload: payloadFor("c/v", seq, 10_000)})
	}
	appendWait(t, s, batch)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "seg", "*.seg"))
	if len(segs) != 1 {
		t.Fatalf("segments: %v", segs)
	}
	// Torn tail.
	f, err := os.OpenFile(segs[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 12345))
	f.Close()
	// Orphan segment with a higher id than any committed one.
	orphan := filepath.Join(dir, "seg", "00000000000000ff.seg")
	os.WriteFile(orphan, []byte("never indexed"), 0o600)

	s2 := openRunning(t, Options{Dir: dir, SyncInterval: 5 * time.Millisecond, TimelineRetention: 1e6 * time.Hour})
	if st, err := os.Stat(segs[0]); err != nil || st.Size() != 50_000 {
		t.Fatalf("torn segment not truncated to its committed 50000 bytes: %v %v", st.Size(), err)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan segment not removed: %v", err)
	}
	if u := s2.Usage(); u.SegmentBytes != 50_000 || u.Segments != 1 {
		t.Fatalf("usage after recovery: %+v", u)
	}
	// New segments get ids past the orphan's, and everything reads back.
	appendWait(t, s2, []sample.Sample{{Stream: "c/v", Seq: 6, T: 6, Payload: payloadFor("c/v", 6, 10_000)}, {Stream: "c/w", Seq: 1, T: 6, Payload: payloadFor("c/w", 1, 9000)}})
	got := collect(t, s2.Merge([]string{"c/v", "c/w"}, 0, 100))
	if len(got) != 7 {
		t.Fatalf("%d samples after recovery, want 7", len(got))
	}
	for _, sm := range got {
		want := 10_000
		if sm.Stream == "c/w" {
			want = 9000
		}
		if string(sm.Payload) != string(payloadFor(sm.Stream, sm.Seq, want)) {
			t.Fatalf("%s seq %d: payload differs", sm.Stream, sm.Seq)
		}
	}
}

// FuzzDecodeSample feeds arbitrary bytes to the sample decoder: it must
// return an error or a sample, never panic.
func FuzzDecodeSample(f *testing.F) {
	good, _ := appendRecord(nil, &sampleRec{V: 1, SrcT: -5, Payload: []byte("abc")})
	seg, _ := appendRecord(nil, &sampleRec{V: 1, Seg: 3, Off: 10, Len: 1 << 30})
	f.Add(good)
	f.Add(seg)
	f.Add([]byte{0xff, 0x00})
	f.Add([]byte{0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	s := &Store{segDir: f.TempDir(), fs: vfs.Default}
	key := appendSampleKey(nil, "c/x", 1, 1)
	f.Fuzz(func(t *testing.T, data []byte) {
		segs := &segReader{s: s}
		defer segs.close()
		sm, err := s.decodeSample(key, data, segs)
		if err == nil && (sm.Stream != "c/x" || sm.T != 1 || sm.Seq != 1) {
			t.Fatalf("decoded %+v", sm)
		}
	})
}

// TestCommitPrefixHasNoHoles stops a commit after 2 of its Pebble batches,
// as a crash between them would, and checks that what survives is a prefix
// of the Appends: a stream mixing inline and segment payloads keeps a
// gapless seq, and every surviving payload reads back.
func TestCommitPrefixHasNoHoles(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, MinFree: -1, TimelineRetention: 1e6 * time.Hour, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	s.batchBytes = 8 << 10
	s.testCrashAfter = 2
	var failed int
	for seq := uint64(1); seq <= 60; seq++ {
		size := 1000
		if seq%3 == 0 {
			size = 6000 // segment
		}
		err := s.Append([]sample.Sample{{Stream: "c/mixed", Seq: seq, T: int64(seq), Payload: payloadFor("c/mixed", seq, size)}}, func(err error) {
			if err != nil {
				failed++
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	s.commitMu.Lock()
	if err := s.commit(); !errors.Is(err, errSimulatedCrash) {
		t.Fatalf("commit: %v", err)
	}
	s.commitMu.Unlock()
	if failed != 60 {
		t.Fatalf("%d done callbacks reported the failed commit, want 60", failed)
	}
	s.testCrashAfter = 0
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Options{Dir: dir, MinFree: -1, TimelineRetention: 1e6 * time.Hour, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := uint64(1)
	for sm, err := range s.Range("c/mixed", 0, 1000) {
		if err != nil {
			t.Fatal(err)
		}
		if sm.Seq != want {
			t.Fatalf("seq %d after %d: a later Append survived without an earlier one", sm.Seq, want-1)
		}
		want++
	}
	if want-1 < 2 || want-1 >= 60 {
		t.Fatalf("%d samples survived; want a proper prefix of 60", want-1)
	}
	t.Logf("%d of 60 samples survived the simulated crash", want-1)
}
