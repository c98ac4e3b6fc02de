package rtsp

import (
	"bufio"
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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/pion/rtcp"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/internal/procstat"
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

// procCPU sums the user+system CPU time of running processes (procstat.CPU:
// /proc, 10 ms resolution); one that has exited fails the benchmark.
func procCPU(b *testing.B, cmds []*exec.Cmd) time.Duration {
	var total time.Duration
	for _, c := range cmds {
		d, err := procstat.CPU(c.Process.Pid)
		if err != nil {
			b.Fatalf("process %d exited early: %v", c.Process.Pid, err)
		}
		total += d
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
	cs, err := startClipServer(addr, clipPath, n, 0)
	if err != nil {
		return err
	}
	defer cs.close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Println("ready")
	cs.run(ctx)
	return nil
}

// clipServer is the benchmarks' camera: a gortsplib server that serves n
// copies of an H.264 Annex-B clip, looped in real time at 30 fps, on
// rtsp://addr/s0 ... s<n-1>.
type clipServer struct {
	srv   *gortsplib.Server
	aus   [][][]byte
	paths []*clipPath
	// readers: when > 0, a path sends its first frame (the clip's first
	// access unit, an IDR) only once this many readers play it, so that
	// every reader gets every frame sent and frames sent can be compared
	// with frames stored.
	readers int

	mu       sync.Mutex
	sessions map[string][]*gortsplib.ServerSession // played, by path

	closeOnce sync.Once
}

// clipPath is one served stream and its counters.
type clipPath struct {
	name  string
	st    *gortsplib.ServerStream
	medi  *description.Media
	forma *format.H264
	// sent counts the frames written; short those some reader did not
	// get (the server's write queue to it was full), which it sees as
	// lost packets.
	sent, short atomic.Int64
}

func startClipServer(addr, clipFile string, n, readers int) (*clipServer, error) {
	raw, err := os.ReadFile(clipFile)
	if err != nil {
		return nil, err
	}
	aus, err := assets.AccessUnits(raw, false)
	if err != nil {
		return nil, err
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
	cs := &clipServer{aus: aus, readers: readers, sessions: map[string][]*gortsplib.ServerSession{}}
	// A write queue of 256 packets (the default) is 15 frames of this
	// clip: enough on a quiet machine, but a reader that a loaded machine
	// stalls for half a second would lose packets at the server. 4096 is
	// what a camera's kernel socket buffer holds.
	cs.srv = &gortsplib.Server{Handler: cs, RTSPAddress: addr, WriteQueueSize: 4096}
	if err := cs.srv.Start(); err != nil {
		return nil, err
	}
	for i := range n {
		f := &format.H264{PayloadTyp: 96, PacketizationMode: 1, SPS: sps, PPS: pps}
		medi := &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{f}}
		st := &gortsplib.ServerStream{Server: cs.srv, Desc: &description.Session{Medias: []*description.Media{medi}}}
		if err := st.Initialize(); err != nil {
			cs.close()
			return nil, err
		}
		cs.paths = append(cs.paths, &clipPath{name: "s" + strconv.Itoa(i), st: st, medi: medi, forma: f})
	}
	return cs, nil
}

// close ends every session (readers see the end of the stream) and stops
// the server. It may be called more than once.
func (cs *clipServer) close() {
	cs.closeOnce.Do(func() {
		for _, p := range cs.paths {
			p.st.Close()
		}
		cs.srv.Close()
	})
}

// run loops the clip on every path until ctx is cancelled.
func (cs *clipServer) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, p := range cs.paths {
		wg.Go(func() {
			if err := cs.loop(ctx, p); err != nil && ctx.Err() == nil {
				panic(err)
			}
		})
	}
	wg.Wait()
}

// playing reports whether want readers play path p: each has been sent an
// RTCP packet (a probe: an empty receiver report, which readers ignore),
// which the stream writes only to active readers.
func (cs *clipServer) playing(p *clipPath) bool {
	cs.mu.Lock()
	ss := append([]*gortsplib.ServerSession(nil), cs.sessions[p.name]...)
	cs.mu.Unlock()
	if len(ss) < cs.readers {
		return false
	}
	p.st.WritePacketRTCP(p.medi, &rtcp.ReceiverReport{}) //nolint:errcheck
	active := 0
	for _, s := range ss {
		if m, ok := s.Stats().Medias[p.medi]; ok && m.RTCPPacketsSent > 0 {
			active++
		}
	}
	return active >= cs.readers
}

func (cs *clipServer) loop(ctx context.Context, p *clipPath) error {
	enc, err := p.forma.CreateEncoder()
	if err != nil {
		return err
	}
	tick := time.NewTicker(time.Second / 30)
	defer tick.Stop()
	for cs.readers > 0 && !cs.playing(p) {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		pkts, err := enc.Encode(cs.aus[k%len(cs.aus)])
		if err != nil {
			return err
		}
		var before uint64
		if cs.readers > 0 {
			before = cs.rtpSent(p)
		}
		for _, pk := range pkts {
			pk.Timestamp = uint32(k * 3000)
			p.st.WritePacketRTP(p.medi, pk) //nolint:errcheck
		}
		p.sent.Add(1)
		if cs.readers > 0 && cs.rtpSent(p)-before < uint64(len(pkts)*cs.readers) {
			p.short.Add(1)
		}
	}
}

// rtpSent is the number of RTP packets the stream has written to its
// readers (one per reader per packet).
func (cs *clipServer) rtpSent(p *clipPath) uint64 {
	return p.st.Stats().Medias[p.medi].Formats[p.forma].RTPPacketsSent
}

func (cs *clipServer) find(path string) (*base.Response, *gortsplib.ServerStream, error) {
	path = strings.TrimPrefix(path, "/")
	if i := strings.IndexByte(path, '/'); i >= 0 {
		path = path[:i]
	}
	for _, p := range cs.paths {
		if p.name == path {
			return &base.Response{StatusCode: base.StatusOK}, p.st, nil
		}
	}
	return &base.Response{StatusCode: base.StatusNotFound}, nil, nil
}

func (cs *clipServer) OnDescribe(ctx *gortsplib.ServerHandlerOnDescribeCtx) (*base.Response, *gortsplib.ServerStream, error) {
	return cs.find(ctx.Path)
}

func (cs *clipServer) OnSetup(ctx *gortsplib.ServerHandlerOnSetupCtx) (*base.Response, *gortsplib.ServerStream, error) {
	return cs.find(ctx.Path)
}

func (cs *clipServer) OnPlay(ctx *gortsplib.ServerHandlerOnPlayCtx) (*base.Response, error) {
	path := strings.TrimPrefix(ctx.Path, "/")
	if i := strings.IndexByte(path, '/'); i >= 0 {
		path = path[:i]
	}
	cs.mu.Lock()
	cs.sessions[path] = append(cs.sessions[path], ctx.Session)
	cs.mu.Unlock()
	return &base.Response{StatusCode: base.StatusOK}, nil
}

// benchSeconds is the recording time: EPISODED_RTSP_BENCH_SECONDS, default 30.
func benchSeconds(b *testing.B) float64 {
	secs := 30.0
	if v := os.Getenv(benchSecondsEnv); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			b.Fatalf("%s=%q: want a positive number of seconds", benchSecondsEnv, v)
		}
		secs = f
	}
	return secs
}

// makeBenchClip encodes the benchmarks' clip into dir (testclip.HD1080p30:
// 1080p30 at ~4 Mbit/s CBR, 4 s, an IDR every 30 frames, Annex-B). It
// returns the file and its bitrate in Mbit/s.
func makeBenchClip(b *testing.B, ffmpeg, dir string) (string, float64) {
	clipPath := filepath.Join(dir, "bench.h264")
	mbps, err := testclip.HD1080p30.Write(ffmpeg, clipPath)
	if err != nil {
		b.Fatalf("make bench clip: %v", err)
	}
	return clipPath, mbps
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
	secs := benchSeconds(b)
	dur := time.Duration(secs * float64(time.Second))
	dir := b.TempDir()
	clipPath, mbps := makeBenchClip(b, ffmpeg, dir)

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
			ffCPU += procstat.Rusage(ru)
		}
	}
	b.StopTimer()

	ourCPU := procstat.Rusage(&ruEnd) - procstat.Rusage(&ruStart)
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
	steadyOurs := (procstat.Rusage(&ruSteady) - procstat.Rusage(&ruWarm)).Seconds() / steadyMin
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
