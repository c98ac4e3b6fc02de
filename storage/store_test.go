package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/testwait"
	"github.com/episoded/episoded/sample"
)

func TestSampleRecordEncoding(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ints := []int64{0, 1, -1, 23, 24, -24, -25, 255, 256, -256, -257, 65535, 65536, 1 << 32, -(1 << 32), 1<<63 - 1, -1 << 63}
	for i := range 2000 {
		r := sampleRec{
			V:       uint8(rng.IntN(256)),
			SrcT:    ints[rng.IntN(len(ints))] + int64(rng.IntN(3)) - 1,
			RecvT:   rng.Int64() - rng.Int64(),
			Flags:   uint8(rng.IntN(256)),
			Lost:    rng.Uint32() >> rng.IntN(32),
			Dropped: rng.Uint32() >> rng.IntN(32),
			Seg:     rng.Uint64() >> rng.IntN(64),
			Off:     ints[rng.IntN(len(ints))],
			Len:     rng.Uint32() >> rng.IntN(32),
			Sum:     rng.Uint32(),
		}
		r.PTSOffset = ints[rng.IntN(len(ints))]
		switch i % 3 {
		case 0:
			r.Payload = nil
		case 1:
			r.Payload = []byte{}
		default:
			r.Payload = make([]byte, rng.IntN(70000))
		}
		want, err := encMode.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := appendRecord(nil, &r)
		if !slices.Equal(got, want) {
			t.Fatalf("record %+v: hand encoding differs from fxamacker core deterministic:\n got %x\nwant %x", r, got[:min(len(got), 40)], want[:min(len(want), 40)])
		}
		var back sampleRec
		if err := decMode.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if back.SrcT != r.SrcT || back.PTSOffset != r.PTSOffset || back.Off != r.Off || back.Sum != r.Sum || len(back.Payload) != len(r.Payload) {
			t.Fatalf("round trip: got %+v want %+v", back, r)
		}
	}
}

