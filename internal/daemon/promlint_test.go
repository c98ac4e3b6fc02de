package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"github.com/episoded/episoded/internal/sim"
)

// TestMetricsPassPromlint runs the daemon on the simulated cell (an RTSP
// camera, MQTT telemetry and lidar, a dir upload target) until every
// component has registered its metrics, then lints everything the daemon
// exposes with client_golang's promlint: base units, _total counters, help
// text, no reserved suffixes.
func TestMetricsPassPromlint(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon against a simulated cell; skipped under -short")
	}
	s := daemontest.StartSim(t, sim.Options{RTSPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Cameras: 1, TriggerPeriod: -1})
	dir := t.TempDir()
	central := filepath.Join(dir, "central")
	if err := os.MkdirAll(central, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("sim.yaml", []byte(s.Config(filepath.Join(dir, "store"), central, "127.0.0.1:0")), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := daemontest.Start(t, cfg, nil)
	reg := daemon.Registry(d)

	// Each family below comes from a different component; wait until all
	// have registered (the camera's once its session is up).
	want := []string{"episoded_rtsp_frames_total", "episoded_rtsp_payload_bytes_per_second", "episoded_upload_backlog_seconds"}
	deadline := time.Now().Add(60 * time.Second)
	for {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, mf := range mfs {
			have[mf.GetName()] = true
		}
		missing := []string{}
		for _, n := range want {
			if !have[n] {
				missing = append(missing, n)
			}
		}
		for _, old := range []string{"episoded_rtsp_bitrate_bits_per_second", "episoded_upload_backlog_hours"} {
			if have[old] {
				t.Errorf("%s is still exposed", old)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never registered: %s", strings.Join(missing, ", "))
		}
		time.Sleep(100 * time.Millisecond)
	}
	mfs, _ := reg.Gather()
	t.Logf("linting %d metric families", len(mfs))
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
