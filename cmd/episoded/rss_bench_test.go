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
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/daemon/daemontest"
	"github.com/episoded/episoded/internal/daemonproc"
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
// mean over the second half, in MB of 10^6 bytes; growth-last-third-MB,
// the median of the last third of the samples minus that of the middle
// third (about 0 once the caches are full, L x run/3 for a leak of L
// MB/min: see docs/BENCHMARKS.md, "What bounds memory"), and the same
// for RSS minus Pebble's memtables and block cache (growth-ex-pebble-...,
// from the store's metrics: what grows there is no cache filling up to
// its bound); and the resident
// set at the end split into anonymous memory, the Go runtime's share of it
// (its sys minus released bytes, an upper bound) and file pages. The
// daemon is started by internal/daemonproc. The recording itself is
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
	central := filepath.Join(dir, "central") // the upload target, as in episoded demo
	if err := os.MkdirAll(central, 0o755); err != nil {
		b.Fatal(err)
	}
	cfg := writeFile(b, filepath.Join(dir, "episoded.yaml"), s.Config(filepath.Join(dir, "store"), central, addr))

	for range b.N {
		logDir := cmp.Or(os.Getenv(rssProfileEnv), dir)
		r := runRSS(b, cfg, addr, filepath.Join(logDir, "daemon.log"), dur, every)
		b.ReportMetric(r.peak, "peak-RSS-MB")
		b.ReportMetric(r.final, "final-RSS-MB")
		b.ReportMetric(r.slope, "slope-MB/min")
		b.ReportMetric(r.mean, "mean-2nd-half-RSS-MB")
		b.ReportMetric(r.growth, "growth-last-third-MB")
		b.ReportMetric(r.growthExPebble, "growth-ex-pebble-last-third-MB")
		b.ReportMetric(r.pebble, "final-pebble-MB")
		b.ReportMetric(r.anon, "final-anon-MB")
		b.ReportMetric(r.goMem, "final-go-MB")
		b.ReportMetric(r.file, "final-file-MB")
		b.ReportMetric(r.fps/cameras, "fps/camera")
		b.ReportMetric(r.dropped, "dropped-frames")
		b.ReportMetric(r.minutes, "minutes")
		b.ReportMetric(float64(s.QueueDrops()), "server-queue-drops")
		b.ReportMetric(0, "ns/op")
		b.Logf("%d cameras of %.2f Mbit/s 1080p30 + simulator telemetry and lidar for %s: daemon RSS peak %.1f MB, final %.1f MB, 2nd half mean %.1f MB, slope %+.2f MB/min, last third %+.1f MB over the middle third (medians; %+.1f MB without Pebble's memtables and block cache); at the end anon %.1f MB (Go at most %.1f; Pebble's memtables and block cache %.1f), file %.1f MB; %.1f fps/camera, %v dropped frames",
			cameras, mbps, dur, r.peak, r.final, r.mean, r.slope, r.growth, r.growthExPebble, r.anon, r.goMem, r.pebble, r.file, r.fps/cameras, r.dropped)
		b.Logf("RSS samples (min MB): %s", r.series)
	}
}

