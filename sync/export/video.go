package export

import (
	"bytes"
	"encoding/binary"

	"github.com/episoded/episoded/sample"
)

var startCode = []byte{0, 0, 0, 1}

// splitAnnexB splits an Annex-B byte stream into NAL units (without start
// codes). It reports false if p does not begin with a start code.
func splitAnnexB(p []byte) ([][]byte, bool) {
	var i int
	switch {
	case len(p) >= 4 && p[0] == 0 && p[1] == 0 && p[2] == 0 && p[3] == 1:
		i = 4
	case len(p) >= 3 && p[0] == 0 && p[1] == 0 && p[2] == 1:
		i = 3
	default:
		return nil, false
	}
	var out [][]byte
	for {
		j := bytes.Index(p[i:], []byte{0, 0, 1})
		if j < 0 {
			if nal := p[i:]; len(nal) > 0 {
				out = append(out, nal)
			}
			return out, len(out) > 0
		}
		end := i + j
		next := end + 3
		// trailing zero bytes belong to the next start code (00 00 00 01)
		for end > i && p[end-1] == 0 {
			end--
		}
		if end > i {
			out = append(out, p[i:end])
		}
		i = next
	}
}

// splitAVCC splits 4-byte length-prefixed NAL units; false if p is not
// exactly a sequence of them.
func splitAVCC(p []byte) ([][]byte, bool) {
	var out [][]byte
	for len(p) > 0 {
		if len(p) < 4 {
			return nil, false
		}
		n := binary.BigEndian.Uint32(p)
		if n == 0 || uint64(n) > uint64(len(p)-4) {
			return nil, false
		}
		out = append(out, p[4:4+n])
		p = p[4+n:]
	}
	return out, len(out) > 0
}

// splitAU returns the NAL units of one access unit stored as Annex-B
// (what devices store) or, failing that, AVCC.
func splitAU(p []byte) ([][]byte, bool) {
	if nalus, ok := splitAnnexB(p); ok {
		return nalus, true
	}
	return splitAVCC(p)
}

func nalType(codec sample.Codec, nal []byte) int {
	if len(nal) == 0 {
		return -1
	}
	if codec == sample.CodecH265 {
		return int(nal[0]>>1) & 0x3f
	}
	return int(nal[0] & 0x1f)
}

func isParamSet(codec sample.Codec, nal []byte) bool {
	t := nalType(codec, nal)
	if codec == sample.CodecH265 {
		return t == 32 || t == 33 || t == 34
	}
	return t == 7 || t == 8
}

func isAUD(codec sample.Codec, nal []byte) bool {
	t := nalType(codec, nal)
	if codec == sample.CodecH265 {
		return t == 35
	}
	return t == 9
}

func isIRAP(codec sample.Codec, nal []byte) bool {
	t := nalType(codec, nal)
	if codec == sample.CodecH265 {
		return t >= 16 && t <= 21
	}
	return t == 5
}

// annexB rewrites one access unit as Annex-B with 4-byte start codes. On
// keyframes (flagged, or containing an IDR/IRAP slice) the stream's
// parameter sets from the descriptor go in front, after an access unit
// delimiter if there is one, replacing in-band parameter sets; without
// descriptor parameters the in-band ones are kept. It returns the result
// appended to dst, whether the unit is a keyframe, and false if the payload
// is not a parsable access unit.
func annexB(dst []byte, codec sample.Codec, params [][]byte, payload []byte, flagged bool) ([]byte, bool, bool) {
	nalus, ok := splitAU(payload)
	if !ok {
		return dst, false, false
	}
	key := flagged
	if !key {
		for _, n := range nalus {
			if isIRAP(codec, n) {
				key = true
				break
			}
		}
	}
	if !key || len(params) == 0 {
		for _, n := range nalus {
			dst = append(dst, startCode...)
			dst = append(dst, n...)
		}
		return dst, key, true
	}
	i := 0
	if isAUD(codec, nalus[0]) {
		dst = append(dst, startCode...)
		dst = append(dst, nalus[0]...)
		i = 1
	}
	for _, p := range params {
		dst = append(dst, startCode...)
		dst = append(dst, p...)
	}
	for _, n := range nalus[i:] {
		if isParamSet(codec, n) {
			continue
		}
		dst = append(dst, startCode...)
		dst = append(dst, n...)
	}
	return dst, true, true
}
