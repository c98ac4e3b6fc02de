package e2e

import (
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/sim"
	"github.com/episoded/episoded/internal/testwait"
)

// metricSum sums the samples of every series of metric in a Prometheus
// text exposition.
func metricSum(t *testing.T, api, metric string) float64 {
	t.Helper()
	resp, err := http.Get(api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, metric+"{") && !strings.HasPrefix(l, metric+" ") {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", l, err)
		}
		sum += v
	}
	return sum
}

// TestCloseWhileRecordingRealCameras: 8 real RTSP cameras (the simulator's
// gortsplib server, read by the daemon's RTSP client) record a 20 s
// episode; it is stopped and the next one started at once, and while the
// first closes (its final report) the second records. No camera drops a
// frame and storage refuses nothing meanwhile.
func TestCloseWhileRecordingRealCameras(t *testing.T) {
	if testing.Short() {
		t.Skip("records 8 cameras for ~30 s; skipped under -short")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := daemontest.StartSim(t, sim.Options{RTSPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Cameras: 8, TriggerPeriod: -1, Logger: log})
	dir := t.TempDir()
	central := filepath.Join(dir, "central")
	if err := os.MkdirAll(central, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("close", []byte(s.Config(filepath.Join(dir, "store"), central, "127.0.0.1:0")), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	_, api := daemontest.Start(t, cfg, log)
	// Every camera streaming (its first frames before a keyframe are
	// dropped by design; the baseline is taken after).
	testwait.For(t, 60*time.Second, "every camera streaming", func() bool { return metricSum(t, api, "episoded_rtsp_keyframes_total") >= 8*2 })
	dropped0 := metricSum(t, api, "episoded_rtsp_dropped_frames_total")
	frames0 := metricSum(t, api, "episoded_rtsp_frames_total")

	var e1, e2 episode.Episode
	if code := call(t, "POST", api+"/v1/cells/cell1/episodes", map[string]string{"task": "long"}, &e1); code != 201 {
		t.Fatalf("start: %d", code)
	}
	time.Sleep(20 * time.Second) // pacing: a 20 s episode is the input under test
	if code := call(t, "POST", api+"/v1/episodes/"+e1.ID+"/stop", nil, nil); code != 200 {
		t.Fatalf("stop: %d", code)
	}
	if code := call(t, "POST", api+"/v1/cells/cell1/episodes", map[string]string{"task": "next"}, &e2); code != 201 {
		t.Fatalf("start the next: %d", code)
	}
	e1 = waitSettled(t, api, e1.ID, "the first episode")
	time.Sleep(2 * time.Second) // pacing: the next one records on, across the close
	if code := call(t, "POST", api+"/v1/episodes/"+e2.ID+"/stop", nil, nil); code != 200 {
		t.Fatalf("stop the next: %d", code)
	}
	dropped := metricSum(t, api, "episoded_rtsp_dropped_frames_total") - dropped0
	frames := metricSum(t, api, "episoded_rtsp_frames_total") - frames0
	refused := metricSum(t, api, "episoded_pipeline_refused_samples_total")
	t.Logf("%.0f frames written by 8 cameras, %.0f dropped, %.0f refused by storage", frames, dropped, refused)
	if dropped != 0 || refused != 0 {
		t.Errorf("%.0f frames dropped and %.0f refused while an episode closed", dropped, refused)
	}
	if frames < 8*30*20 {
		t.Errorf("only %.0f frames written in 22 s by 8 cameras at 30 fps", frames)
	}
	// The reports agree. (The long episode's pre-roll reaches back to the
	// cameras' connection, whose frames before the first keyframe are
	// dropped by design: its drops are not checked.)
	e2 = waitSettled(t, api, e2.ID, "the second episode")
	for _, c := range []struct {
		e       episode.Episode
		min     uint64
		noDrops bool
	}{{e1, 30 * 20, false}, {e2, 30 * 2, true}} {
		cams := 0
		for _, q := range c.e.Quality {
			if !strings.Contains(q.Stream, "/cam") {
				continue
			}
			cams++
			if q.Samples < c.min || c.noDrops && (q.Drops != 0 || q.Gaps != 0) {
				t.Errorf("episode %s %s: %d samples, %d drops, %d gaps", c.e.Task, q.Stream, q.Samples, q.Drops, q.Gaps)
			}
		}
		if cams != 8 {
			t.Errorf("episode %s: %d camera reports, want 8", c.e.Task, cams)
		}
	}
}
