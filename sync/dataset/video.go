package dataset

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h265"
	"github.com/bluenviron/mediacommon/v2/pkg/formats/mp4/codecs"
	"github.com/bluenviron/mediacommon/v2/pkg/formats/pmp4"
)

// ErrNoFFmpeg is returned when frames must be re-timed and no ffmpeg is
// found; the error wrapping it names the camera and episode.
var ErrNoFFmpeg = errors.New("dataset: ffmpeg not found in PATH (needed to re-encode video onto the grid, and for video statistics)")

// vsample is one MP4 sample of a camera file.
type vsample struct {
	ptsOff int32 // in frames
	key    bool
	data   func() ([]byte, error)
	size   uint32
}

// videoSeg is one episode's video for one camera: its samples, in decode
// order, and the codec they need.
type videoSeg struct {
	codec    codecs.Codec
	codecKey string // identifies the parameter sets
	name     string // "h264", "hevc", "av1"
	w, h     int
	samples  []vsample
	remuxed  bool
	bytes    int64
	file     *os.File // the MP4 the samples are read from, if any
}

// toSample converts an Annex-B access unit into a length-prefixed MP4
// sample, leaving out the parameter sets, which it returns (they go to the
// sample entry).
func toSample(codec string, au []byte) ([]byte, [][]byte) {
	var out []byte
	var params [][]byte
	for _, n := range splitAnnexB(au) {
		if paramSlot(codec, n) >= 0 {
			params = append(params, n)
			continue
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(n)))
		out = append(out, n...)
	}
	return out, params
}

// codecOf builds the MP4 codec from parameter sets and reports the
// picture size.
func codecOf(codec string, params [][]byte) (codecs.Codec, string, int, int, error) {
	var ps [3][]byte
	for _, p := range params {
		if i := paramSlot(codec, p); i >= 0 && ps[i] == nil {
			ps[i] = p
		}
	}
	key := func(ps ...[]byte) string { return string(bytes.Join(ps, []byte{0, 0, 0, 1})) }
	if codec == "h265" {
		vps, sps, pps := ps[0], ps[1], ps[2]
		if vps == nil || sps == nil || pps == nil {
			return nil, "", 0, 0, errors.New("keyframe without VPS/SPS/PPS")
		}
		var s h265.SPS
		if err := s.Unmarshal(sps); err != nil {
			return nil, "", 0, 0, fmt.Errorf("parse SPS: %w", err)
		}
		return &codecs.H265{VPS: vps, SPS: sps, PPS: pps}, key(vps, sps, pps), s.Width(), s.Height(), nil
	}
	sps, pps := ps[0], ps[1]
	if sps == nil || pps == nil {
		return nil, "", 0, 0, errors.New("keyframe without SPS/PPS")
	}
	var s h264.SPS
	if err := s.Unmarshal(sps); err != nil {
		return nil, "", 0, 0, fmt.Errorf("parse SPS: %w", err)
	}
	return &codecs.H264{SPS: sps, PPS: pps}, key(sps, pps), s.Width(), s.Height(), nil
}

func mp4Name(codec string) string {
	if codec == "h265" {
		return "hevc"
	}
	return codec
}

// remuxSeg copies the frames of decode range [lo, hi) of a camera as they
// are. The presentation index of decode frame j is pres[j]. It fails if
// the keyframes do not all carry the same parameter sets.
func remuxSeg(c *camSeries, lo, hi int, presOf map[int]int) (*videoSeg, error) {
	tr := c.track
	seg := &videoSeg{name: mp4Name(tr.Codec), remuxed: true}
	for j := lo; j < hi; j++ {
		f := tr.Frames[j]
		au, err := tr.AU(j)
		if err != nil {
			return nil, err
		}
		data, params := toSample(tr.Codec, au)
		if f.Key {
			cd, key, w, h, err := codecOf(tr.Codec, params)
			if err != nil {
				return nil, err
			}
			if seg.codec == nil {
				seg.codec, seg.codecKey, seg.w, seg.h = cd, key, w, h
			} else if key != seg.codecKey {
				return nil, errors.New("parameter sets change within the episode")
			}
		}
		if seg.codec == nil {
			return nil, errors.New("does not start on a keyframe")
		}
		// The sample is made again from the spool when the file is written.
		seg.samples = append(seg.samples, vsample{
			ptsOff: int32(presOf[j] - (j - lo)), key: f.Key, size: uint32(len(data)),
			data: func() ([]byte, error) {
				au, err := tr.AU(j)
				if err != nil {
					return nil, err
				}
				d, _ := toSample(tr.Codec, au)
				return d, nil
			},
		})
		seg.bytes += int64(len(data))
	}
	return seg, nil
}

