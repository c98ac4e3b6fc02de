package export

import (
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// annexB rewrites one stored access unit (Annex-B, or AVCC) as Annex-B with
// 4-byte start codes, with parameter sets in front if it is a keyframe
// (flagged, or holding an IDR/IRAP slice): see video.Codec.WithParams. It
// returns the result appended to dst, and false if the payload is not a
// parsable access unit.
func annexB(dst []byte, codec sample.Codec, params [][]byte, payload []byte, flagged bool) ([]byte, bool) {
	c := video.CodecOf(codec)
	nalus, ok := video.SplitAU(payload)
	if !ok || c == nil {
		return dst, false
	}
	return video.AppendAnnexB(dst, c.WithParams(nalus, params, flagged)), true
}
