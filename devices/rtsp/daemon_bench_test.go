package rtsp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/daemonproc"
	"github.com/episoded/episoded/internal/procstat"
	"github.com/episoded/episoded/storage"
)

// benchProfileEnv: a file to write a CPU profile of the daemon to, taken
// over the measured window through its /debug/pprof/profile (the profile
// costs the daemon a little CPU, so leave it unset for the figures), and
// FILE.allocs, its allocations since start-up.
const benchProfileEnv = "EPISODED_RTSP_BENCH_PROFILE"

// benchDaemonEnv: an episoded binary to measure instead of building the
// worktree's (to compare two builds, run after run).
const benchDaemonEnv = "EPISODED_RTSP_BENCH_DAEMON"

// BenchmarkDaemonRecord8Cameras measures the product, not the camera: the
// built episoded binary records 8 RTSP cameras (1080p30 H.264 at about
// 4 Mbit/s, over TCP, from one gortsplib server on loopback) into its store
// on disk, inside an episode, while 8 `ffmpeg -rtsp_transport tcp -i URL -c
// copy -f mpegts FILE` processes record the same 8 streams to the same disk
// in the same window. The server runs in this process and is charged to
// neither side.
//
// CPU is user+system time from /proc/<pid>/stat over the steady state:
// after a warm-up of 5 s, for EPISODED_RTSP_BENCH_SECONDS (default 30). It
// reports both sides in CPU-s per stream-minute and their ratio (x-ffmpeg:
// the goal is <= 1). Each path sends its first frame only once both its
// readers play it, so both get every frame; after the window the server
// stops, and the benchmark fails unless the daemon stored exactly the
// frames sent (the last stored seq of each stream, read from the store
// after the daemon has exited) with no frame the server could not send.
//
// Run it with -benchtime 1x: one iteration is the whole measurement. It
// builds the daemon first (go build), which takes a while on a cold cache,
// unless EPISODED_RTSP_BENCH_DAEMON names a binary to measure.
func BenchmarkDaemonRecord8Cameras(b *testing.B) {
	ffmpeg := ffmpegPath(b)
	ffprobe, err := exec.LookPath("ffprobe")
	if err != nil {
		b.Fatalf("ffprobe not found (it comes with ffmpeg): %v", err)
	}
	secs := benchSeconds(b)
	window := time.Duration(secs * float64(time.Second))
	dir := b.TempDir()
	bin := os.Getenv(benchDaemonEnv)
	if bin == "" {
		bin = daemonproc.Build(b, dir)
	}
	clipPath, mbps := makeBenchClip(b, ffmpeg, dir)

	// Both readers of a path (the daemon's camera and ffmpeg) must play
	// it before its first frame goes out.
	rtspAddr := freeAddr(b)
	cs, err := startClipServer(rtspAddr, clipPath, benchStreams, 2)
	if err != nil {
		b.Fatal(err)
	}
	defer cs.close()
	srvCtx, stopServer := context.WithCancel(context.Background())
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		cs.run(srvCtx)
	}()
	defer func() {
		stopServer()
		<-srvDone
	}()

	// The daemon: one cell of 8 cameras, an episode recording.
	apiAddr := freeAddr(b)
	storeDir := filepath.Join(dir, "store")
	var y strings.Builder
	fmt.Fprintf(&y, "gateway: {id: bench, site: bench}\nlog: {level: warn}\napi: {listen: %q}\nstorage: {dir: %q}\ndevices:\n",
		apiAddr, storeDir)
	var ids []string
	for i := range benchStreams {
		id := "cam" + strconv.Itoa(i)
		ids = append(ids, id)
		fmt.Fprintf(&y, "  - {id: %s, type: rtsp, url: \"rtsp://%s/s%d\"}\n", id, rtspAddr, i)
	}
	fmt.Fprintf(&y, "cells:\n  - {id: bench, devices: [%s]}\n", strings.Join(ids, ", "))
	cfgPath := filepath.Join(dir, "episoded.yaml")
	if err := os.WriteFile(cfgPath, []byte(y.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	d := daemonproc.Start(b, daemonproc.Options{Bin: bin, Config: cfgPath, API: apiAddr, Log: filepath.Join(dir, "episoded.log")})
	daemon, daemonLog, api := d.Cmd, d.LogTail, d.Base
	r, err := http.Post(api+"/v1/cells/bench/episodes", "application/json", strings.NewReader(`{"task":"bench"}`))
	if err != nil {
		b.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != http.StatusCreated {
		b.Fatalf("start episode: %s: %s", r.Status, body)
	}

	ffs := make([]*exec.Cmd, benchStreams)
	for i := range benchStreams {
		ffs[i] = exec.Command(ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin",
			"-rtsp_transport", "tcp", "-i", "rtsp://"+rtspAddr+"/s"+strconv.Itoa(i),
			"-c", "copy", "-f", "mpegts", filepath.Join(dir, "ffmpeg"+strconv.Itoa(i)+".ts"))
		ffs[i].Stderr = os.Stderr
		if err := ffs[i].Start(); err != nil {
			b.Fatal(err)
		}
	}
	ffStopped := false
	defer func() {
		if !ffStopped {
			for _, c := range ffs {
				c.Process.Kill() //nolint:errcheck
				c.Wait()         //nolint:errcheck
			}
		}
	}()
	waitFor(b, 60*time.Second, "every path playing to the daemon and ffmpeg", func() bool {
		for _, p := range cs.paths {
			if p.sent.Load() == 0 {
				return false
			}
		}
		return true
	})

	b.ResetTimer()
	time.Sleep(benchWarmup)
	var prof bytes.Buffer
	var profWG sync.WaitGroup
	if out := os.Getenv(benchProfileEnv); out != "" {
		profWG.Go(func() {
			u := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", api, int(window.Seconds()))
			r, err := http.Get(u)
			if err != nil {
				b.Errorf("profile: %v", err)
				return
			}
			defer r.Body.Close()
			if r.StatusCode != http.StatusOK {
				b.Errorf("profile: %s", r.Status)
				return
			}
			io.Copy(&prof, r.Body) //nolint:errcheck
		})
	}
	self := []*exec.Cmd{daemon}
	ourStart, ffStart := procCPU(b, self), procCPU(b, ffs)
	time.Sleep(window)
	ours, theirs := procCPU(b, self)-ourStart, procCPU(b, ffs)-ffStart
	b.StopTimer()
	hwmKiB, err := procstat.StatusKB(daemon.Process.Pid, "VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	rssMiB := float64(hwmKiB) / 1024
	profWG.Wait()
	if out := os.Getenv(benchProfileEnv); out != "" && prof.Len() > 0 {
		if err := os.WriteFile(out, prof.Bytes(), 0o644); err != nil {
			b.Error(err)
		}
		// And what was allocated since start-up, beside it.
		if r, err := http.Get(api + "/debug/pprof/allocs"); err == nil {
			raw, _ := io.ReadAll(r.Body)
			r.Body.Close()
			os.WriteFile(out+".allocs", raw, 0o644) //nolint:errcheck
		}
	}

	// Stop sending, then wait until the daemon has taken in every frame
	// sent (or the deadline shows what it missed).
	stopServer()
	<-srvDone
	sent := make([]int64, benchStreams)
	var sentTotal, short int64
	for i, p := range cs.paths {
		sent[i] = p.sent.Load()
		sentTotal += sent[i]
		short += p.short.Load()
	}
	streamName := func(i int) string { return "bench/cam" + strconv.Itoa(i) }
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := ingested(b, api)
		done := true
		for i := range benchStreams {
			if got[streamName(i)] < uint64(sent[i]) {
				done = false
			}
		}
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// End the sessions: ffmpeg sees the end of the stream and finishes its
	// file by itself (a SIGINT while no packet comes can leave it waiting);
	// the daemon's cameras start reconnecting, which SIGTERM ends.
	cs.close()
	ffExited := make(chan struct{})
	go func() {
		defer close(ffExited)
		for _, c := range ffs {
			c.Wait() //nolint:errcheck
		}
	}()
	select {
	case <-ffExited:
	case <-time.After(60 * time.Second):
		b.Errorf("ffmpeg did not exit within 60s of the end of its stream")
		for _, c := range ffs {
			c.Process.Kill() //nolint:errcheck
		}
		<-ffExited
	}
	ffStopped = true
	if err := d.Stop(60 * time.Second); err != nil {
		b.Fatalf("daemon stop (SIGTERM, 60 s): %v\n%s", err, daemonLog())
	}

	// What is durable: every stream's last seq in the store (gapless from
	// 1 in a new store), read after the daemon has exited.
	st, err := storage.Open(storage.Options{Dir: storeDir, MinFree: 0})
	if err != nil {
		b.Fatal(err)
	}
	var stored int64
	var perStream []string
	for i := range benchStreams {
		var n int64
		if last, err := st.LastSample(streamName(i)); err == nil {
			n = int64(last.Seq)
		} else {
			b.Errorf("%s: %v", streamName(i), err)
		}
		stored += n
		if n != sent[i] {
			perStream = append(perStream, fmt.Sprintf("%s stored %d of %d", streamName(i), n, sent[i]))
		}
	}
	if err := st.Close(); err != nil {
		b.Error(err)
	}
	var ffFrames int64
	for i := range benchStreams {
		out, err := exec.Command(ffprobe, "-v", "error", "-select_streams", "v:0", "-count_packets",
			"-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", filepath.Join(dir, "ffmpeg"+strconv.Itoa(i)+".ts")).Output()
		if err != nil {
			b.Errorf("ffprobe: %v", err)
			continue
		}
		// One line for the stream, again for the program it is in.
		if f := strings.Fields(string(out)); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			ffFrames += n
		}
	}

	streamMin := float64(benchStreams) * window.Minutes()
	oursPer, theirsPer := ours.Seconds()/streamMin, theirs.Seconds()/streamMin
	b.ReportMetric(oursPer, "daemon-cpu-s/stream-min")
	b.ReportMetric(theirsPer, "ffmpeg-cpu-s/stream-min")
	b.ReportMetric(oursPer/theirsPer, "x-ffmpeg")
	b.ReportMetric(float64(sentTotal), "frames-sent")
	b.ReportMetric(float64(stored), "frames-stored")
	b.ReportMetric(float64(sentTotal-stored), "dropped-frames")
	b.ReportMetric(float64(short), "server-short-frames")
	b.ReportMetric(float64(ffFrames), "ffmpeg-frames")
	b.ReportMetric(rssMiB, "daemon-peak-rss-MiB")
	b.ReportMetric(mbps, "clip-Mbit/s")
	b.Logf("%d cameras of %.2f Mbit/s 1080p30, steady state %v after %v: daemon %.2f CPU-s (%.4f/stream-min), ffmpeg -f mpegts %.2f CPU-s (%.4f/stream-min), %.2fx ffmpeg; frames sent %d, stored %d, ffmpeg wrote %d; daemon peak RSS %.1f MiB",
		benchStreams, mbps, window, benchWarmup, ours.Seconds(), oursPer, theirs.Seconds(), theirsPer, oursPer/theirsPer,
		sentTotal, stored, ffFrames, rssMiB)
	if len(perStream) > 0 || short > 0 {
		b.Errorf("frames stored != frames sent (%d frames the server could not send): %s\n%s",
			short, strings.Join(perStream, "; "), daemonLog())
	}
}

// ingested returns the samples each stream of the daemon has taken in, from
// /v1/status.
func ingested(b *testing.B, api string) map[string]uint64 {
	r, err := http.Get(api + "/v1/status")
	if err != nil {
		b.Fatal(err)
	}
	defer r.Body.Close()
	var st struct {
		Streams []struct {
			Stream   string `json:"stream"`
			Counters struct {
				Samples uint64 `json:"samples"`
			} `json:"counters"`
		} `json:"streams"`
	}
	if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
		b.Fatal(err)
	}
	out := map[string]uint64{}
	for _, s := range st.Streams {
		out[s.Stream] = s.Counters.Samples
	}
	return out
}
