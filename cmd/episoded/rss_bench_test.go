package main

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/daemon/daemontest"
	"github.com/episoded/episoded/internal/procstat"
	"github.com/episoded/episoded/internal/sim"
	"github.com/episoded/episoded/internal/testclip"
)

// Environment of BenchmarkDaemonRSS8Cameras (`make bench` sets the first
// from RSS_DURATION).
const (
	rssDurationEnv = "EPISODED_RSS_BENCH_DURATION"   // Go duration; default 10m
	rssEveryEnv    = "EPISODED_RSS_BENCH_EVERY"      // sampling interval; default 5s
	rssProfileEnv  = "EPISODED_RSS_BENCH_PROFILE"    // if set, a directory kept for the daemon's log and its heap profile at the end
	rssDaemonEnv   = "EPISODED_RSS_BENCH_DAEMON_ENV" // extra environment of the daemon only, e.g. "GOGC=50 GOMEMLIMIT=64MiB"
)

// BenchmarkDaemonRSS8Cameras measures the resident memory of the built
// daemon (`episoded run`, its own process) recording the simulated cell
// with 8 cameras of 1080p30 H.264 at 4 Mbit/s (internal/testclip, served
// by the simulator's gortsplib server over loopback TCP) plus the
// simulator's 200 Hz joint states, 50 Hz gripper and 10 Hz lidar (~1 MB/s)
// over its MQTT broker, with its episode triggers (one 10 s episode every
// 15 s) and uploads to a dir target: the configuration `episoded demo`
// records, at the default settings otherwise. The simulator runs in the
// benchmark process, so its memory is not counted.
//
// VmRSS of the daemon is sampled every EPISODED_RSS_BENCH_EVERY (5s) for
// EPISODED_RSS_BENCH_DURATION (10m). Reported: peak-RSS-MB (the kernel's
// VmHWM, so no peak between samples is missed), final-RSS-MB, the slope
// over the second half (least squares, MB/min: flat is about 0) and the
// mean over the second half, in MB of 10^6 bytes. The recording itself is
// checked: every camera must have stored at least 25 frames/s on average,
// else the figure would not be the load it claims. Frames the daemon
// dropped and RTP packets the simulator's server dropped because the
// daemon read too slowly (server-queue-drops: on a loaded machine) are
// reported beside it.
//
//	EPISODED_RSS_BENCH_DURATION=10m go test -run '^$' -bench BenchmarkDaemonRSS8Cameras -benchtime 1x -timeout 30m ./cmd/episoded/
func BenchmarkDaemonRSS8Cameras(b *testing.B) {
	if testing.Short() {
		b.Skip("records 8 1080p cameras with the built daemon for minutes; skipped under -short")
	}
	dur := envDuration(b, rssDurationEnv, 10*time.Minute)
	every := envDuration(b, rssEveryEnv, 5*time.Second)
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		b.Fatal("ffmpeg not installed (apt-get install -y --no-install-recommends ffmpeg)")
	}
	dir := b.TempDir()
	clip, mbps, err := testclip.HD1080p30.AccessUnits(ffmpeg, filepath.Join(dir, "clip.h264"))
	if err != nil {
		b.Fatal(err)
	}
	const cameras = 8
	// The demo's cell (clock offsets, drift and jitter), 8 cameras.
	s := daemontest.StartSim(b, sim.Options{
		RTSPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Cameras: cameras, Clip: clip,
		ClockOffset: 500 * time.Millisecond, ClockDriftPPM: 30, Jitter: 2 * time.Millisecond, Seed: 1,
	})
	addr := freeAddr(b)
	base := "http://" + addr
	central := filepath.Join(dir, "central") // the upload target, as in episoded demo
	if err := os.MkdirAll(central, 0o755); err != nil {
		b.Fatal(err)
	}
	cfg := writeFile(b, filepath.Join(dir, "episoded.yaml"), s.Config(filepath.Join(dir, "store"), central, addr))

	for range b.N {
		logDir := cmp.Or(os.Getenv(rssProfileEnv), dir)
		r := runRSS(b, cfg, base, filepath.Join(logDir, "daemon.log"), dur, every)
		b.ReportMetric(r.peak, "peak-RSS-MB")
		b.ReportMetric(r.final, "final-RSS-MB")
		b.ReportMetric(r.slope, "slope-MB/min")
		b.ReportMetric(r.mean, "mean-2nd-half-RSS-MB")
		b.ReportMetric(r.fps/cameras, "fps/camera")
		b.ReportMetric(r.dropped, "dropped-frames")
		b.ReportMetric(r.minutes, "minutes")
		b.ReportMetric(float64(s.QueueDrops()), "server-queue-drops")
		b.ReportMetric(0, "ns/op")
		b.Logf("%d cameras of %.2f Mbit/s 1080p30 + simulator telemetry and lidar for %s: daemon RSS peak %.1f MB, final %.1f MB, 2nd half mean %.1f MB, slope %+.2f MB/min; %.1f fps/camera, %v dropped frames",
			cameras, mbps, dur, r.peak, r.final, r.mean, r.slope, r.fps/cameras, r.dropped)
		b.Logf("RSS samples (min MB): %s", r.series)
	}
}

