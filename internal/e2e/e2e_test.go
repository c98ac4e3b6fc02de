package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/foxglove/mcap/go/mcap"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"github.com/episoded/episoded/internal/sim"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/export"
	"github.com/episoded/episoded/sync/upload"
)

// message is one MCAP message of a stream.
type message struct {
	logT, pubT int64
}

func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end run takes about a minute; skipped under -short")
	}
	dir := t.TempDir()
	const (
		outageAt  = 20 * time.Second
		outageFor = 3 * time.Second
		runFor    = 40 * time.Second
	)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := daemontest.StartSim(t, sim.Options{
		RTSPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Cameras: 2,
		ClockOffset: 2 * time.Second, ClockDriftPPM: 150, Jitter: 3 * time.Millisecond,
		Loss:    0.01,
		Outages: []sim.Outage{{Camera: "cam1", At: outageAt, For: outageFor}},
		Seed:    42, TriggerFirst: 3 * time.Second, TriggerPeriod: 15 * time.Second, TriggerOn: 10 * time.Second,
		Logger: log,
	})

	central := filepath.Join(dir, "central")
	if err := os.MkdirAll(central, 0o755); err != nil {
		t.Fatal(err)
	}
	storeDir := filepath.Join(dir, "store")
	cfg, err := config.Parse("e2e", []byte(s.Config(storeDir, central, "127.0.0.1:0")), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	d, stopDaemon := daemontest.Run(t, cfg, log, nil)

	time.Sleep(runFor) // pacing: the recording's length is the input under test
	fctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	if err := d.Finish(fctx); err != nil {
		t.Fatalf("finish: %v", err)
	}
	cancel()
	if err := stopDaemon(); err != nil {
		t.Fatalf("daemon exit: %v", err)
	}

	store, err := storage.Open(storage.Options{Dir: storeDir, MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	eps, err := store.Episodes()
	if err != nil {
		t.Fatal(err)
	}
	uploaded := 0
	outageStart := s.T0() + int64(outageAt)
	outageEnd := outageStart + int64(outageFor)
	sawOutage := false
	within1ms := map[string]int{} // episodes whose p99 error is within 1 ms
	for _, e := range eps {
		if e.State != episode.Uploaded {
			t.Errorf("episode %s is %s (%s), want uploaded", e.ID, e.State, e.Reason)
			continue
		}
		uploaded++
		checkSigned(t, central, cfg, e)
		t.Run(e.ID, func(t *testing.T) {
			msgs, leftOut := checkUpload(t, central, cfg, e)
			from, to := e.Window(0)
			quality := map[string]episode.StreamReport{}
			for _, q := range e.Quality {
				quality[q.Stream] = q
			}
			for _, stream := range s.Streams() {
				if strings.HasSuffix(stream, "/trigger") {
					continue // episode triggers are not recorded
				}
				m := msgs[stream]
				q, ok := quality[stream]
				if !ok || len(m) == 0 {
					t.Errorf("%s: no messages or no quality report", stream)
					continue
				}
				cam := strings.Contains(stream, "cam")
				if cam {
					// Video starts at the keyframe at or before the
					// window (pre-roll); frames inside the window that
					// could not be decoded are left out and counted.
					pre := 0
					for pre < len(m) && m[pre].logT < from {
						pre++
					}
					if n := uint64(len(m)-pre) + leftOut[stream]; n != q.Samples {
						t.Errorf("%s: MCAP has %d messages in the window (+%d pre-roll, %d left out), the quality report %d samples",
							stream, len(m)-pre, pre, leftOut[stream], q.Samples)
					}
					m = m[pre:]
				} else if uint64(len(m)) != q.Samples {
					t.Errorf("%s: MCAP has %d messages, the quality report %d samples", stream, len(m), q.Samples)
				}
				if p99 := checkAlignment(t, s, stream, m, q); p99 <= 1 {
					within1ms[stream]++
				}
				if cam {
					holes := checkVideo(t, stream, m, q, from, to, leftOut[stream])
					if stream == "cell1/cam1" && from < outageStart && outageEnd < to {
						sawOutage = true
						long := 0
						for _, h := range holes {
							if h >= int64(2500*time.Millisecond) {
								long++
							}
						}
						if long != 1 {
							t.Errorf("cam1: the 3 s outage should be one gap of ~3 s; holes: %v", holes)
						}
						// The outage is on the record: the episode is
						// degraded for cam1's coverage, and the gap is
						// accounted to the camera being offline.
						if !degradedFor(e, stream, episode.ReasonLowCoverage) {
							t.Errorf("cam1 outage: verdict %+v, want degraded for low coverage of %s", e.Verdict, stream)
						}
						offline := false
						for _, g := range q.GapList {
							offline = offline || g.Cause == episode.CauseDeviceOffline && g.To-g.From >= int64(2500*time.Millisecond)
						}
						if !offline {
							t.Errorf("cam1 outage: no device_offline gap of ~3 s in %+v", q.GapList)
						}
					}
				} else {
					checkTelemetry(t, stream, m, q, from, to)
				}
			}
		})
	}
	if uploaded < 2 {
		t.Fatalf("%d episodes uploaded, want at least 2", uploaded)
	}
	// Early episodes may state a wide bound (their window starts before the
	// estimators converge); once converged, the streams at 30 Hz and more
	// are within 1 ms. The 10 Hz lidar gets ~130 samples of evidence per
	// episode, which puts its p99 near 1 ms (0.5-1.8 ms seen); it is held to
	// its stated bound above, as the issue allows.
	for _, stream := range s.Streams() {
		if strings.HasSuffix(stream, "/trigger") || stream == "cell1/lidar" {
			continue
		}
		if within1ms[stream] == 0 {
			t.Errorf("%s: no episode with alignment error p99 within 1 ms", stream)
		}
	}
	if !sawOutage {
		t.Errorf("no uploaded episode covers the camera outage at %s..%s", time.Unix(0, outageStart), time.Unix(0, outageEnd))
	}
}

// checkUpload verifies the uploaded objects against the manifest and
// returns the MCAP's messages by stream, in log-time order, and the video
// frames left out per stream (the MCAP manifest's video_left_out).
func checkUpload(t *testing.T, central string, cfg *config.Config, e episode.Episode) (map[string][]message, map[string]uint64) {
	t.Helper()
	objDir := filepath.Join(central, filepath.FromSlash(upload.Dir(cfg.Sync.Target.Prefix, cfg.Gateway.Site, cfg.Gateway.ID, e)))
	raw, err := os.ReadFile(filepath.Join(objDir, "manifest.json"))
	if err != nil {
		t.Fatalf("manifest: %v", err)
	}
	var uman upload.Manifest
	if err := json.Unmarshal(raw, &uman); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if uman.Episode != e.ID || len(uman.Objects) == 0 || len(uman.Quality) != len(e.Quality) {
		t.Fatalf("manifest does not describe the episode: %+v", uman)
	}
	if uman.Verdict == nil || e.Verdict == nil || uman.Verdict.Status != e.Verdict.Status || len(uman.Verdict.Reasons) != len(e.Verdict.Reasons) {
		t.Errorf("manifest verdict %+v, episode verdict %+v", uman.Verdict, e.Verdict)
	}
	for _, o := range uman.Objects {
		b, err := os.ReadFile(filepath.Join(objDir, o.Name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != o.SHA256 || int64(len(b)) != o.Size {
			t.Errorf("object %s does not match its manifest entry", o.Name)
		}
	}
	f, err := os.Open(filepath.Join(objDir, "episode.mcap"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := mcap.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	leftOut := map[string]uint64{}
	info, err := r.Info()
	if err != nil {
		t.Fatal(err)
	}
	for _, idx := range info.MetadataIndexes {
		md, err := r.GetMetadata(idx.Offset)
		if err != nil {
			t.Fatal(err)
		}
		var man export.Manifest
		if err := json.Unmarshal([]byte(md.Metadata["manifest"]), &man); err != nil {
			t.Fatal(err)
		}
		for _, si := range man.Streams {
			leftOut[si.Stream] = si.VideoLeftOut
			if si.Kind != "video" {
				continue
			}
			// manifest.json states the same start as the MCAP.
			i := slices.IndexFunc(uman.Video, func(v upload.VideoStart) bool { return v.Stream == si.Stream })
			if si.VideoStart == nil || i < 0 || uman.Video[i].StartNs == nil || *uman.Video[i].StartNs != *si.VideoStart ||
				uman.Video[i].LeftOut != si.VideoLeftOut {
				t.Errorf("%s: video start in the MCAP %v, in manifest.json %+v", si.Stream, si.VideoStart, uman.Video)
			}
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if r, err = mcap.NewReader(f); err != nil {
		t.Fatal(err)
	}
	it, err := r.Messages(mcap.UsingIndex(false))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]message{}
	var msg mcap.Message
	for {
		_, ch, m, err := it.NextInto(&msg)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read MCAP: %v", err)
		}
		if strings.HasSuffix(ch.Topic, "/raw") {
			t.Errorf("undecodable messages on %s", ch.Topic)
			continue
		}
		stream := ch.Metadata["stream"]
		if strings.Contains(stream, "cam") && len(out[stream]) == 0 {
			// The first frame of every camera is an IDR with its SPS
			// and PPS in front (Annex-B inside the CompressedVideo).
			sps := bytes.Index(m.Data, []byte{0, 0, 0, 1, 0x67})
			pps := bytes.Index(m.Data, []byte{0, 0, 0, 1, 0x68})
			idr := bytes.Index(m.Data, []byte{0, 0, 0, 1, 0x65})
			if sps < 0 || pps < 0 || idr < 0 || idr < sps || idr < pps {
				t.Errorf("%s: the first video message is not an IDR with SPS and PPS", stream)
			}
		}
		out[stream] = append(out[stream], message{int64(m.LogTime), int64(m.PublishTime)})
	}
	for _, m := range out {
		sort.Slice(m, func(i, j int) bool { return m[i].logT < m[j].logT })
	}
	return out, leftOut
}

// checkAlignment compares every aligned time with the simulator's ground
// truth: p99 of the error must be within 1 ms, or within the stream's
// stated bound. It returns the p99 in ms.
func checkAlignment(t *testing.T, s *sim.Sim, stream string, m []message, q episode.StreamReport) float64 {
	t.Helper()
	var errs []float64
	arrival := 0
	for _, x := range m {
		if x.pubT == x.logT {
			arrival++ // no device time yet (before the first sender report)
			continue
		}
		truth, ok := s.Truth(stream, x.pubT)
		if !ok {
			t.Errorf("%s: device time %d has no ground truth", stream, x.pubT)
			return math.Inf(1)
		}
		errs = append(errs, math.Abs(float64(x.logT-truth))/1e6)
	}
	if arrival > 10 {
		t.Errorf("%s: %d samples without device time", stream, arrival)
	}
	if len(errs) == 0 {
		t.Errorf("%s: no samples with device time", stream)
		return math.Inf(1)
	}
	slices.Sort(errs)
	p99 := errs[int(float64(len(errs)-1)*0.99)]
	limit := max(1.0, q.AlignmentErrorBoundMs)
	t.Logf("%s: alignment error p50 %.3f ms, p99 %.3f ms, max %.3f ms; stated bound %.3f ms", stream, errs[len(errs)/2], p99, errs[len(errs)-1], q.AlignmentErrorBoundMs)
	if p99 > limit {
		t.Errorf("%s: alignment error p99 %.3f ms exceeds both 1 ms and the stated bound %.3f ms", stream, p99, q.AlignmentErrorBoundMs)
	}
	return p99
}

const framePeriod = int64(time.Second) / 30

// checkVideo checks that every frame missing from the 30 fps grid is
// counted as a gap in the quality report, and returns the holes' lengths.
func checkVideo(t *testing.T, stream string, m []message, q episode.StreamReport, from, to int64, leftOut uint64) []int64 {
	t.Helper()
	var holes []int64
	var missing int64
	for i := 1; i < len(m); i++ {
		step := m[i].pubT - m[i-1].pubT
		if m[i].pubT == m[i].logT || m[i-1].pubT == m[i-1].logT {
			step = m[i].logT - m[i-1].logT
		}
		if step > framePeriod*3/2 {
			holes = append(holes, step)
			missing += (step+framePeriod/2)/framePeriod - 1
		}
	}
	if n := uint64(len(holes)); q.Gaps < n || q.Gaps > n+1 {
		t.Errorf("%s: %d holes in the frame sequence but the report counts %d gaps", stream, n, q.Gaps)
	}
	if missing > 0 && q.Lost+q.Drops == 0 {
		t.Errorf("%s: %d frames missing but the report counts no loss or drops", stream, missing)
	}
	// Frames missing at the window's edges (leading or trailing silence,
	// e.g. the camera's last frames dropped under load) are not between
	// two recorded frames: count the frame slots there too.
	edge := func(d int64) int64 {
		if d > framePeriod*3/2 {
			return d / framePeriod
		}
		return 0
	}
	missing += edge(m[0].logT-from) + edge(to-m[len(m)-1].logT)
	slots := (to-from)/framePeriod + 1
	if got := int64(len(m)) + missing + int64(leftOut); got < slots-3 || got > slots+1 {
		t.Errorf("%s: %d frames recorded + %d missing = %d, want the window's %d frame slots (first frame %v after the window start, last %v before its end)",
			stream, len(m), missing, got, slots, time.Duration(m[0].logT-from), time.Duration(to-m[len(m)-1].logT))
	}
	t.Logf("%s: %d frames, %d missing in %d holes; report: %d gaps, %d lost packets, %d drops", stream, len(m), missing, len(holes), q.Gaps, q.Lost, q.Drops)
	return holes
}

// checkTelemetry checks that an MQTT stream lost nothing: consecutive
// device stamps are one period apart and the window is covered to its
// edges.
func checkTelemetry(t *testing.T, stream string, m []message, q episode.StreamReport, from, to int64) {
	t.Helper()
	period := m[1].pubT - m[0].pubT
	for i := 1; i < len(m); i++ {
		if step := m[i].pubT - m[i-1].pubT; step != period {
			t.Errorf("%s: device stamps step %d ns at message %d, want %d: a message is missing or repeated", stream, step, i, period)
			return
		}
	}
	slack := period + int64(5*time.Millisecond)
	if m[0].logT-from > slack || to-m[len(m)-1].logT > slack {
		t.Errorf("%s: messages cover [%d, %d], the window is [%d, %d]", stream, m[0].logT, m[len(m)-1].logT, from, to)
	}
	if q.Gaps != 0 || q.Lost != 0 || q.DecodeErrors != 0 {
		t.Errorf("%s: report counts %d gaps, %d lost, %d decode errors; want none", stream, q.Gaps, q.Lost, q.DecodeErrors)
	}
}

// degradedFor reports whether e's verdict is degraded with reason code for
// stream.
func degradedFor(e episode.Episode, stream, code string) bool {
	if e.Verdict == nil || e.Verdict.Status != episode.QualityDegraded {
		return false
	}
	for _, r := range e.Verdict.Reasons {
		if r.Stream == stream && r.Code == code {
			return true
		}
	}
	return false
}
