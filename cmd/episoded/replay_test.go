package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/replay"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

const (
	replayEp  = "0193a1b2-0000-7000-8000-0000000000c1"
	replayRec = "0193a1b2-0000-7000-8000-0000000000c2"
	replayVid = "0193a1b2-0000-7000-8000-0000000000c3"
)

// replayStore builds a store in a temp dir with a closed episode (100 Hz
// JSON joint states on robots/r1/joint_states for 1 s) and a recording
// one, and returns the open store and its directory.
func replayStore(t *testing.T) (*storage.Store, string, []sample.Sample) {
	t.Helper()
	dir := t.TempDir()
	st, err := storage.Open(storage.Options{Dir: dir, MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
	t0 := time.Now().Add(-time.Hour).UnixNano()
	if _, err := st.PutDescriptor(sample.Descriptor{Stream: "cell1/robot1/joints", Kind: sample.KindTelemetry, Codec: sample.CodecJSON,
		Device: "robot1", Source: "robots/r1/joint_states", Clock: sample.ClockArrival, Since: t0}); err != nil {
		t.Fatal(err)
	}
	var ss []sample.Sample
	for i := range 100 {
		ts := t0 + int64(i)*int64(10*time.Millisecond)
		ss = append(ss, sample.Sample{Stream: "cell1/robot1/joints", Seq: uint64(i + 1), T: ts, RecvT: ts,
			Payload: fmt.Appendf(nil, `{"i":%d,"q":[0.1,0.2,%d]}`, i, i*i)})
	}
	durable := make(chan error, 1)
	if err := st.Append(ss, func(err error) { durable <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-durable; err != nil {
		t.Fatal(err)
	}
	// A camera: 60 frames of the clip, in a later episode of its own.
	aus, err := assets.H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	tv := t0 + int64(10*time.Second)
	if _, err := st.PutDescriptor(sample.Descriptor{Stream: "cell1/cam1", Kind: sample.KindVideo, Codec: sample.CodecH264,
		Device: "cam1", Params: [][]byte{aus[0][0], aus[0][1]}, Since: tv}); err != nil {
		t.Fatal(err)
	}
	var vs []sample.Sample
	for i := range 60 {
		var b []byte
		for _, n := range aus[i] {
			b = append(append(b, 0, 0, 0, 1), n...)
		}
		x := sample.Sample{Stream: "cell1/cam1", Seq: uint64(i + 1), T: tv + int64(i)*int64(time.Second)/30, Payload: b}
		if video.H264.IsKeyframe(aus[i]) {
			x.Flags = sample.Keyframe // replay starts video at a keyframe
		}
		vs = append(vs, x)
	}
	if err := st.Append(vs, func(err error) { durable <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-durable; err != nil {
		t.Fatal(err)
	}
	for _, e := range []episode.Episode{
		{ID: replayVid, Cell: "cell1", Start: tv, Stop: tv + int64(2*time.Second), Streams: []string{"cell1/cam1"}, State: episode.Closed},
		{ID: replayEp, Cell: "cell1", Start: t0, Stop: t0 + int64(time.Second), Streams: []string{"cell1/robot1/joints"}, State: episode.Closed},
		{ID: replayRec, Cell: "cell1", Start: t0 + int64(2*time.Second), Streams: []string{"cell1/robot1/joints"}, State: episode.Recording},
	} {
		if err := st.PutEpisode(e); err != nil {
			t.Fatal(err)
		}
	}
	return st, dir, ss
}

// daemonStandIn serves the samples endpoint the way the daemon mounts it.
func daemonStandIn(t *testing.T, st *storage.Store) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("GET /v1/episodes/{id}/samples", replay.SamplesHandler(st, nil))
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts.URL
}

func runReplay(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = cmdReplay(args, &o, &e)
	return code, o.String(), e.String()
}

func TestReplayBadInput(t *testing.T) {
	st, dir, _ := replayStore(t)
	api := daemonStandIn(t, st)
	noBroker := "tcp://127.0.0.1:" + strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	notStore := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no id", nil, exitUsage, "need exactly one episode ID"},
		{"bad rate", []string{"--rate", "0", replayEp}, exitUsage, "--rate 0: must be positive"},
		{"bad pattern", []string{"--streams", "[", replayEp}, exitUsage, "not a valid pattern"},
		{"unknown episode (api)", []string{"--api", api, "nope"}, exitFailure, "episode nope not found"},
		{"recording (api)", []string{"--api", api, replayRec}, exitFailure, "still recording"},
		{"nothing selected (api)", []string{"--api", api, "--streams", "cell9/*", replayEp}, exitFailure, "no stream of episode"},
		{"no daemon", []string{"--api", "http://" + freeAddr(t), replayEp}, exitFailure, "daemon not reachable"},
		{"unreachable broker (api)", []string{"--api", api, "--mqtt", noBroker, replayEp}, exitFailure, "connect to MQTT broker " + noBroker},
		{"not a store", []string{"--store", notStore, replayEp}, exitFailure, "not an episoded store"},
	}
	for _, c := range cases {
		code, _, stderr := runReplay(c.args...)
		if code != c.code || !strings.Contains(stderr, c.msg) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and %q", c.name, code, stderr, c.code, c.msg)
		}
	}
	if entries, _ := os.ReadDir(notStore); len(entries) != 0 {
		t.Errorf("--store initialised a store in %s", notStore)
	}

	// Straight from the store once the daemon stand-in let go of it.
	st.Close()
	for _, c := range []struct {
		name string
		args []string
		msg  string
	}{
		{"unknown episode (store)", []string{"--store", dir, "nope"}, "episode not found: nope"},
		{"recording (store)", []string{"--store", dir, replayRec}, "still recording"},
		{"unreachable broker (store)", []string{"--store", dir, "--mqtt", noBroker, replayEp}, "connect to MQTT broker"},
	} {
		code, _, stderr := runReplay(c.args...)
		if code != exitFailure || !strings.Contains(stderr, c.msg) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and %q", c.name, code, stderr, exitFailure, c.msg)
		}
	}
}

// startBroker runs mosquitto on a free loopback port.
func startBroker(t *testing.T) string {
	t.Helper()
	return startBrokerConf(t, "")
}

// startBrokerConf runs mosquitto with extra configuration lines.
func startBrokerConf(t testing.TB, extra string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real mosquitto broker; skipped under -short")
	}
	for _, b := range []string{"/usr/sbin/mosquitto", "mosquitto_sub"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (apt-get install -y --no-install-recommends mosquitto mosquitto-clients): %v", b, err)
		}
	}
	addr := freeAddr(t)
	port := strings.TrimPrefix(addr, "127.0.0.1:")
	conf := writeFile(t, filepath.Join(t.TempDir(), "mosquitto.conf"),
		"listener "+port+" 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n"+extra)
	cmd := exec.Command("/usr/sbin/mosquitto", "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	waitUntil(t, 30*time.Second, "mosquitto listening", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, nil)
	return "tcp://" + addr
}

// The command replays through the daemon's API to a real mosquitto, the
// stream chosen with a glob that must match across '/':
// mosquitto_sub (an independent client) gets every message, in order,
// with identical payloads, on the topic prefix; the JSON summary counts
// them.
func TestReplayCommandMQTT(t *testing.T) {
	broker := startBroker(t)
	st, _, stored := replayStore(t)
	api := daemonStandIn(t, st)
	port := broker[strings.LastIndexByte(broker, ':')+1:]
	// A retained probe reaches mosquitto_sub as soon as its subscription
	// is active: the replay starts after it (not after a sleep), and the
	// probe is the one extra message counted.
	if out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-r", "-t", "probe/ready", "-m", "1").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, out)
	}
	sub := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t", "#", "-v", "-C", fmt.Sprint(len(stored)+1), "-W", "30")
	var subOut lockedBuffer
	sub.Stdout = &subOut
	subErr, _ := sub.StderrPipe()
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	go bufio.NewReader(subErr).WriteTo(os.Stderr)
	waitUntil(t, 30*time.Second, "mosquitto_sub subscribed (the retained probe)", func() bool {
		return strings.HasPrefix(subOut.String(), "probe/ready 1\n")
	}, nil)

	// --streams 'cell1/*' (the help's example) selects cell1/robot1/joints:
	// '*' matches across '/'.
	code, stdout, stderr := runReplay("--api", api, "--mqtt", broker, "--topic-prefix", "replay", "--rate", "4", "--streams", "cell1/*", "--json", replayEp)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	if err := sub.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v (got %q)", err, subOut.String())
	}
	lines := strings.Split(strings.TrimSpace(strings.TrimPrefix(subOut.String(), "probe/ready 1\n")), "\n")
	if len(lines) != len(stored) {
		t.Fatalf("mosquitto_sub got %d messages, want %d", len(lines), len(stored))
	}
	for i, l := range lines {
		if want := "replay/robots/r1/joint_states " + string(stored[i].Payload); l != want {
			t.Fatalf("message %d: %q, want %q", i, l, want)
		}
	}
	// The JSON summary follows the progress lines.
	i := strings.Index(stdout, "{")
	if i < 0 {
		t.Fatalf("no JSON summary in %q", stdout)
	}
	var sum replay.Summary
	if err := json.Unmarshal([]byte(stdout[i:]), &sum); err != nil {
		t.Fatalf("summary: %v\n%s", err, stdout)
	}
	if len(sum.Streams) != 1 || sum.Streams[0].Sent != uint64(len(stored)) || sum.Streams[0].Acked != uint64(len(stored)) ||
		sum.Streams[0].Target != "replay/robots/r1/joint_states" || sum.Rate != 4 || sum.Interrupted {
		t.Errorf("summary %+v", sum)
	}
	if el := sum.Elapsed; el < 200*time.Millisecond || el > 2*time.Second {
		t.Errorf("a 1 s episode at rate 4 took %s", el)
	}
	t.Logf("timing %+v", sum.Timing)
}

