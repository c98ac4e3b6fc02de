// Package assets embeds the small video clips that tests, the demo and the
// simulator loop over RTSP, so none of them needs ffmpeg at run time.
//
// The clips are Annex-B elementary streams (start codes, no container):
//
//   - clip.h264: 4 s of ffmpeg's testsrc2 at 320x240, 30 fps, H.264
//     Constrained Baseline, yuv420p, no B-frames, an IDR every 30 frames.
//   - clip.h265: the same picture in H.265 Main, no B-frames, an IRAP every
//     30 frames.
//
// Both were made with (see devices/rtsp/testdata for the .mkv twin):
//
//	ffmpeg -f lavfi -i testsrc2=size=320x240:rate=30 -t 4 -c:v libx264 -pix_fmt yuv420p \
//	  -profile:v baseline -g 30 -bf 0 -crf 21 -x264-params keyint=30:min-keyint=30:scenecut=0 \
//	  -bsf:v h264_mp4toannexb -f h264 clip.h264
//	ffmpeg -f lavfi -i testsrc2=size=320x240:rate=30 -t 4 -c:v libx265 -pix_fmt yuv420p -crf 24 \
//	  -x265-params keyint=30:min-keyint=30:scenecut=0:bframes=0 -f hevc clip.h265
//
// H264AccessUnits and H265AccessUnits split a clip into access units (each a
// list of NAL units without start codes) in decode order; with no B-frames,
// decode order is presentation order, one access unit every 1/FrameRate s.
// Every call returns fresh slices that the caller may modify.
package assets

import (
	_ "embed"
	"errors"
	"fmt"

	"github.com/episoded/episoded/internal/video"
)

// FrameRate is the frame rate of both clips, in frames per second.
const FrameRate = 30

// Frames is the number of access units in each clip.
const Frames = 120

// GOP is the distance between keyframes, in frames.
const GOP = 30

//go:embed clip.h264
var clipH264 []byte

//go:embed clip.h265
var clipH265 []byte

// H264AnnexB returns a copy of the H.264 clip as an Annex-B byte stream.
func H264AnnexB() []byte { return append([]byte(nil), clipH264...) }

// H265AnnexB returns a copy of the H.265 clip as an Annex-B byte stream.
func H265AnnexB() []byte { return append([]byte(nil), clipH265...) }

// H264AccessUnits returns the H.264 clip's access units in decode order.
func H264AccessUnits() ([][][]byte, error) {
	aus, err := AccessUnits(H264AnnexB(), false)
	if err != nil {
		return nil, fmt.Errorf("split clip.h264: %w", err)
	}
	return aus, nil
}

// H265AccessUnits returns the H.265 clip's access units in decode order.
func H265AccessUnits() ([][][]byte, error) {
	aus, err := AccessUnits(H265AnnexB(), true)
	if err != nil {
		return nil, fmt.Errorf("split clip.h265: %w", err)
	}
	return aus, nil
}

// ErrNoNALUs is returned for a byte stream without any start code.
var ErrNoNALUs = errors.New("assets: no NAL units in stream")

// SplitAnnexB splits an Annex-B byte stream into NAL units (without start
// codes). The returned slices alias b.
func SplitAnnexB(b []byte) [][]byte { return video.SplitAnnexB(b) }

// AccessUnits groups the NAL units of an Annex-B stream into access units
// (ITU-T H.264 7.4.1.2.3, H.265 7.4.2.4.4): a new access unit starts at an
// access unit delimiter, parameter set or prefix SEI that follows a coded
// slice, or at a slice that begins a new picture. hevc selects H.265 NAL
// unit syntax. The result aliases b.
func AccessUnits(b []byte, hevc bool) ([][][]byte, error) {
	nalus := SplitAnnexB(b)
	if len(nalus) == 0 {
		return nil, ErrNoNALUs
	}
	var (
		aus     [][][]byte
		cur     [][]byte
		seenVCL bool
	)
	for _, n := range nalus {
		var vcl, prefix, firstSlice bool
		if hevc {
			if len(n) < 3 {
				return nil, fmt.Errorf("assets: H.265 NAL unit of %d bytes", len(n))
			}
			typ := (n[0] >> 1) & 0x3f
			vcl = typ < 32
			prefix = (typ >= 32 && typ <= 35) || typ == 39 || (typ >= 41 && typ <= 44) || (typ >= 48 && typ <= 55)
			firstSlice = vcl && n[2]&0x80 != 0
		} else {
			if len(n) < 2 {
				return nil, fmt.Errorf("assets: H.264 NAL unit of %d bytes", len(n))
			}
			typ := n[0] & 0x1f
			vcl = typ >= 1 && typ <= 5
			prefix = (typ >= 6 && typ <= 9) || (typ >= 14 && typ <= 18)
			firstSlice = vcl && n[1]&0x80 != 0 // first_mb_in_slice == 0
		}
		if seenVCL && (prefix || firstSlice) {
			aus = append(aus, cur)
			cur, seenVCL = nil, false
		}
		cur = append(cur, n)
		if vcl {
			seenVCL = true
		}
	}
	if len(cur) > 0 {
		aus = append(aus, cur)
	}
	return aus, nil
}
