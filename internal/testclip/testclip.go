// Package testclip makes the H.264 clips that benchmarks loop over RTSP
// when the small embedded clip in package assets is not realistic enough:
// 1080p30 at a constant 4 Mbit/s, the load of a real factory camera. It
// runs ffmpeg (libx264), so only tests and benchmarks use it.
package testclip

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"

	"github.com/episoded/episoded/assets"
)

// Clip describes a generated clip: ffmpeg's testsrc2 pattern, H.264
// Constrained Baseline (no B-frames, so decode order is presentation
// order), constant bitrate, an IDR every FPS frames (one per second).
type Clip struct {
	Width, Height int
	FPS           int
	// Bitrate in bits per second (CBR, nal-hrd=cbr).
	Bitrate int
	Seconds int
}

// HD1080p30 is the camera of the RTSP benchmarks: 1920x1080, 30 fps,
// 4 Mbit/s, 4 s (about 4.1 Mbit/s comes out).
var HD1080p30 = Clip{Width: 1920, Height: 1080, FPS: 30, Bitrate: 4_000_000, Seconds: 4}

// Write encodes c with ffmpeg into path as an Annex-B elementary stream
// and returns the bitrate that came out, in Mbit/s.
func (c Clip) Write(ffmpeg, path string) (mbps float64, err error) {
	br := strconv.Itoa(c.Bitrate)
	gen := exec.Command(ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
		"-f", "lavfi", "-i", fmt.Sprintf("testsrc2=size=%dx%d:rate=%d", c.Width, c.Height, c.FPS), "-t", strconv.Itoa(c.Seconds),
		"-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-profile:v", "baseline",
		"-b:v", br, "-minrate", br, "-maxrate", br, "-bufsize", strconv.Itoa(c.Bitrate/2), "-g", strconv.Itoa(c.FPS), "-bf", "0",
		"-x264-params", "nal-hrd=cbr:force-cfr=1:scenecut=0", "-bsf:v", "h264_mp4toannexb", "-f", "h264", path)
	if out, err := gen.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("ffmpeg: %v\n%s", err, out)
	}
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return float64(st.Size()) * 8 / float64(c.Seconds) / 1e6, nil
}

// AccessUnits writes c to path (see Write) and returns its access units
// in decode order, as sim.Options.Clip takes them.
func (c Clip) AccessUnits(ffmpeg, path string) (aus [][][]byte, mbps float64, err error) {
	if mbps, err = c.Write(ffmpeg, path); err != nil {
		return nil, 0, err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	aus, err = assets.AccessUnits(raw, false)
	return aus, mbps, err
}
