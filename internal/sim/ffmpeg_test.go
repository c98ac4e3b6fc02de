package sim

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/episoded/episoded/assets"
)

// TestFFmpegReadsCamera has ffmpeg, an independent RTSP client, record a
// camera with its default transport negotiation (UDP first, then TCP,
// which is all the simulator serves). Every access unit it writes must be
// a clip frame, in order modulo the loop.
func TestFFmpegReadsCamera(t *testing.T) {
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		if testing.Short() {
			t.Skip("ffmpeg not installed (skipped in -short mode)")
		}
		t.Fatal("ffmpeg not found on PATH: install it (apt-get install ffmpeg; .ci/run does)")
	}
	s := startSim(t, Options{Cameras: 1, TriggerPeriod: -1})
	out := filepath.Join(t.TempDir(), "out.h264")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ffmpeg, "-hide_banner", "-loglevel", "error", "-i", s.CameraURLs()[0],
		"-t", "3.5", "-c", "copy", "-f", "h264", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := assets.AccessUnits(data, false)
	if err != nil {
		t.Fatal(err)
	}
	clip, _ := assets.H264AccessUnits()
	if len(got) < 70 { // ≥ 3.5 s minus up to 1 s waiting for a keyframe
		t.Fatalf("ffmpeg wrote %d access units in 3.5 s", len(got))
	}
	// ffmpeg starts at a keyframe and may prepend parameter sets: compare
	// the coded slices only.
	slices := func(au [][]byte) [][]byte {
		var v [][]byte
		for _, n := range au {
			if typ := n[0] & 0x1f; typ >= 1 && typ <= 5 {
				v = append(v, n)
			}
		}
		return v
	}
	index := func(au [][]byte) int {
		for i, c := range clip {
			if sameAU(slices(au), slices(c)) {
				return i
			}
		}
		return -1
	}
	first := index(got[0])
	if first < 0 || first%assets.GOP != 0 {
		t.Fatalf("first access unit is clip frame %d, want a keyframe", first)
	}
	for i, au := range got {
		if j := index(au); j != (first+i)%len(clip) {
			t.Fatalf("access unit %d is clip frame %d, want %d", i, j, (first+i)%len(clip))
		}
	}
	if !bytes.Contains(data, []byte{0, 0, 1}) {
		t.Fatal("not Annex-B")
	}
}
