package dataset

import "github.com/episoded/episoded/internal/h26x"

// The only NAL-unit knowledge the builder needs: splitting an access unit,
// telling a keyframe, and telling parameter sets. The bitstream helpers
// themselves are shared (internal/h26x); codec is "h264" or "h265".

func splitAnnexB(au []byte) [][]byte { return h26x.SplitAnnexB(au) }

func nalType(codec string, n []byte) int {
	if len(n) == 0 {
		return -1
	}
	if codec == "h265" {
		return int(n[0]>>1) & 0x3f
	}
	return int(n[0] & 0x1f)
}

// isKey reports whether an access unit holds an IDR (H.264) or IRAP
// (H.265) slice.
func isKey(codec string, au []byte) bool {
	for _, n := range splitAnnexB(au) {
		t := nalType(codec, n)
		if codec == "h265" && t >= 16 && t <= 21 || codec != "h265" && t == 5 {
			return true
		}
	}
	return false
}

// paramSlot is a parameter set's index in decoding order (H.264 SPS 0,
// PPS 1; H.265 VPS 0, SPS 1, PPS 2), or -1.
func paramSlot(codec string, n []byte) int {
	t := nalType(codec, n)
	if codec == "h265" {
		if t >= 32 && t <= 34 {
			return t - 32
		}
		return -1
	}
	switch t {
	case 7:
		return 0
	case 8:
		return 1
	}
	return -1
}
