package dataset_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/episoded/episoded/sync/dataset"
	"github.com/episoded/episoded/sync/upload"
)

// benchSource makes one 20 s episode with a gap-free camera (remux) or a
// camera with a 2 s outage (re-encode), from an ffmpeg clip.
func benchSource(b *testing.B, outage bool) (string, [][]byte) {
	aus, _, _ := ffmpegClip(b, 20, 0, 30)
	src := b.TempDir()
	cut := [2]int{0, 0}
	if outage {
		cut = [2]int{300, 360}
	}
	fakeEpisode(b, src, "ep", "bench", t0, []telemetry{joints(t0, 20)}, map[string][]camFrame{
		"cell1/cam": frames(aus, nil, t0, 1_000_000, 1, cut[0], cut[1]),
	})
	return src, aus
}

func copyBytes(b *testing.B, from, to string) time.Duration {
	start := time.Now()
	in, err := os.Open(from)
	if err != nil {
		b.Fatal(err)
	}
	out, err := os.Create(to)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	in.Close()
	out.Close()
	return time.Since(start)
}

// BenchmarkRemux builds a dataset from a 20 s episode whose camera is
// remuxed (ffmpeg hidden, so no video statistics: the remux alone), against
// copying the episode's bytes in the same run.
func BenchmarkRemux(b *testing.B) {
	needFFmpeg(b)
	src, _ := benchSource(b, false)
	mcap := filepath.Join(src, "ep", upload.ObjectMCAP)
	m := testMappingB(b, dataset.PolicyFillPrevious)
	b.Setenv("PATH", b.TempDir())
	var build, base time.Duration
	for i := 0; i < b.N; i++ {
		out := filepath.Join(b.TempDir(), "ds")
		start := time.Now()
		sum, err := dataset.Build(context.Background(), dataset.DirSource(src), dataset.Options{Out: out, Mapping: m})
		if err != nil || sum.Remuxed != 1 {
			b.Fatalf("%v %+v", err, sum)
		}
		build += time.Since(start)
		base += copyBytes(b, mcap, filepath.Join(b.TempDir(), "copy"))
	}
	b.ReportMetric(float64(build.Milliseconds())/float64(b.N), "build-ms")
	b.ReportMetric(float64(base.Microseconds())/1000/float64(b.N), "copy-ms")
	b.ReportMetric(float64(build)/float64(base), "x-copy")
}

// BenchmarkReencode builds a dataset from a 20 s episode whose camera had a
// 2 s outage (re-encoded to H.264), against ffmpeg alone re-encoding the
// same frames with the same settings in the same run.
func BenchmarkReencode(b *testing.B) {
	needFFmpeg(b)
	src, aus := benchSource(b, true)
	var es []byte
	for i, au := range aus {
		if i < 300 || i >= 360 {
			es = append(es, au...)
		}
	}
	esPath := filepath.Join(b.TempDir(), "frames.h264")
	if err := os.WriteFile(esPath, es, 0o644); err != nil {
		b.Fatal(err)
	}
	m := testMappingB(b, dataset.PolicyFillPrevious)
	var build, base time.Duration
	for i := 0; i < b.N; i++ {
		out := filepath.Join(b.TempDir(), "ds")
		start := time.Now()
		sum, err := dataset.Build(context.Background(), dataset.DirSource(src), dataset.Options{Out: out, Mapping: m})
		if err != nil || sum.Reencoded != 1 {
			b.Fatalf("%v %+v", err, sum)
		}
		build += time.Since(start)
		start = time.Now()
		cmd := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "h264", "-r", "30", "-i", esPath,
			"-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "30", "-bf", "0", "-pix_fmt", "yuv420p",
			filepath.Join(b.TempDir(), "out.mp4"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			b.Fatalf("ffmpeg: %v %s", err, stderr.String())
		}
		base += time.Since(start)
	}
	b.ReportMetric(float64(build.Milliseconds())/float64(b.N), "build-ms")
	b.ReportMetric(float64(base.Milliseconds())/float64(b.N), "ffmpeg-ms")
	b.ReportMetric(float64(build)/float64(base), "x-ffmpeg")
}

func testMappingB(b *testing.B, missing string) *dataset.Mapping {
	y := "fps: 30\nmissing: " + missing + "\ncodec: h264\nstate:\n  - topic: cell1/robot/joint_states\n    field: position\naction:\n  next_state: true\ncameras:\n  - stream: cell1/cam\n    name: cam\n"
	m, err := dataset.ParseMapping([]byte(y))
	if err != nil {
		b.Fatal(err)
	}
	return m
}
