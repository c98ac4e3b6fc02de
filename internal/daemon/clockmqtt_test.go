package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"github.com/episoded/episoded/internal/testwait"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startMosquitto runs a real mosquitto broker on a free loopback port.
func startMosquitto(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real mosquitto broker; skipped under -short")
	}
	for _, b := range []string{"/usr/sbin/mosquitto", "mosquitto_pub"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (apt-get install -y --no-install-recommends mosquitto mosquitto-clients): %v", b, err)
		}
	}
	addr := freeAddr(t)
	port := strings.TrimPrefix(addr, "127.0.0.1:")
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, []byte("listener "+port+" 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/sbin/mosquitto", "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	waitFor(t, 30*time.Second, "mosquitto listening", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return port
}

// TestWildTimestampOverMQTT: a device publishes, through a real mosquitto
// with mosquitto_pub, one JSON message whose "ts" is int64 max (or a year
// ahead), then good
// messages (its clock 2.5 s ahead of the gateway's) while an episode
// records. The wild message is stamped at arrival and flagged; every good
// sample lands inside the episode's window, within a few ms of when it was
// published (before the fix they landed 235 years back, outside every
// episode).
func TestWildTimestampOverMQTT(t *testing.T) {
	for _, w := range []struct {
		name string
		ts   func() int64
	}{
		{"int64max", func() int64 { return math.MaxInt64 }},
		{"plus1year", func() int64 { return time.Now().Add(365 * 24 * time.Hour).UnixNano() }},
	} {
		t.Run(w.name, func(t *testing.T) { testWildOverMQTT(t, w.ts()) })
	}
}