// The command serves a camera over RTSP from a store opened directly:
// ffmpeg (an independent client) records the coded slices unchanged.
func TestReplayCommandRTSP(t *testing.T) {
	if testing.Short() {
		t.Skip("needs ffmpeg; skipped under -short")
	}
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		t.Fatalf("ffmpeg not found (apt-get install -y --no-install-recommends ffmpeg): %v", err)
	}
	st, dir, _ := replayStore(t)
	var want [][]byte
	for s, err := range st.Range("cell1/cam1", 0, 1<<62) {
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range assets.SplitAnnexB(s.Payload) {
			if typ := n[0] & 0x1f; typ == 1 || typ == 5 {
				want = append(want, n)
			}
		}
	}
	st.Close()
	addr := freeAddr(t)
	type result struct {
		code           int
		stdout, stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, o, e := runReplay("--store", dir, "--rtsp", addr, "--wait-readers", replayVid)
		done <- result{code, o, e}
	}()
	// Wait for the server, then record with ffmpeg.
	waitUntil(t, 30*time.Second, "the RTSP server listening", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, nil)
	out := filepath.Join(t.TempDir(), "out.h264")
	ff := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-rtsp_transport", "tcp",
		"-i", "rtsp://"+addr+"/cell1/cam1", "-c", "copy", "-f", "h264", "-y", out)
	ff.Stderr = os.Stderr
	if err := ff.Start(); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("replay did not finish")
	}
	ffDone := make(chan error, 1)
	go func() { ffDone <- ff.Wait() }()
	select {
	case <-ffDone:
	case <-time.After(15 * time.Second):
		_ = ff.Process.Signal(syscall.SIGINT)
		<-ffDone
	}
	if r.code != exitOK || !strings.Contains(r.stdout, "serving rtsp://"+addr+"/cell1/cam1") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for _, n := range assets.SplitAnnexB(b) {
		if typ := n[0] & 0x1f; typ == 1 || typ == 5 {
			got = append(got, n)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("ffmpeg recorded %d slices, want %d\n%s", len(got), len(want), r.stdout)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("slice %d differs", i)
		}
	}
	t.Logf("summary:\n%s", r.stdout)
}