// ffmpegPath returns ffmpeg's path or ErrNoFFmpeg.
func ffmpegPath() (string, error) {
	p, err := exec.LookPath("ffmpeg")
	if err != nil {
		return "", ErrNoFFmpeg
	}
	return p, nil
}

// hasSVTAV1 reports whether ffmpeg has the libsvtav1 encoder.
func hasSVTAV1(ffmpeg string) bool {
	out, err := exec.Command(ffmpeg, "-hide_banner", "-encoders").Output()
	return err == nil && bytes.Contains(out, []byte(" libsvtav1 "))
}

// decodeFrames decodes a camera's frames (all of them, from the first
// keyframe, in decode order) with ffmpeg and calls fn with each picture
// (yuv420p, w×h) in presentation order, with its presentation index.
func decodeFrames(ctx context.Context, ffmpeg string, tr *Track, w, h int, fn func(p int, yuv []byte) error) error {
	format := "h264"
	if tr.Codec == "h265" {
		format = "hevc"
	}
	cmd := exec.CommandContext(ctx, ffmpeg, "-hide_banner", "-loglevel", "error", "-f", format, "-i", "pipe:0",
		"-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", fmt.Sprintf("%dx%d", w, h), "pipe:1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start ffmpeg decoder: %w", err)
	}
	werr := make(chan error, 1)
	go func() {
		var err error
		for i := range tr.Frames {
			var au []byte
			if au, err = tr.AU(i); err != nil {
				break
			}
			if _, err = stdin.Write(au); err != nil {
				break
			}
		}
		stdin.Close()
		werr <- err
	}()
	size := w * h * 3 / 2
	buf := make([]byte, size)
	p := 0
	var ferr error
	for {
		if _, err := io.ReadFull(stdout, buf); err != nil {
			break
		}
		if ferr == nil {
			ferr = fn(p, buf)
		}
		p++
	}
	spoolErr := <-werr
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("ffmpeg decoder: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if ferr != nil {
		return ferr
	}
	if spoolErr != nil && !errors.Is(spoolErr, os.ErrClosed) && !strings.Contains(spoolErr.Error(), "broken pipe") {
		return spoolErr
	}
	if p != len(tr.Frames) {
		return fmt.Errorf("ffmpeg decoded %d of %d frames", p, len(tr.Frames))
	}
	return nil
}