func TestRoundTripAllRecords(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SyncInterval: 5 * time.Millisecond}
	s := openRunning(t, opts)

	// Descriptors: versioned when they change.
	d1 := sample.Descriptor{Stream: "cell1/cam-top", Kind: sample.KindVideo, Codec: sample.CodecH264,
		Params: [][]byte{{0x67, 1, 2}, {0x68, 3}}, Device: "cam-top", Source: "rtsp://cam/stream", Clock: sample.ClockDevice, Since: 5}
	got, err := s.PutDescriptor(d1)
	if err != nil || got.Version != 1 {
		t.Fatalf("put descriptor: %+v %v", got, err)
	}
	if again, err := s.PutDescriptor(d1); err != nil || again.Version != 1 {
		t.Fatalf("put unchanged descriptor: got version %d, %v; want 1", again.Version, err)
	}
	d2 := d1
	d2.Params = [][]byte{{0x67, 9}, {0x68, 3}}
	d2.Since = 1_000_000_123
	if got, err := s.PutDescriptor(d2); err != nil || got.Version != 2 {
		t.Fatalf("put changed descriptor: %+v %v", got, err)
	}
	dl := sample.Descriptor{Stream: "cell1/lidar", Kind: sample.KindPointCloud, Codec: sample.CodecRaw, Clock: sample.ClockArrival, Latency: 7_000_000,
		Layout: &sample.PointLayout{HeaderSize: 8, Stride: 16, Fields: []sample.PointField{{Name: "x", Offset: 0, Type: "float32"}, {Name: "i", Offset: 12, Type: "uint8"}}}}
	if _, err := s.PutDescriptor(dl); err != nil {
		t.Fatal(err)
	}

	// Samples: inline (small) and in segments (large), every field set,
	// negative and large times.
	var samples []sample.Sample
	for i := range uint64(50) {
		samples = append(samples, sample.Sample{Stream: "cell1/cam-top", Seq: i + 1, T: 1_700_000_000_123_456_789 + int64(i)*33_333_333,
			SrcT: int64(i) * 90000, RecvT: 1_700_000_000_200_000_000 + int64(i), Flags: sample.Keyframe | sample.Discontinuity, Lost: uint32(i), Dropped: 2,
			Payload: payloadFor("cam", i, 5000+int(i)*997)})
		samples = append(samples, sample.Sample{Stream: "cell1/robot/joints", Seq: i + 1, T: -5_000_000_000 + int64(i)*1_000_000,
			RecvT: 99, Flags: sample.DecodeError, Payload: payloadFor("j", i, int(i)*7)})
	}
	samples = append(samples, sample.Sample{Stream: "cell1/lidar", Seq: 1, T: 15, Payload: nil})
	appendWait(t, s, samples)

	ep := episode.Episode{ID: "0192f0c0-0000-7000-8000-000000000001", Cell: "cell1", Task: "pick", Operator: "ann", Robot: "r1",
		Labels: map[string]string{"b": "2", "a": "1"}, Priority: true, Trigger: "api", StopReason: "mqtt", Start: 10, Stop: 20,
		Preroll: 3, Postroll: 4, Streams: []string{"cell1/cam-top", "cell1/lidar"}, State: episode.Closed,
		Quality: []episode.StreamReport{{Stream: "cell1/cam-top", Samples: 50, MeanRateHz: 29.97, Clock: episode.ClockReport{Mode: "device", DriftPPM: -1.5,
			Events: []episode.ClockEvent{{T: 11, Kind: "reset", Detail: "jump"}}}}}, Created: 1, Updated: 2}
	if err := s.PutEpisode(ep); err != nil {
		t.Fatal(err)
	}
	up := UploadState{Episode: ep.ID, Objects: []ObjectState{{Key: "a/episode.mcap", Size: 123, SHA256: "ab", UploadID: "u1",
		Parts: []PartState{{Number: 1, Size: 100, ETag: "\"e1\""}}}, {Key: "a/manifest.json", Done: true}}, Attempts: 2, LastError: "timeout", Updated: 77}
	if err := s.PutUploadState(up); err != nil {
		t.Fatal(err)
	}

	check := func(s *Store) {
		t.Helper()
		if all, err := s.Descriptors("cell1/cam-top"); err != nil || len(all) != 2 || !all[0].Equal(d1) || !all[1].Equal(d2) || all[1].Version != 2 || all[1].Since != d2.Since {
			t.Fatalf("descriptors: %+v %v", all, err)
		}
		if d, err := s.Descriptor("cell1/lidar"); err != nil || !d.Equal(dl) || d.Latency != dl.Latency {
			t.Fatalf("descriptor lidar: %+v %v", d, err)
		}
		if _, err := s.Descriptor("nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("missing descriptor: %v", err)
		}
		for _, st := range []string{"cell1/cam-top", "cell1/robot/joints", "cell1/lidar"} {
			var want []sample.Sample
			for _, sm := range samples {
				if sm.Stream == st {
					want = append(want, sm)
				}
			}
			got := collect(t, s.Range(st, -1<<63, 1<<63-1))
			if len(got) != len(want) {
				t.Fatalf("%s: got %d samples, want %d", st, len(got), len(want))
			}
			for i := range got {
				if len(got[i].Payload) == 0 && len(want[i].Payload) == 0 {
					got[i].Payload = want[i].Payload
				}
				if !reflect.DeepEqual(got[i], want[i]) {
					t.Fatalf("%s sample %d:\n got %+v\nwant %+v", st, i, got[i].Payload[:min(8, len(got[i].Payload))], want[i].Payload[:min(8, len(want[i].Payload))])
				}
			}
			last, err := s.LastSample(st)
			if err != nil || last.Seq != want[len(want)-1].Seq {
				t.Fatalf("last sample %s: %+v %v", st, last.Seq, err)
			}
		}
		// Sub-range, inclusive bounds.
		sub := collect(t, s.Range("cell1/cam-top", samples[2].T, samples[6].T))
		if len(sub) != 3 || sub[0].Seq != 2 || sub[2].Seq != 4 {
			t.Fatalf("sub range: %d samples", len(sub))
		}
		if streams, err := s.Streams(); err != nil || !slices.Equal(streams, []string{"cell1/cam-top", "cell1/lidar", "cell1/robot/joints"}) {
			t.Fatalf("streams: %v %v", streams, err)
		}
		if _, err := s.LastSample("cell1/none"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("last sample of empty stream: %v", err)
		}
		gotEp, err := s.Episode(ep.ID)
		if err != nil || !reflect.DeepEqual(gotEp, ep) {
			t.Fatalf("episode:\n got %+v\nwant %+v (%v)", gotEp, ep, err)
		}
		if eps, err := s.Episodes(); err != nil || len(eps) != 1 {
			t.Fatalf("episodes: %v %v", eps, err)
		}
		gotUp, err := s.UploadState(ep.ID)
		if err != nil || !reflect.DeepEqual(gotUp, up) {
			t.Fatalf("upload state:\n got %+v\nwant %+v (%v)", gotUp, up, err)
		}
		if _, err := s.UploadState("x"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("missing upload state: %v", err)
		}
		// The episode's samples across its streams.
		n := 0
		for sm, err := range s.EpisodeSamples(ep.ID) {
			if err != nil {
				t.Fatal(err)
			}
			if sm.Stream != "cell1/lidar" {
				t.Fatalf("episode window [7, 24] yielded %s t=%d", sm.Stream, sm.T)
			}
			n++
		}
		if n != 1 {
			t.Fatalf("episode samples: %d, want 1", n)
		}
	}
	check(s)

	// Everything survives a reopen.
	s2, err := Open(Options{Dir: dir, Logger: testLogger(t), MinFree: -1})
	if err == nil {
		t.Fatal("second open of a store in use should fail (Pebble lock)")
	}
	_ = s2
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s3, err := Open(Options{Dir: dir, Logger: testLogger(t), MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	check(s3)
	if segs, _ := filepath.Glob(filepath.Join(dir, "seg", "*.seg")); len(segs) == 0 {
		t.Fatal("large payloads did not go to segment files")
	}
}

func TestMergeOrderAgainstReferenceSort(t *testing.T) {
	s := openRunning(t, Options{Dir: t.TempDir(), SyncInterval: 5 * time.Millisecond})
	rng := rand.New(rand.NewPCG(3, 4))
	streams := []string{"c/a", "c/b", "c/c", "c/d-large"}
	var all []sample.Sample
	for _, st := range streams {
		tm := int64(1_000_000)
		size := 100
		if strings.HasSuffix(st, "large") {
			size = 6000
		}
		var batch []sample.Sample
		for seq := uint64(1); seq <= 300; seq++ {
			// Interleaved timestamps, with ties across streams and within
			// a stream (same T, increasing seq).
			tm += int64(rng.IntN(4)) * 1000
			sm := sample.Sample{Stream: st, Seq: seq, T: tm, Payload: payloadFor(st, seq, size)}
			batch = append(batch, sm)
		}
		// Append in shuffled order: the store must order by key.
		rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
		appendWait(t, s, batch)
		all = append(all, batch...)
	}
	ref := slices.Clone(all)
	slices.SortFunc(ref, func(a, b sample.Sample) int {
		switch {
		case a.T != b.T:
			return cmpInt(a.T, b.T)
		case a.Stream != b.Stream:
			return strings.Compare(a.Stream, b.Stream)
		}
		return cmpInt(int64(a.Seq), int64(b.Seq))
	})
	from, to := ref[100].T, ref[len(ref)-100].T
	var want []sample.Sample
	for _, sm := range ref {
		if sm.T >= from && sm.T <= to {
			want = append(want, sm)
		}
	}
	got := collect(t, s.Merge(append(streams, "c/a", "c/empty"), from, to))
	if len(got) != len(want) {
		t.Fatalf("merge: %d samples, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Stream != want[i].Stream || got[i].Seq != want[i].Seq || got[i].T != want[i].T || !slices.Equal(got[i].Payload, want[i].Payload) {
			t.Fatalf("merge[%d] = %s#%d t=%d, want %s#%d t=%d", i, got[i].Stream, got[i].Seq, got[i].T, want[i].Stream, want[i].Seq, want[i].T)
		}
	}
	// Stopping early must not leak or hang.
	n := 0
	for range s.Merge(streams, from, to) {
		n++
		if n == 10 {
			break
		}
	}
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestOpenRefusesForeignAndNewer(t *testing.T) {
	t.Run("non-empty dir without marker", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hi"), 0o600)
		_, err := Open(Options{Dir: dir, MinFree: -1})
		if !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), "no EPISODED marker") {
			t.Fatalf("got %v, want ErrNotStore", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "db")); !os.IsNotExist(err) {
			t.Fatal("refused directory was modified")
		}
	})
	t.Run("nonexistent dir is initialised", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "a", "b")
		s, err := Open(Options{Dir: dir, MinFree: -1})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if _, err := os.Stat(filepath.Join(dir, markerName)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("newer format marker", func(t *testing.T) {
		dir := t.TempDir()
		s, err := Open(Options{Dir: dir, MinFree: -1})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		newer := fmt.Sprintf("format %d", formatVersion+1)
		os.WriteFile(filepath.Join(dir, markerName), []byte("episoded-store\n"+newer+"\n"), 0o600)
		_, err = Open(Options{Dir: dir, MinFree: -1})
		if !errors.Is(err, ErrNewerFormat) || !strings.Contains(err.Error(), newer) {
			t.Fatalf("got %v, want ErrNewerFormat", err)
		}
	})
	t.Run("newer record version", func(t *testing.T) {
		dir := t.TempDir()
		s := openRunning(t, Options{Dir: dir})
		rec := episodeRec{V: formatVersion + 1, E: episode.Episode{ID: "x"}}
		b, _ := marshal(&rec)
		if err := s.db.Set(episodeKey("x"), b, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Episode("x"); !errors.Is(err, ErrNewerFormat) {
			t.Fatalf("got %v, want ErrNewerFormat", err)
		}
		// A future layout that the old struct cannot decode is still
		// recognised by its version.
		b, _ = marshal(map[string]any{"v": formatVersion + 2, "e": "a string now"})
		s.db.Set(episodeKey("y"), b, pebble.Sync)
		if _, err := s.Episode("y"); !errors.Is(err, ErrNewerFormat) {
			t.Fatalf("got %v, want ErrNewerFormat", err)
		}
	})
	t.Run("bad options", func(t *testing.T) {
		_, err := Open(Options{FullPolicy: "drop-all", Quota: -1})
		for _, want := range []string{"dir: is required", "full_policy", "quota"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want it to mention %q", err, want)
			}
		}
	})
}

