// Package videotest makes video test inputs that episoded did not write:
// clips encoded by ffmpeg (libx264, libx265) with the GOP and B-frames a
// test asks for. It is imported by tests only.
package videotest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/internal/video"
)

// FFmpeg returns ffmpeg's and ffprobe's paths. It skips the test under
// -short and fails it when they are missing (CI installs them).
func FFmpeg(t testing.TB) (ffmpeg, ffprobe string) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs ffmpeg; skipped under -short")
	}
	ff, err := exec.LookPath("ffmpeg")
	if err != nil {
		t.Fatalf("ffmpeg not found (apt-get install -y --no-install-recommends ffmpeg): %v", err)
	}
	fp, err := exec.LookPath("ffprobe")
	if err != nil {
		t.Fatalf("ffprobe not found (comes with ffmpeg): %v", err)
	}
	return ff, fp
}

// Options describe a clip: Secs seconds of testsrc2 at 30 fps and
// 320x240, an IDR every GOP frames, BFrames B-frames (H.264: main profile
// with -bf BFrames, or baseline without; H.265: bframes=BFrames with
// closed GOPs unless OpenGOP).
type Options struct {
	Codec   *video.Codec
	GOP     int
	Secs    int
	BFrames int
	OpenGOP bool
}

// Clip is an encoded clip in decode order.
type Clip struct {
	Codec *video.Codec
	AUs   [][][]byte
	// PTS is each access unit's presentation time in ms from the first.
	PTS []int64
	// Params are the parameter sets in decoding order.
	Params [][]byte
	GOP    int
}

// Encode encodes a clip with ffmpeg.
func Encode(t testing.TB, o Options) *Clip {
	t.Helper()
	ff, fp := FFmpeg(t)
	dir := t.TempDir()
	mkv := filepath.Join(dir, "clip.mkv")
	args := []string{"-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
		"-i", fmt.Sprintf("testsrc2=size=320x240:rate=30:duration=%d", o.Secs), "-pix_fmt", "yuv420p"}
	raw, bsf, rawFmt := filepath.Join(dir, "clip.h264"), "h264_mp4toannexb", "h264"
	if o.Codec == video.H265 {
		p := fmt.Sprintf("bframes=%d:keyint=%d:min-keyint=%d:scenecut=0:log-level=error", o.BFrames, o.GOP, o.GOP)
		if !o.OpenGOP {
			p += ":open-gop=0"
		}
		args = append(args, "-c:v", "libx265", "-x265-params", p)
		raw, bsf, rawFmt = filepath.Join(dir, "clip.h265"), "hevc_mp4toannexb", "hevc"
	} else {
		profile := "baseline"
		if o.BFrames > 0 {
			profile = "main"
		}
		args = append(args, "-c:v", "libx264", "-profile:v", profile, "-bf", strconv.Itoa(o.BFrames),
			"-g", strconv.Itoa(o.GOP), "-keyint_min", strconv.Itoa(o.GOP), "-sc_threshold", "0")
	}
	run := func(name string, args ...string) []byte {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("%s %v: %v\n%s", name, args, err, stderr)
		}
		return out
	}
	run(ff, append(args, mkv)...)
	run(ff, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", mkv, "-c", "copy", "-bsf:v", bsf, "-f", rawFmt, raw)
	probe := run(fp, "-v", "error", "-select_streams", "v", "-show_entries", "packet=pts", "-of", "csv=p=0", mkv)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	aus, err := assets.AccessUnits(b, o.Codec == video.H265)
	if err != nil {
		t.Fatal(err)
	}
	cl := &Clip{Codec: o.Codec, AUs: aus, GOP: o.GOP}
	sc := bufio.NewScanner(bytes.NewReader(probe))
	for sc.Scan() {
		v, err := strconv.ParseInt(strings.TrimSpace(strings.Split(sc.Text(), ",")[0]), 10, 64)
		if err != nil {
			t.Fatalf("ffprobe line %q: %v", sc.Text(), err)
		}
		cl.PTS = append(cl.PTS, v)
	}
	if len(cl.PTS) != len(aus) || len(aus) != 30*o.Secs {
		t.Fatalf("clip: %d access units, %d presentation times, want %d", len(aus), len(cl.PTS), 30*o.Secs)
	}
	cl.Params = make([][]byte, o.Codec.NParams)
	for _, n := range aus[0] {
		if i := o.Codec.ParamSlot(n); i >= 0 {
			cl.Params[i] = n
		}
	}
	reordered := false
	for i := 1; i < len(cl.PTS); i++ {
		reordered = reordered || cl.PTS[i] < cl.PTS[i-1]
	}
	if reordered != (o.BFrames > 0) {
		t.Fatalf("clip: B-frames asked %d, frames reordered %v", o.BFrames, reordered)
	}
	return cl
}

// Keyframes returns the indexes of the clip's keyframes.
func (c *Clip) Keyframes() []int {
	var out []int
	for i, au := range c.AUs {
		if c.Codec.IsKeyframe(au) {
			out = append(out, i)
		}
	}
	return out
}