// reencodeSeg re-encodes a camera's frames onto the grid: row k shows
// presentation frame frames[k] (repeated or skipped as the rows say). yuv
// pictures of sampled rows go to onRow for statistics.
func reencodeSeg(ctx context.Context, ffmpeg, codec string, fps int, c *camSeries, frames []int, w, h int, tmpDir string, onRow func(k int, yuv []byte)) (*videoSeg, error) {
	out, err := os.CreateTemp(tmpDir, "reencode-*.mp4")
	if err != nil {
		return nil, err
	}
	out.Close() // ffmpeg writes it; it stays (in tmpDir) until the dataset is written
	args := []string{"-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p",
		"-s", fmt.Sprintf("%dx%d", w, h), "-framerate", strconv.Itoa(fps), "-i", "pipe:0"}
	name := "h264"
	if codec == "av1" {
		name = "av1"
		args = append(args, "-c:v", "libsvtav1", "-preset", "10", "-crf", "35", "-g", strconv.Itoa(fps))
	} else {
		args = append(args, "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", strconv.Itoa(fps), "-bf", "0")
	}
	args = append(args, "-pix_fmt", "yuv420p", "-f", "mp4", out.Name())
	enc := exec.CommandContext(ctx, ffmpeg, args...)
	encIn, err := enc.StdinPipe()
	if err != nil {
		return nil, err
	}
	var encErr bytes.Buffer
	enc.Stderr = &encErr
	if err := enc.Start(); err != nil {
		return nil, fmt.Errorf("start ffmpeg encoder: %w", err)
	}
	k := 0
	derr := decodeFrames(ctx, ffmpeg, c.track, w, h, func(p int, yuv []byte) error {
		for k < len(frames) && frames[k] == p {
			if onRow != nil {
				onRow(k, yuv)
			}
			if _, err := encIn.Write(yuv); err != nil {
				return fmt.Errorf("write to ffmpeg encoder: %w", err)
			}
			k++
		}
		return nil
	})
	encIn.Close()
	werr := enc.Wait()
	if derr != nil {
		return nil, derr
	}
	if werr != nil {
		return nil, fmt.Errorf("ffmpeg encoder: %w: %s", werr, strings.TrimSpace(encErr.String()))
	}
	if k != len(frames) {
		return nil, fmt.Errorf("re-encode: %d of %d rows had a decoded frame", k, len(frames))
	}
	seg, err := readMP4Seg(out.Name(), name)
	if err != nil {
		return nil, err
	}
	if len(seg.samples) != len(frames) {
		return nil, fmt.Errorf("re-encode: ffmpeg wrote %d frames for %d rows", len(seg.samples), len(frames))
	}
	seg.w, seg.h = w, h
	return seg, nil
}

// readMP4Seg reads the sample table of an MP4's only track; payloads are
// read from the file when needed, so it stays open: the caller closes
// seg.file.
func readMP4Seg(path, name string) (seg *videoSeg, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	var p pmp4.Presentation
	if err := p.Unmarshal(f); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Base(path), err)
	}
	if len(p.Tracks) != 1 {
		return nil, fmt.Errorf("read %s: %d tracks", filepath.Base(path), len(p.Tracks))
	}
	tr := p.Tracks[0]
	seg = &videoSeg{codec: tr.Codec, name: name, file: f}
	seg.codecKey = codecKeyOf(tr.Codec)
	var dur uint32
	if len(tr.Samples) > 0 {
		dur = tr.Samples[0].Duration
	}
	for _, s := range tr.Samples {
		off := int32(0)
		if dur > 0 {
			off = s.PTSOffset / int32(dur)
		}
		seg.samples = append(seg.samples, vsample{ptsOff: off, key: !s.IsNonSyncSample, size: s.PayloadSize, data: s.GetPayload})
		seg.bytes += int64(s.PayloadSize)
	}
	return seg, nil
}

func codecKeyOf(c codecs.Codec) string {
	switch x := c.(type) {
	case *codecs.H264:
		return string(bytes.Join([][]byte{x.SPS, x.PPS}, []byte{0, 0, 0, 1}))
	case *codecs.H265:
		return string(bytes.Join([][]byte{x.VPS, x.SPS, x.PPS}, []byte{0, 0, 0, 1}))
	case *codecs.AV1:
		return string(x.SequenceHeader)
	}
	return fmt.Sprintf("%T", c)
}

func codecName(c codecs.Codec) string {
	switch c.(type) {
	case *codecs.H265:
		return "hevc"
	case *codecs.AV1:
		return "av1"
	}
	return "h264"
}

// writeMP4 writes a progressive MP4 (full moov) with one video track whose
// every sample lasts exactly 1/fps, atomically.
func writeMP4(path string, fps int, codec codecs.Codec, samples []vsample) error {
	dur := uint32(512)
	tr := &pmp4.Track{ID: 1, TimeScale: uint32(fps) * dur, Codec: codec}
	for _, s := range samples {
		tr.Samples = append(tr.Samples, &pmp4.Sample{Duration: dur, PTSOffset: s.ptsOff * int32(dur),
			IsNonSyncSample: !s.key, PayloadSize: s.size, GetPayload: s.data})
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	err = (&pmp4.Presentation{Tracks: []*pmp4.Track{tr}}).Marshal(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