func TestCorruptValueIsReportedAndSkipped(t *testing.T) {
	s := openRunning(t, Options{Dir: t.TempDir(), SyncInterval: 5 * time.Millisecond})
	var batch []sample.Sample
	for seq := uint64(1); seq <= 10; seq++ {
		size := 50
		if seq%2 == 0 {
			size = 8000 // in a segment
		}
		batch = append(batch, sample.Sample{Stream: "c/x", Seq: seq, T: int64(seq) * 100, Payload: payloadFor("x", seq, size)})
		batch = append(batch, sample.Sample{Stream: "c/y", Seq: seq, T: int64(seq)*100 + 50, Payload: payloadFor("y", seq, 30)})
	}
	appendWait(t, s, batch)
	// Garbage under the key of c/x seq 4 (T=400), and a record pointing at a
	// segment range whose checksum does not match (seq 6).
	badKey := appendSampleKey(nil, "c/x", 400, 4)
	if err := s.db.Set(badKey, []byte{0xff, 0x00, 0x13, 0x37}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	var rec sampleRec
	k6 := appendSampleKey(nil, "c/x", 600, 6)
	v, closer, err := s.db.Get(k6)
	if err != nil {
		t.Fatal(err)
	}
	if err := unmarshal(v, &rec); err != nil {
		t.Fatal(err)
	}
	closer.Close()
	rec.Sum ^= 1
	v2, _ := appendRecord(nil, &rec)
	s.db.Set(k6, v2, pebble.Sync)

	for name, seq := range map[string]func(func(sample.Sample, error) bool){
		"range": s.Range("c/x", 0, 1<<40),
		"merge": s.Merge([]string{"c/x", "c/y"}, 0, 1<<40),
	} {
		var ok, bad int
		var msgs []string
		for sm, err := range seq {
			if err != nil {
				bad++
				msgs = append(msgs, err.Error())
				if !errors.Is(err, ErrCorrupt) || sm.Stream != "c/x" {
					t.Fatalf("%s: error %v for %s, want ErrCorrupt on c/x", name, err, sm.Stream)
				}
				continue
			}
			ok++
		}
		if bad != 2 {
			t.Fatalf("%s: %d errors, want 2: %v", name, bad, msgs)
		}
		if want := map[string]int{"range": 8, "merge": 18}[name]; ok != want {
			t.Fatalf("%s: %d good samples, want %d", name, ok, want)
		}
		if !strings.Contains(msgs[0], "sample c/x t=400 seq=4") || !strings.Contains(msgs[0], "key 73632f78") {
			t.Fatalf("%s: error does not name the key: %s", name, msgs[0])
		}
		if !strings.Contains(msgs[1], "seq=6") || !strings.Contains(msgs[1], "checksum") {
			t.Fatalf("%s: segment corruption not reported: %s", name, msgs[1])
		}
	}
}

func TestAppendBackpressureIsBounded(t *testing.T) {
	// No Run: nothing commits, so the pending queue fills.
	s, err := Open(Options{Dir: t.TempDir(), MinFree: -1, MaxPending: 1 << 20, CommitBytes: 1 << 19, AppendTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var seq uint64
	var err2 error
	for range 100 {
		seq++
		err2 = s.Append([]sample.Sample{{Stream: "c/v", Seq: seq, T: int64(seq), Payload: make([]byte, 100_000)}}, nil)
		if err2 != nil {
			break
		}
	}
	if !errors.Is(err2, ErrOverloaded) {
		t.Fatalf("got %v after %d appends, want ErrOverloaded", err2, seq)
	}
	if seq > 11 {
		t.Fatalf("accepted %d samples of 100 KB with MaxPending 1 MiB", seq-1)
	}
	if _, err := s.LastSample("c/v"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("nothing should be durable before a commit: %v", err)
	}
}

// TestRunGoesFullOnQuota runs the real loop: the space watcher inside Run
// must notice a quota crossed by a burst of writes and refuse new samples,
// then accept them again once an uploaded episode can be evicted.
func TestRunGoesFullOnQuota(t *testing.T) {
	s := openRunning(t, Options{Dir: t.TempDir(), Quota: 64 << 20, MemTableSize: 2 << 20, SyncInterval: 5 * time.Millisecond,
		WatchInterval: 20 * time.Millisecond, TimelineRetention: time.Hour})
	base := time.Now().UnixNano()
	if err := s.PutEpisode(episode.Episode{ID: "e1", Start: base, Stop: base + int64(time.Hour), Streams: []string{"c/v"}, State: episode.Closed}); err != nil {
		t.Fatal(err)
	}
	// Append until refused with the quota used up: a refusal may come
	// earlier, counting bytes still in flight; appends then go on.
	var full bool
	var u Usage
	deadline := time.Now().Add(30 * time.Second)
	seq := uint64(0)
	for !full && time.Now().Before(deadline) {
		seq++
		err := s.Append([]sample.Sample{{Stream: "c/v", Seq: seq, T: base + int64(seq), Payload: payloadFor("v", seq, 100_000)}}, nil)
		switch {
		case errors.Is(err, ErrFull):
			seq--
			if u = s.Usage(); u.Full && u.Room < 1<<20 {
				full = true
			}
			time.Sleep(time.Millisecond) // a producer backs off after a refusal
		case errors.Is(err, ErrOverloaded):
			time.Sleep(time.Millisecond) // a producer backs off after a refusal
			seq--
		case err != nil:
			t.Fatal(err)
		}
		if seq%20 == 0 {
			time.Sleep(time.Millisecond) // pacing: let commits keep up
		}
	}
	if !full {
		t.Fatalf("not full after %d MB with a 64 MiB quota: %+v", seq/10, s.Usage())
	}
	if u.Bytes < 40<<20 || u.Bytes > 64<<20 || len(u.Alarms) == 0 {
		t.Fatalf("usage when full %+v", u)
	}
	if info, _ := s.Evicted("e1"); info.At != 0 {
		t.Fatal("reject-new evicted a closed, not uploaded episode")
	}
	t.Logf("full after %d frames, usage %+v", seq, u)
	// Once the episode is uploaded, quota pressure evicts it and the
	// store accepts samples again.
	if err := s.PutEpisode(episode.Episode{ID: "e1", Start: base, Stop: base + int64(time.Hour), Streams: []string{"c/v"}, State: episode.Uploaded, Updated: time.Now().UnixNano()}); err != nil {
		t.Fatal(err)
	}
	// (Full may clear before: the refusal counted bytes in flight that
	// were still to land; the eviction follows once they have.)
	testwait.For(t, 30*time.Second, "the uploaded episode evicted and the store not full", func() bool {
		info, _ := s.Evicted("e1")
		return info.At != 0 && !s.Usage().Full
	})
	if s.Usage().Full {
		t.Fatal("still full after the uploaded episode became evictable")
	}
	if info, _ := s.Evicted("e1"); info.Reason != "quota_uploaded" {
		t.Fatalf("e1 eviction: %+v", info)
	}
	seq++
	appendWait(t, s, []sample.Sample{{Stream: "c/v", Seq: seq, T: base + int64(seq), Payload: []byte("ok")}})
}

func TestClosedStore(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append([]sample.Sample{{Stream: "", Seq: 2, T: 2}}, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty stream: %v, want ErrInvalid", err)
	}
	if err := s.Append([]sample.Sample{{Stream: "c/a\x00b", Seq: 2, T: 2}}, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("stream with NUL: %v, want ErrInvalid", err)
	}
	var got error
	if err := s.Append([]sample.Sample{{Stream: "c/a", Seq: 1, T: 1, Payload: []byte("x")}}, func(err error) { got = err }); err != nil {
		t.Fatal(err)
	}
	// Close commits what is pending even without Run.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got != nil {
		t.Fatalf("done after Close: %v", got)
	}
	if err := s.Append([]sample.Sample{{Stream: "c/a", Seq: 2, T: 2}}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if _, err := s.Episode("x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("episode after close: %v", err)
	}
	if err := s.Run(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("run after close: %v", err)
	}
}

func TestRunCommitsPendingOnCancel(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), MinFree: -1, SyncInterval: MaxSyncInterval})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx) }()
	durable := make(chan error, 1)
	if err := s.Append([]sample.Sample{{Stream: "c/a", Seq: 1, T: 1, Payload: []byte("x")}}, func(err error) { durable <- err }); err != nil {
		t.Fatal(err)
	}
	// The sync interval is an hour: only the final commit can make it durable.
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-durable:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("Run returned before the pending sample was durable")
	}
	if last, err := s.LastSample("c/a"); err != nil || last.Seq != 1 {
		t.Fatalf("last sample: %+v %v", last, err)
	}
	if err := s.Append([]sample.Sample{{Stream: "c/a", Seq: 2, T: 2}}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after Run returned: %v, want ErrClosed", err)
	}
}