type rssResult struct {
	peak, final, slope, mean float64
	growth                   float64 // median of the last third minus that of the middle third
	growthExPebble, pebble   float64 // growth of RSS minus Pebble's C memory; Pebble's at the end
	anon, file, goMem        float64 // at the end: RssAnon, RssFile, Go's sys minus released
	fps, dropped, minutes    float64
	series                   string
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

func runRSS(b *testing.B, cfg, addr, logPath string, dur, every time.Duration) rssResult {
	d := daemonproc.Start(b, daemonproc.Options{Bin: bin, Config: cfg, API: addr, Log: logPath,
		Env: strings.Fields(os.Getenv(rssDaemonEnv))})
	base := d.Base
	log := stringerFunc(d.LogTail)
	const cameras = 8
	waitUntil(b, 60*time.Second, "every camera streaming", func() bool {
		return metricSum(base, "episoded_rtsp_fps{") >= cameras*20
	}, log)
	framesStart, t0 := metricSum(base, "episoded_rtsp_frames_total{"), time.Now()

	// minutes since start, RSS and Pebble's C memory (memtables and block
	// cache, bounded by the store's options) in MB
	type point struct{ t, mb, pebble float64 }
	var pts []point
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		el := time.Since(t0)
		mb, err := procstat.StatusKB(d.Pid(), "VmRSS")
		if err != nil {
			b.Fatalf("daemon gone after %s: %v\n%s", el.Round(time.Second), err, log.String())
		}
		pts = append(pts, point{el.Minutes(), float64(mb) * 1024 / 1e6, pebbleMB(base)})
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
	// What the resident set is made of at the end: anonymous memory (the
	// Go runtime's share of it from its own statistics, the rest is C
	// memory: Pebble's memtables and block cache) and file pages (the
	// binary).
	anon, err := procstat.StatusKB(d.Pid(), "RssAnon")
	if err != nil {
		b.Fatal(err)
	}
	file, err := procstat.StatusKB(d.Pid(), "RssFile")
	if err != nil {
		b.Fatal(err)
	}
	r.anon, r.file = float64(anon)*1024/1e6, float64(file)*1024/1e6
	r.goMem = (metricSum(base, "go_memstats_sys_bytes") - metricSum(base, "go_memstats_heap_released_bytes")) / 1e6
	hwm, err := procstat.StatusKB(d.Pid(), "VmHWM")
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
	// Growth over the last third: the median of the last third of the
	// samples minus the median of the middle third. The caches that fill
	// after start-up (Pebble's memtables and block cache, the export's
	// buffers) are full by the middle third of a 10-minute run, so a
	// bounded daemon shows about 0 here whatever its sawtooth (the
	// collector's cycles, a 16 MiB export every 15 s); a leak of L MB/min
	// shows L x run/3 (3.3 MB at 1 MB/min over 10 minutes). A median is
	// not moved by a single spike, where the least-squares slope over the
	// second half is moved by where in the run the spikes fall.
	third := func(i int, f func(point) float64) []float64 {
		var v []float64
		for _, p := range pts {
			if p.t >= r.minutes*float64(i)/3 && p.t < r.minutes*float64(i+1)/3+1e-9 {
				v = append(v, f(p))
			}
		}
		return v
	}
	rss := func(p point) float64 { return p.mb }
	exPebble := func(p point) float64 { return p.mb - p.pebble }
	r.growth = median(third(2, rss)) - median(third(1, rss))
	// The same without what Pebble's memtables and block cache hold: what
	// grows here is not a cache filling to its bound.
	r.growthExPebble = median(third(2, exPebble)) - median(third(1, exPebble))
	r.pebble = pts[len(pts)-1].pebble
	var sb strings.Builder
	step := max(1, len(pts)/40)
	for i := 0; i < len(pts); i += step {
		fmt.Fprintf(&sb, "%.1f:%.0f ", pts[i].t, pts[i].mb)
	}
	r.series = strings.TrimSpace(sb.String())

	// A clean stop: SIGTERM, and the daemon exits 0.
	if err := d.Stop(2 * time.Minute); err != nil {
		b.Errorf("daemon stop: %v\n%s", err, d.LogTail())
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

// pebbleMB is what the daemon's Pebble holds in C memory (memtables and
// block cache, from its storage metrics), in MB; 0 if the scrape fails.
func pebbleMB(base string) float64 {
	v := metricSum(base, "episoded_storage_memtable_bytes") + metricSum(base, "episoded_storage_block_cache_bytes")
	return max(v, 0) / 1e6
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

// stringerFunc turns a func into a fmt.Stringer (the daemon's log tail
// for waitUntil).
type stringerFunc func() string

func (f stringerFunc) String() string { return f() }
