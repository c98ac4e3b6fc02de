package dataset

import "github.com/episoded/episoded/internal/video"

// The only NAL-unit knowledge the builder needs, all of it from
// internal/video (the one home of H.264/H.265 rules): splitting an access
// unit, telling a keyframe, telling parameter sets. codec is "h264" or
// "h265", as in foxglove.CompressedVideo's format.

func vcodec(codec string) *video.Codec {
	if codec == "h265" {
		return video.H265
	}
	return video.H264
}

func splitAnnexB(au []byte) [][]byte { return video.SplitAnnexB(au) }

// isKey reports whether an access unit holds an IDR (H.264) or IRAP
// (H.265) slice.
func isKey(codec string, au []byte) bool { return vcodec(codec).IsKeyframe(splitAnnexB(au)) }

// paramSlot is a parameter set's index in decoding order (H.264 SPS 0,
// PPS 1; H.265 VPS 0, SPS 1, PPS 2), or -1.
func paramSlot(codec string, n []byte) int { return vcodec(codec).ParamSlot(n) }