// Ctrl-C stops a looping replay: the binary prints the summary (marked
// interrupted, more than one pass) and exits 0.
func TestReplayCommandInterrupt(t *testing.T) {
	broker := startBroker(t)
	st, dir, stored := replayStore(t)
	st.Close()
	// An independent subscriber counts the telemetry messages (one topic
	// per line): more than one pass holds means the second pass began.
	port := broker[strings.LastIndexByte(broker, ':')+1:]
	sub := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-t", "#", "-F", "%t")
	var subOut lockedBuffer
	sub.Stdout = &subOut
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Process.Kill(); _ = sub.Wait() })
	cmd := exec.Command(bin, "replay", "--store", dir, "--loop", "--mqtt", broker, replayEp)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(20 * time.Second)
	for started := false; !started; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("replay ended before starting: %s", stderr.String())
			}
			started = strings.HasPrefix(l, "replaying episode")
		case <-deadline:
			cmd.Process.Kill()
			t.Fatal("replay did not start")
		}
	}
	// A 1 s episode: wait until it is into its second pass.
	waitUntil(t, 60*time.Second, "the second pass", func() bool {
		return strings.Count(subOut.String(), "joint_states\n") > len(stored)
	}, nil)
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var rest []string
	for l := range lines {
		rest = append(rest, l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, stderr.String())
	}
	text := strings.Join(rest, "\n")
	if !strings.Contains(text, "interrupted") || !strings.Contains(text, "2 pass(es)") {
		t.Errorf("summary after Ctrl-C:\n%s", text)
	}
	// The joint states went out once fully and partly again.
	for _, l := range rest {
		if f := strings.Fields(l); len(f) >= 4 && f[0] == "cell1/robot1/joints" {
			var sent int
			fmt.Sscan(f[3], &sent)
			if sent <= len(stored) || sent >= 2*len(stored) {
				t.Errorf("sent %d after 1.5 passes of %d", sent, len(stored))
			}
		}
	}
	t.Logf("summary:\n%s", text)
}
