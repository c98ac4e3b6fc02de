package rtsp

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/sample"
)

// ffmpegPath returns ffmpeg's path; it skips under -short and fails
// otherwise when ffmpeg is missing.
func ffmpegPath(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs ffmpeg; skipped with -short")
	}
	p, err := exec.LookPath("ffmpeg")
	if err != nil {
		t.Fatalf("ffmpeg not found (apt-get install -y --no-install-recommends ffmpeg): %v", err)
	}
	return p
}

// vcl returns the coded slice NAL units of an H.264 access unit.
func vcl(au [][]byte) [][]byte {
	var out [][]byte
	for _, n := range au {
		if t := n[0] & 0x1f; t >= 1 && t <= 5 {
			out = append(out, n)
		}
	}
	return out
}

// TestFFmpegPublisher records a stream published by an independent
// implementation: ffmpeg pushes testdata/clip.mkv twice into a loopback
// server (RECORD), which relays it to the camera.
func TestFFmpegPublisher(t *testing.T) {
	ffmpeg := ffmpegPath(t)
	if _, err := os.Stat("testdata/clip.mkv"); err != nil {
		t.Fatal(err)
	}
	cl := loadClip(t, sample.CodecH264)
	srv := startServer(t, "", nil, "", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.relayAfterPlay(ctx)

	const loops = 2
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin",
		"-re", "-stream_loop", "1", "-i", "testdata/clip.mkv",
		"-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp", srv.url("cam"))
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ffDone := make(chan error, 1)
	go func() { ffDone <- cmd.Wait() }()

	sink := newMemSink()
	cam, err := New(Options{Device: "ffcam", URL: srv.url("cam"),
		Backoff: devices.BackoffPolicy{Min: 100 * time.Millisecond, Max: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	stopCam, _ := runCamera(t, cam, sink)

	want := loops * len(cl.aus)
	select {
	case err := <-ffDone:
		if err != nil {
			t.Fatalf("ffmpeg: %v\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("ffmpeg still running after 60s; got %d samples", sink.count())
	}
	waitFor(t, 10*time.Second, "all frames", func() bool { return sink.count() >= want })
	if err := stopCam(); err != nil { // the counts below are final
		t.Fatal(err)
	}
	descs, samples := sink.snapshot()
	if len(samples) != want {
		t.Fatalf("got %d samples, want %d", len(samples), want)
	}
	keys := 0
	for k, s := range samples {
		if s.Flags.Has(sample.Keyframe) {
			keys++
		}
		if s.Flags.Has(sample.Discontinuity) || s.Lost != 0 || s.Dropped != 0 {
			t.Errorf("sample %d: flags %b lost %d dropped %d", k, s.Flags, s.Lost, s.Dropped)
		}
		got := vcl(splitAnnexB(t, s.Payload))
		exp := vcl(cl.aus[k%len(cl.aus)])
		if len(got) != len(exp) {
			t.Fatalf("sample %d: %d slices, want %d", k, len(got), len(exp))
		}
		for i := range got {
			if !bytes.Equal(got[i], exp[i]) {
				t.Fatalf("sample %d: slice %d differs from the clip's frame %d", k, i, k%len(cl.aus))
			}
		}
	}
	if !samples[0].Flags.Has(sample.Keyframe) || keys != want/30 {
		t.Errorf("first sample keyframe %v, %d keyframes, want %d", samples[0].Flags.Has(sample.Keyframe), keys, want/30)
	}
	if len(descs) == 0 || descs[0].Codec != sample.CodecH264 || len(descs[0].Params) != 2 ||
		!bytes.Equal(descs[0].Params[0], cl.params[0]) || !bytes.Equal(descs[0].Params[1], cl.params[1]) {
		t.Errorf("descriptors: %+v", descs)
	}
}
