package storage

import (
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
	s := &Store{segDir: f.TempDir()}
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
