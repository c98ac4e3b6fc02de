package rtsp

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/internal/testclip"
)

// Environment variables of the benchmark.
const (
	// benchSecondsEnv sets the recording time (default 30).
	benchSecondsEnv = "EPISODED_RTSP_BENCH_SECONDS"
	// benchServerEnv makes the test binary run the benchmark's RTSP server
	// (in its own process, so that its CPU is charged to neither side).
	benchServerEnv = "EPISODED_RTSP_BENCH_SERVER"
	benchClipEnv   = "EPISODED_RTSP_BENCH_CLIP"
	benchStreams   = 8
	benchWarmup    = 5 * time.Second
)

// procCPU sums user+system time of running processes from /proc/<pid>/stat
// (clock ticks of 1/100 s, Linux's USER_HZ).
func procCPU(b *testing.B, cmds []*exec.Cmd) time.Duration {
	var total time.Duration
	for _, c := range cmds {
		raw, err := os.ReadFile("/proc/" + strconv.Itoa(c.Process.Pid) + "/stat")
		if err != nil {
			b.Fatalf("ffmpeg exited early: %v", err)
		}
		// Fields after the parenthesised command name; utime and stime
		// are fields 14 and 15 of the whole line.
		f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return total
}

func TestMain(m *testing.M) {
	if addr := os.Getenv(benchServerEnv); addr != "" {
		if err := benchServer(addr, os.Getenv(benchClipEnv), benchStreams); err != nil {
			fmt.Fprintln(os.Stderr, "bench server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// benchServer serves n copies of an H.264 Annex-B clip, looped in real time
// at 30 fps, on rtsp://addr/s0 ... s<n-1>, until SIGINT/SIGTERM.
func benchServer(addr, clipPath string, n int) error {
	raw, err := os.ReadFile(clipPath)
	if err != nil {
		return err
	}
	aus, err := assets.AccessUnits(raw, false)
	if err != nil {
		return err
	}
	var sps, pps []byte
	for _, nalu := range aus[0] {
		switch nalu[0] & 0x1f {
		case 7:
			sps = nalu
		case 8:
			pps = nalu
		}
	}
	h := &benchHandler{streams: map[string]*gortsplib.ServerStream{}}
	srv := &gortsplib.Server{Handler: h, RTSPAddress: addr}
	if err := srv.Start(); err != nil {
		return err
	}
	defer srv.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	for i := range n {
		f := &format.H264{PayloadTyp: 96, PacketizationMode: 1, SPS: sps, PPS: pps}
		medi := &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{f}}
		st := &gortsplib.ServerStream{Server: srv, Desc: &description.Session{Medias: []*description.Media{medi}}}
		if err := st.Initialize(); err != nil {
			return err
		}
		defer st.Close()
		h.mu.Lock()
		h.streams["s"+strconv.Itoa(i)] = st
		h.mu.Unlock()
		enc, err := f.CreateEncoder()
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / 30)
			defer tick.Stop()
			for k := 0; ; k++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				pkts, err := enc.Encode(aus[k%len(aus)])
				if err != nil {
					panic(err)
				}
				for _, p := range pkts {
					p.Timestamp = uint32(k * 3000)
					st.WritePacketRTP(medi, p) //nolint:errcheck
				}
			}
		}()
	}
	fmt.Println("ready")
	wg.Wait()
	return nil
}

type benchHandler struct {
	mu      sync.Mutex
	streams map[string]*gortsplib.ServerStream
}

func (h *benchHandler) find(path string) (*base.Response, *gortsplib.ServerStream, error) {
	path = strings.TrimPrefix(path, "/")
	if i := strings.IndexByte(path, '/'); i >= 0 {
		path = path[:i]
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if st := h.streams[path]; st != nil {
		return &base.Response{StatusCode: base.StatusOK}, st, nil
	}
	return &base.Response{StatusCode: base.StatusNotFound}, nil, nil
}

func (h *benchHandler) OnDescribe(ctx *gortsplib.ServerHandlerOnDescribeCtx) (*base.Response, *gortsplib.ServerStream, error) {
	return h.find(ctx.Path)
}

func (h *benchHandler) OnSetup(ctx *gortsplib.ServerHandlerOnSetupCtx) (*base.Response, *gortsplib.ServerStream, error) {
	return h.find(ctx.Path)
}

func (h *benchHandler) OnPlay(*gortsplib.ServerHandlerOnPlayCtx) (*base.Response, error) {
	return &base.Response{StatusCode: base.StatusOK}, nil
}

func cpuTime(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRecord8Streams records 8 concurrent ~4 Mbit/s 1080p30 H.264
// streams for EPISODED_RTSP_BENCH_SECONDS (default 30) and, at the same
// time from the same server, lets 8 ffmpeg processes do the same with
// `ffmpeg -rtsp_transport tcp -i URL -c copy -f null -`. It reports CPU
// seconds per stream-minute for both (episoded: this process's rusage delta,
// with a sink that only counts; ffmpeg: each child's rusage), their ratio,
// this process's peak RSS, and episoded's dropped frames and lost packets.
// The server runs in a child process and is charged to neither.
// Run it with -benchtime 1x: one iteration is the whole measurement.
func BenchmarkRecord8Streams(b *testing.B) {
	ffmpeg := ffmpegPath(b)
	secs := 30.0
	if v := os.Getenv(benchSecondsEnv); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			b.Fatalf("%s=%q: want a positive number of seconds", benchSecondsEnv, v)
		}
		secs = f
	}
	dur := time.Duration(secs * float64(time.Second))

	// A real 1080p30 clip at ~4 Mbit/s CBR, 4 s, looped by the server.
	dir := b.TempDir()
	clipPath := filepath.Join(dir, "bench.h264")
	mbps, err := testclip.HD1080p30.Write(ffmpeg, clipPath)
	if err != nil {
		b.Fatalf("make bench clip: %v", err)
	}

	addr := freeAddr(b)
	server := exec.Command(os.Args[0], "-test.run=^$")
	server.Env = append(os.Environ(), benchServerEnv+"="+addr, benchClipEnv+"="+clipPath)
	server.Stderr = os.Stderr
	stdout, err := server.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := server.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		server.Process.Signal(os.Interrupt) //nolint:errcheck
		server.Wait()                       //nolint:errcheck
	}()
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		io.Copy(io.Discard, stdout) //nolint:errcheck
	}()
	select {
	case line := <-ready:
		if line != "ready\n" {
			b.Fatalf("bench server: %q", line)
		}
	case <-time.After(20 * time.Second):
		b.Fatal("bench server not ready after 20s")
	}

	b.ResetTimer()
	var ruStart syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ruStart); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	cams := make([]*Camera, benchStreams)
	sinks := make([]*memSink, benchStreams)
	for i := range benchStreams {
		cam, err := New(Options{Device: "bench" + strconv.Itoa(i), URL: "rtsp://" + addr + "/s" + strconv.Itoa(i)})
		if err != nil {
			b.Fatal(err)
		}
		cams[i], sinks[i] = cam, &memSink{discard: true, changed: make(chan struct{}, 1)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cam.Run(ctx, sinks[i]) //nolint:errcheck
		}()
	}
	ffs := make([]*exec.Cmd, benchStreams)
	for i := range benchStreams {
		ffs[i] = exec.Command(ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin",
			"-rtsp_transport", "tcp", "-i", "rtsp://"+addr+"/s"+strconv.Itoa(i), "-c", "copy", "-f", "null", "-")
		if err := ffs[i].Start(); err != nil {
			b.Fatal(err)
		}
	}
	// A camera joins mid-GOP and, by design, skips (and counts as dropped)
	// the frames before its first keyframe; those are reported apart.
	waitFor(b, 10*time.Second, "first frames", func() bool {
		for _, c := range cams {
			if c.Stats().Frames == 0 {
				return false
			}
		}
		return true
	})
	var joinDropped uint64
	for _, c := range cams {
		joinDropped += c.Stats().DroppedFrames
	}
	// Steady state too: the same window minus the first benchWarmup, from
	// /proc for ffmpeg and getrusage for us, excluding both sides' start-up.
	warm := min(benchWarmup, dur/2)
	time.Sleep(warm)
	var ruWarm syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ruWarm) //nolint:errcheck
	ffWarm := procCPU(b, ffs)
	time.Sleep(dur - warm)
	var ruSteady syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ruSteady) //nolint:errcheck
	ffSteady := procCPU(b, ffs) - ffWarm
	cancel()
	wg.Wait()
	var ruEnd syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ruEnd); err != nil {
		b.Fatal(err)
	}
	var ffCPU time.Duration
	for _, c := range ffs {
		c.Process.Signal(os.Interrupt) //nolint:errcheck
		c.Wait()                       //nolint:errcheck
		if ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage); ok {
			ffCPU += cpuTime(ru)
		}
	}
	b.StopTimer()

	ourCPU := cpuTime(&ruEnd) - cpuTime(&ruStart)
	streamMinutes := float64(benchStreams) * secs / 60
	var frames, dropped, lost uint64
	for _, c := range cams {
		s := c.Stats()
		frames += s.Frames
		dropped += s.DroppedFrames
		lost += s.LostPackets
	}
	ours := ourCPU.Seconds() / streamMinutes
	theirs := ffCPU.Seconds() / streamMinutes
	b.ReportMetric(ours, "cpu-s/stream-min")
	b.ReportMetric(theirs, "ffmpeg-cpu-s/stream-min")
	b.ReportMetric(ours/theirs, "cpu-ratio")
	steadyMin := float64(benchStreams) * (dur - warm).Seconds() / 60
	steadyOurs := (cpuTime(&ruSteady) - cpuTime(&ruWarm)).Seconds() / steadyMin
	steadyTheirs := ffSteady.Seconds() / steadyMin
	b.ReportMetric(steadyOurs/steadyTheirs, "steady-cpu-ratio")
	b.ReportMetric(float64(ruEnd.Maxrss)/1024, "peak-rss-MiB")
	dropped -= joinDropped
	b.ReportMetric(float64(dropped), "dropped-frames")
	b.ReportMetric(float64(joinDropped), "join-skipped-frames")
	b.ReportMetric(float64(lost), "lost-packets")
	b.ReportMetric(float64(frames)/float64(benchStreams)/secs, "fps/stream")
	b.ReportMetric(mbps, "clip-Mbit/s")
	b.Logf("%d streams x %.0fs of %.2f Mbit/s 1080p30: episoded %.3f CPU-s (%.4f/stream-min), ffmpeg %.3f CPU-s (%.4f/stream-min), ratio %.2f, peak RSS %.1f MiB, frames %d, dropped %d (plus %d skipped before the first keyframe), lost packets %d",
		benchStreams, secs, mbps, ourCPU.Seconds(), ours, ffCPU.Seconds(), theirs, ours/theirs,
		float64(ruEnd.Maxrss)/1024, frames, dropped, joinDropped, lost)
	b.Logf("steady state (after %v): episoded %.4f CPU-s/stream-min, ffmpeg %.4f, ratio %.2f",
		warm, steadyOurs, steadyTheirs, steadyOurs/steadyTheirs)
	if fps := float64(frames) / float64(benchStreams) / secs; fps < 25 {
		b.Errorf("recorded %.1f fps per stream, want about 30", fps)
	}
	if dropped != 0 || lost != 0 {
		b.Errorf("dropped %d frames and lost %d packets, want 0", dropped, lost)
	}
}