func testWildOverMQTT(t *testing.T, wildTS int64) {
	port := startMosquitto(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	const deviceAhead = 2500 * time.Millisecond
	cfgText := fmt.Sprintf(`gateway: {id: gw, site: test}
api: {listen: %q}
storage: {dir: %q, timeline_retention: 1m}
brokers:
  - {id: b, url: "tcp://127.0.0.1:%s"}
devices:
  - {id: robot, type: mqtt, broker: b, topics: [c1/joints], stream: "{topic}", format: json, time_field: ts, time_unit: ns}
cells:
  - {id: c1, devices: [robot], preroll: 1s, postroll: 1s}
sync:
  mode: daemon
  target: {type: dir, path: %q}
`, listen, filepath.Join(dir, "store"), port, filepath.Join(dir, "up"))
	if err := os.MkdirAll(filepath.Join(dir, "up"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("clock-mqtt", []byte(cfgText), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, stopDaemon := daemontest.Run(t, cfg, log, nil)
	api := "http://" + d.Addr()

	// The broker connection turns "streaming" once the daemon has
	// subscribed; then the wild message goes first.
	waitFor(t, 20*time.Second, "the daemon subscribed", func() bool { return statusOf(t, api).streaming("b") })
	if out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t", "c1/joints",
		"-m", fmt.Sprintf(`{"ts": %d, "j": [0, 0]}`, wildTS)).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, out)
	}
	waitFor(t, 20*time.Second, "the wild sample ingested", func() bool { return statusOf(t, api).samples("c1/joints") >= 1 })

	resp, err := http.Post(api+"/v1/cells/c1/episodes", "application/json", strings.NewReader(`{"task": "wild-ts"}`))
	if err != nil {
		t.Fatal(err)
	}
	var ep episode.Episode
	if err := json.NewDecoder(resp.Body).Decode(&ep); err != nil || resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("start episode: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()

	// 6 s of good samples at 50 Hz through one mosquitto_pub session,
	// each stamped with the device clock when written.
	pub := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t", "c1/joints", "-l")
	stdin, err := pub.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Start(); err != nil {
		t.Fatal(err)
	}
	sent := map[int64]int64{} // device ts -> gateway time when published
	tick := time.NewTicker(20 * time.Millisecond)
	for i := 0; i < 300; i++ {
		<-tick.C
		now := time.Now().UnixNano()
		ts := now + int64(deviceAhead)
		sent[ts] = now
		if _, err := fmt.Fprintf(stdin, "{\"ts\": %d, \"j\": [%d, 1]}\n", ts, i); err != nil {
			t.Fatal(err)
		}
	}
	tick.Stop()
	waitFor(t, 30*time.Second, "every good sample ingested", func() bool { return statusOf(t, api).samples("c1/joints") >= 301 })
	stdin.Close()
	_ = pub.Wait()

	// The per-stream clock metrics, in base units.
	if r, err := http.Get(api + "/metrics"); err != nil {
		t.Fatal(err)
	} else {
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		for _, m := range []string{
			`episoded_stream_samples_total{kind="telemetry",stream="c1/joints"} 301`,
			`episoded_stream_clock_held_samples_total{stream="c1/joints"}`,
			`episoded_stream_clock_error_bound_seconds{stream="c1/joints"}`,
			`episoded_stream_clock_offset_seconds{stream="c1/joints"} -2.49`,
			`episoded_stream_clock_source{source="device",stream="c1/joints"} 1`,
			`episoded_stream_clock_events_total{kind="jump",stream="c1/joints"} 0`,
		} {
			if !strings.Contains(string(b), m) {
				t.Errorf("/metrics lacks %s:\n%s", m, grepLines(string(b), "episoded_stream_"))
			}
		}
	}
	req, _ := http.NewRequest(http.MethodPost, api+"/v1/episodes/"+ep.ID+"/stop", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode >= 300 {
		t.Fatalf("stop episode: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	fctx, fcancel := context.WithTimeout(context.Background(), time.Minute)
	defer fcancel()
	if err := d.Finish(fctx); err != nil {
		t.Fatalf("finish: %v", err)
	}
	if err := stopDaemon(); err != nil {
		t.Fatalf("daemon exit: %v", err)
	}

	store, err := storage.Open(storage.Options{Dir: filepath.Join(dir, "store"), MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	e, err := store.Episode(ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	from, to := e.Window(0)
	var good, wild, inWindow int
	var worst time.Duration
	for s, err := range store.Range("c1/joints", 0, 1<<62) {
		if err != nil {
			t.Fatal(err)
		}
		if s.SrcT == wildTS {
			wild++
			if s.Flags&sample.ArrivalTime == 0 || s.T > s.RecvT || s.RecvT-s.T > int64(time.Second) {
				t.Errorf("wild sample: T %d recv %d flags %b, want stamped at arrival and flagged", s.T, s.RecvT, s.Flags)
			}
			continue
		}
		pubT, ok := sent[s.SrcT]
		if !ok {
			t.Errorf("unknown sample ts %d", s.SrcT)
			continue
		}
		good++
		if s.T >= from && s.T <= to {
			inWindow++
		}
		// The first second is stamped while the clock agrees on an offset
		// and converges.
		if good > 50 {
			worst = max(worst, time.Duration(abs(s.T-pubT)))
		}
	}
	t.Logf("episode window [%d, %d]: %d good samples, %d in the window, worst |T - publish time| after the first 50 (1 s): %v; quality %+v",
		from, to, good, inWindow, worst, e.Quality)
	if wild != 1 || good != 300 || inWindow != 300 {
		t.Fatalf("stored %d wild and %d good samples, %d of them in the episode window; want 1, 300, 300", wild, good, inWindow)
	}
	// Publish-to-arrival through mosquitto on loopback takes well under
	// 20 ms even on a loaded machine.
	if worst > 20*time.Millisecond {
		t.Errorf("good samples are up to %v from their publish time", worst)
	}
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// waitFor polls cond until it holds (testwait.For).
var waitFor = testwait.For

type status struct {
	Streams []struct {
		Stream   string `json:"stream"`
		Counters struct {
			Samples uint64 `json:"samples"`
		} `json:"counters"`
	} `json:"streams"`
	Devices []struct {
		Device string `json:"device"`
		State  string `json:"state"`
	} `json:"devices"`
}

func (st status) samples(stream string) uint64 {
	for _, s := range st.Streams {
		if s.Stream == stream {
			return s.Counters.Samples
		}
	}
	return 0
}

func (st status) streaming(device string) bool {
	for _, d := range st.Devices {
		if d.Device == device {
			return d.State == "streaming"
		}
	}
	return false
}

// statusOf reads /v1/status (empty on any error: callers poll).
func statusOf(t *testing.T, api string) status {
	t.Helper()
	var st status
	resp, err := http.Get(api + "/v1/status")
	if err != nil {
		return st
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &st); err != nil {
		t.Logf("status: %v", err)
	}
	return st
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
