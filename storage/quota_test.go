package storage

import (
	"bytes"
	"errors"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
)

const sec = int64(time.Second)

// duBytes is the space the directory tree really occupies (allocated blocks).
func duBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	// Pebble deletes obsolete files in the background, so a file listed
	// a moment ago may be gone: it takes no space.
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); errors.Is(err, fs.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		if !d.IsDir() {
			n += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// manual drives a store without Run: the test commits and runs the space
// watcher's check itself, so the order of events is deterministic.
type manual struct {
	t testing.TB
	s *Store
}

func (m manual) commit() {
	m.t.Helper()
	m.s.commitMu.Lock()
	defer m.s.commitMu.Unlock()
	if err := m.s.commit(); err != nil {
		m.t.Fatal(err)
	}
}

// frames appends one 50 KB frame per second on c/cam and 2 telemetry
// records per second on c/tel, for T in [from, to] seconds.
func (m manual) frames(from, to int64) {
	m.t.Helper()
	for s := from; s <= to; s++ {
		seq := uint64(s + 1_000_000)
		batch := []sample.Sample{
			{Stream: "c/cam", Seq: seq, T: s * sec, Payload: payloadFor("c/cam", seq, 50_000)},
			{Stream: "c/tel", Seq: 2 * seq, T: s * sec, Payload: payloadFor("c/tel", 2*seq, 300)},
			{Stream: "c/tel", Seq: 2*seq + 1, T: s*sec + sec/2, Payload: payloadFor("c/tel", 2*seq+1, 300)},
		}
		if err := m.s.Append(batch, nil); err != nil {
			m.t.Fatalf("append t=%ds: %v", s, err)
		}
		if s%50 == 0 {
			m.commit()
		}
	}
	m.commit()
}

func (m manual) count(stream string, from, to int64) int {
	m.t.Helper()
	n := 0
	for _, err := range m.s.Range(stream, from*sec, to*sec) {
		if err != nil {
			m.t.Fatal(err)
		}
		n++
	}
	return n
}

func (m manual) evicted(id string) string {
	m.t.Helper()
	info, err := m.s.Evicted(id)
	if err != nil {
		m.t.Fatal(err)
	}
	return info.Reason
}

func TestQuotaEvictionOrder(t *testing.T) {
	dir := t.TempDir()
	const t0 = int64(1_800_000_000) // seconds; the fake wall clock and sample times
	var now atomic.Int64
	now.Store(t0 * sec)
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	reg := prometheus.NewRegistry()
	// No quota while filling (Append refuses what would not fit); the
	// quota is set just below the usage before each eviction pass.
	const quota = 40 << 20
	opts := Options{Dir: dir, MinFree: -1, MemTableSize: 2 << 20, Retention: time.Hour, TimelineRetention: time.Minute,
		Now: clock, Logger: testLogger(t), Registerer: reg}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	m := manual{t, s}
	streams := []string{"c/cam", "c/tel"}
	ep := func(id string, from, to int64, state episode.State, updated int64) episode.Episode {
		e := episode.Episode{ID: id, Cell: "c", Start: (t0 + from) * sec, Stop: (t0 + to) * sec, Streams: streams, State: state, Updated: updated}
		if to == 0 {
			e.Stop = 0
		}
		if err := s.PutEpisode(e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	ep("01-uploaded-old", -1000, -900, episode.Uploaded, (t0-7200)*sec)  // past retention
	ep("02-uploaded-recent", -800, -700, episode.Uploaded, (t0-600)*sec) // within retention
	ep("03-closed", -600, -500, episode.Closed, t0*sec)
	ep("04-interrupted", -400, -300, episode.Interrupted, t0*sec)

	// 1100 s of timeline: 55 MB of frames in segments, telemetry in Pebble.
	m.frames(t0-1100, t0)
	u0, du0 := s.Usage(), duBytes(t, dir)
	if u0.Bytes < 50<<20 || u0.Bytes > quota+40<<20 {
		t.Fatalf("usage after writing 55 MB: %d", u0.Bytes)
	}

	// First pass, no pressure once retention has run: only steps 1 and 2.
	s.checkSpace()
	u1, du1 := s.Usage(), duBytes(t, dir)
	t.Logf("usage %d -> %d bytes (du %d -> %d)", u0.Bytes, u1.Bytes, du0, du1)
	for _, c := range []struct {
		what     string
		from, to int64
		want     int
	}{
		{"uncovered timeline before E1", t0 - 1100, t0 - 1001, 0},
		{"E1 (uploaded, past retention)", t0 - 999, t0 - 901, 0},
		{"uncovered between E1 and E2", t0 - 899, t0 - 801, 0},
		{"E2 (uploaded, within retention)", t0 - 800, t0 - 700, 101},
		{"uncovered between E3 and E4", t0 - 499, t0 - 401, 0},
		{"E3 (closed)", t0 - 600, t0 - 500, 101},
		{"E4 (interrupted)", t0 - 400, t0 - 300, 101},
		{"uncovered but within the pre-roll horizon", t0 - 59, t0, 60},
	} {
		if got := m.count("c/cam", c.from, c.to); got != c.want {
			t.Errorf("after retention: %s: %d frames, want %d", c.what, got, c.want)
		}
		if got := m.count("c/tel", c.from, c.to); got != max(2*c.want-1, 0) {
			t.Errorf("after retention: %s: %d telemetry records, want %d", c.what, got, max(2*c.want-1, 0))
		}
	}
	if r := m.evicted("01-uploaded-old"); r != "retention" {
		t.Errorf("E1 eviction reason %q, want retention", r)
	}
	for _, id := range []string{"02-uploaded-recent", "03-closed", "04-interrupted"} {
		if r := m.evicted(id); r != "" {
			t.Errorf("%s evicted (%s) without pressure", id, r)
		}
	}
	if e, err := s.Episode("01-uploaded-old"); err != nil || e.State != episode.Uploaded {
		t.Errorf("evicted episode's record must stay: %+v %v", e, err)
	}
	if u1.Full || u1.Bytes > u0.Bytes-30<<20 || du1 > du0-30<<20 {
		t.Fatalf("eviction did not free space: usage %d -> %d, du %d -> %d, full %v", u0.Bytes, u1.Bytes, du0, du1, u1.Full)
	}

	// A recording episode keeps everything from its pre-roll on; fill past
	// the quota with 30 MB more.
	ep("05-recording", -30, 0, episode.Recording, t0*sec)
	now.Store((t0 + 600) * sec)
	m.frames(t0+1, t0+600)
	uFill := s.Usage()
	// 8 MiB short: evicting E2 (~4.8 MiB of frames) does not get under.
	setQuota(s, uFill.Bytes+s.reserve(uFill)-8<<20)
	s.checkSpace()
	u2, du2 := s.Usage(), duBytes(t, dir)
	t.Logf("over quota: usage %d -> %d (du %d)", uFill.Bytes, u2.Bytes, du2)
	if r := m.evicted("02-uploaded-recent"); r != "quota_uploaded" {
		t.Errorf("E2 eviction reason %q, want quota_uploaded (uploaded episodes go before not-uploaded ones)", r)
	}
	if got := m.count("c/cam", t0-800, t0-700); got != 0 {
		t.Errorf("E2 still has %d frames", got)
	}
	// The segments are where E2's frames were; the total also counts
	// Pebble's files, which a background flush or compaction can grow by a
	// few MB at any moment, so it is only required to go down.
	if u2.SegmentBytes > uFill.SegmentBytes-4_500_000 || u2.Bytes >= uFill.Bytes {
		t.Errorf("evicting E2 did not free its ~5 MB: %d -> %d (segments %d -> %d)", uFill.Bytes, u2.Bytes, uFill.SegmentBytes, u2.SegmentBytes)
	}
	// reject-new: not-uploaded episodes stay intact, new samples refused.
	for _, c := range []struct {
		id       string
		from, to int64
	}{{"03-closed", t0 - 600, t0 - 500}, {"04-interrupted", t0 - 400, t0 - 300}, {"05-recording", t0 - 30, t0 + 600}} {
		if got := m.count("c/cam", c.from, c.to); got != int(c.to-c.from+1) {
			t.Errorf("reject-new: %s has %d frames, want %d", c.id, got, c.to-c.from+1)
		}
		if r := m.evicted(c.id); r != "" {
			t.Errorf("reject-new: %s evicted (%s)", c.id, r)
		}
	}
	if !u2.Full || len(u2.Alarms) == 0 || !strings.Contains(u2.Alarms[0], "episoded_storage_full") {
		t.Fatalf("store should be full with an alarm: %+v", u2)
	}
	err = s.Append([]sample.Sample{{Stream: "c/cam", Seq: 9, T: (t0 + 601) * sec, Payload: []byte("x")}}, nil)
	if !errors.Is(err, ErrFull) {
		t.Fatalf("append while full: %v, want ErrFull", err)
	}
	if v := gatherSum(t, reg, "episoded_storage_full"); v != 1 {
		t.Errorf("episoded_storage_full = %v, want 1", v)
	}
	if v := gatherSum(t, reg, "episoded_storage_evictions_total"); v < 2 {
		t.Errorf("episoded_storage_evictions_total = %v, want >= 2", v)
	}
	if v := gatherSum(t, reg, "episoded_storage_disk_bytes"); v != float64(u2.Bytes) {
		t.Errorf("episoded_storage_disk_bytes = %v, want %d", v, u2.Bytes)
	}
	// Small records are still accepted while full (uploads must progress).
	if err := s.PutUploadState(UploadState{Episode: "03-closed", Attempts: 1}); err != nil {
		t.Fatalf("put upload state while full: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// evict-oldest: the oldest finished, not-uploaded episode goes first.
	opts.FullPolicy = PolicyEvictOldest
	opts.Registerer = nil
	s, err = Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m = manual{t, s}
	// Just over the quota: evicting one episode (~5 MB) is enough. Aim 1%
	// below the quota once evicting: 5% of 40 MB is as big as an episode
	// plus Pebble's WAL preallocation, which would make the test flaky.
	uOpen := s.Usage()
	setQuota(s, uOpen.Bytes+s.reserve(uOpen)-1<<20)
	s.hysteresis = 0.01
	s.checkSpace()
	u3 := s.Usage()
	if r := m.evicted("03-closed"); r != "quota_not_uploaded" {
		t.Errorf("evict-oldest: E3 eviction reason %q, want quota_not_uploaded", r)
	}
	if r := m.evicted("04-interrupted"); r != "" {
		t.Errorf("evict-oldest: E4 evicted (%s) although evicting E3 was enough", r)
	}
	if got := m.count("c/cam", t0-400, t0-300); got != 101 {
		t.Errorf("evict-oldest: E4 has %d frames, want 101", got)
	}
	if r := m.evicted("05-recording"); r != "" {
		t.Errorf("recording episode evicted (%s)", r)
	}
	t.Logf("evict-oldest: usage %d -> %d (segments %d -> %d)", uOpen.Bytes, u3.Bytes, uOpen.SegmentBytes, u3.SegmentBytes)
	if u3.Full || u3.Bytes >= uOpen.Bytes || u3.SegmentBytes > uOpen.SegmentBytes-5_000_000 {
		t.Errorf("evict-oldest: usage %d -> %d, segments %d -> %d, full %v", uOpen.Bytes, u3.Bytes, uOpen.SegmentBytes, u3.SegmentBytes, u3.Full)
	}
	if err := s.Append([]sample.Sample{{Stream: "c/cam", Seq: 9, T: (t0 + 601) * sec, Payload: []byte("x")}}, nil); err != nil {
		t.Fatalf("append after eviction: %v", err)
	}
}

// setQuota changes a store's quota as Open would have set it.
func setQuota(s *Store, q int64) {
	s.opts.Quota, s.capacity = q, q
}

// TestEvictionReclaimsPebbleSpace checks that DeleteRange plus compaction
// really shrinks Pebble on disk, with every payload kept in Pebble (no
// segment files, value separation into blob files).
func TestEvictionReclaimsPebbleSpace(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, MinFree: -1, SegmentThreshold: -1, MemTableSize: 4 << 20, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := manual{t, s}
	if err := s.PutEpisode(episode.Episode{ID: "e1", Start: 1000 * sec, Stop: 1100 * sec, Streams: []string{"c/cam", "c/tel"}, State: episode.Closed}); err != nil {
		t.Fatal(err)
	}
	m.frames(1000, 1600) // ~30 MB
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	before, _ := s.dbBytes()
	duBefore := duBytes(t, dir)
	if err := s.DeleteEpisode("e1"); err != nil {
		t.Fatal(err)
	}
	// The timeline (T around 1970) is far past the horizon: evict it all.
	s.checkSpace()
	if n := m.count("c/cam", 0, 1<<32); n != 0 {
		t.Fatalf("%d frames left", n)
	}
	if _, err := s.Episode("e1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted episode: %v", err)
	}
	var after, duAfter int64
	deadline := time.Now().Add(20 * time.Second)
	for {
		after, _ = s.dbBytes()
		duAfter = duBytes(t, dir)
		if duAfter < duBefore-25<<20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // obsolete files are deleted in the background
	}
	t.Logf("pebble usage %d -> %d, du %d -> %d", before, after, duBefore, duAfter)
	if testing.Verbose() {
		out, _ := exec.Command("sh", "-c", "ls -ls "+dir+"/db "+dir+"/seg; du -s "+dir).CombinedOutput()
		t.Logf("%s", out)
	}
	// ~30 MB of payload was written; what remains is Pebble's recycled WAL.
	if duAfter >= duBefore-25<<20 || after >= before-25<<20 {
		t.Fatalf("disk usage did not drop: pebble %d -> %d, du %d -> %d", before, after, duBefore, duAfter)
	}
}

// gatherSum sums every series of a metric family in reg.
func gatherSum(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
		return sum
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// TestDeleteFreesPartOfASegment deletes an episode whose window lies
// inside two segment slices that both hold live data of its neighbours:
// no segment can go, yet du drops by the deleted frames (holes punched),
// the neighbours' frames still read back intact, and the accounting
// survives a reopen.
func TestDeleteFreesPartOfASegment(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, MinFree: -1, MemTableSize: 2 << 20, TimelineRetention: 1000 * time.Hour, Logger: testLogger(t)}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	m := manual{t, s}
	streams := []string{"c/cam", "c/tel"}
	for _, e := range []episode.Episode{
		{ID: "e0", Start: 0, Stop: 12 * sec},
		{ID: "e1", Start: 13 * sec, Stop: 27 * sec},
		{ID: "e2", Start: 28 * sec, Stop: 100 * sec},
	} {
		e.Streams, e.State = streams, episode.Closed
		if err := s.PutEpisode(e); err != nil {
			t.Fatal(err)
		}
	}
	m.frames(0, 100) // 101 frames of 50 KB in 11 segments of 10 s
	u0, du0 := s.Usage(), duBytes(t, filepath.Join(dir, "seg"))
	if err := s.DeleteEpisode("e1"); err != nil {
		t.Fatal(err)
	}
	u1, du1 := s.Usage(), duBytes(t, filepath.Join(dir, "seg"))
	t.Logf("segments %d -> %d, segment bytes %d -> %d, du %d -> %d", u0.Segments, u1.Segments, u0.SegmentBytes, u1.SegmentBytes, du0, du1)
	if u1.Segments != u0.Segments {
		t.Fatalf("a segment went: %d -> %d (test setup)", u0.Segments, u1.Segments)
	}
	const deleted = 15 * 50_000
	if du1 > du0-deleted+64<<10 {
		t.Errorf("deleting 15 frames freed %d bytes on disk, want about %d", du0-du1, deleted)
	}
	if d := u0.SegmentBytes - u1.SegmentBytes; d < deleted-64<<10 || d > deleted+64<<10 {
		t.Errorf("segment accounting dropped by %d, want about %d", d, deleted)
	}
	check := func() {
		t.Helper()
		if n := m.count("c/cam", 13, 27); n != 0 {
			t.Errorf("%d frames of the deleted episode left", n)
		}
		for _, sm := range collect(t, s.Range("c/cam", 0, 100*sec)) {
			if !bytes.Equal(sm.Payload, payloadFor("c/cam", sm.Seq, 50_000)) {
				t.Fatalf("frame %d damaged", sm.T/sec)
			}
		}
		if n := m.count("c/cam", 0, 100); n != 101-15 {
			t.Errorf("%d frames left, want 86", n)
		}
	}
	check()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m = manual{t, s}
	check()
	if u2 := s.Usage(); u2.SegmentBytes > u1.SegmentBytes+64<<10 {
		t.Errorf("after reopen the punched bytes count again: %d, was %d", u2.SegmentBytes, u1.SegmentBytes)
	}
}