type rssResult struct {
	peak, final, slope, mean float64
	fps, dropped, minutes    float64
	series                   string
}

func runRSS(b *testing.B, cfg, base, logPath string, dur, every time.Duration) rssResult {
	logf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), strings.Fields(os.Getenv(rssDaemonEnv))...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := false
	defer func() {
		if !exited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	log := fileTail(logPath)
	const cameras = 8
	waitUntil(b, 60*time.Second, "every camera streaming", func() bool {
		return metricSum(base, "episoded_rtsp_fps{") >= cameras*20
	}, log)
	framesStart, t0 := metricSum(base, "episoded_rtsp_frames_total{"), time.Now()

	type point struct{ t, mb float64 } // minutes since start, MB
	var pts []point
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		el := time.Since(t0)
		mb, err := procstat.StatusKB(cmd.Process.Pid, "VmRSS")
		if err != nil {
			b.Fatalf("daemon gone after %s: %v\n%s", el.Round(time.Second), err, log.String())
		}
		pts = append(pts, point{el.Minutes(), float64(mb) * 1024 / 1e6})
		if el >= dur {
			break
		}
		<-tick.C
	}
	el := time.Since(t0)
	var r rssResult
	r.minutes = el.Minutes()
	r.fps = (metricSum(base, "episoded_rtsp_frames_total{") - framesStart) / el.Seconds()
	r.dropped = metricSum(base, "episoded_rtsp_dropped_frames_total{")
	if dir := os.Getenv(rssProfileEnv); dir != "" {
		saveHeapProfile(b, base, dir)
	}
	hwm, err := procstat.StatusKB(cmd.Process.Pid, "VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	r.peak = float64(hwm) * 1024 / 1e6
	r.final = pts[len(pts)-1].mb

	// Least squares over the second half.
	var half []point
	for _, p := range pts {
		if p.t >= r.minutes/2 {
			half = append(half, p)
		}
	}
	var st, sm float64
	for _, p := range half {
		st += p.t
		sm += p.mb
	}
	n := float64(len(half))
	mt, mm := st/n, sm/n
	var sxy, sxx float64
	for _, p := range half {
		sxy += (p.t - mt) * (p.mb - mm)
		sxx += (p.t - mt) * (p.t - mt)
	}
	r.mean = mm
	if sxx > 0 {
		r.slope = sxy / sxx
	}
	var sb strings.Builder
	step := max(1, len(pts)/40)
	for i := 0; i < len(pts); i += step {
		fmt.Fprintf(&sb, "%.1f:%.0f ", pts[i].t, pts[i].mb)
	}
	r.series = strings.TrimSpace(sb.String())

	// A clean stop: SIGTERM, and the daemon exits 0.
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		exited = true
		if err != nil {
			b.Errorf("daemon exit: %v\n%s", err, log.String())
		}
	case <-time.After(2 * time.Minute):
		b.Errorf("daemon did not stop within 2 minutes of SIGTERM")
	}
	if r.fps < cameras*25 {
		b.Errorf("the daemon stored %.1f frames/s from %d cameras, want at least 25 each: the load is not what the figure claims", r.fps, cameras)
	}
	return r
}

// metricSum adds up every Prometheus sample whose line starts with prefix
// (a metric name and "{" for all its label sets); -1 if the scrape fails.
func metricSum(base, prefix string) float64 {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil && !math.IsNaN(v) {
			sum += v
		}
	}
	return sum
}

// saveHeapProfile fetches the daemon's heap profile into dir.
func saveHeapProfile(b *testing.B, base, dir string) {
	resp, err := http.Get(base + "/debug/pprof/heap")
	if err != nil {
		b.Errorf("heap profile: %v", err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Logf("no heap profile: %s (this build serves no /debug/pprof/)", resp.Status)
		return
	}
	path := filepath.Join(dir, "daemon-heap.pprof")
	f, err := os.Create(path)
	if err != nil {
		b.Error(err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Error(err)
	}
	b.Logf("heap profile: %s", path)
}

func envDuration(b *testing.B, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		b.Fatalf("%s=%q: want a positive Go duration such as 90s or 10m", name, v)
	}
	return d
}

// fileTail shows the end of a log file when a wait fails.
type fileTail string

func (f fileTail) String() string {
	data, _ := os.ReadFile(string(f))
	return string(data[max(0, len(data)-3000):])
}
