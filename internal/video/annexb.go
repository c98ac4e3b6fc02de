package video

import "encoding/binary"

// AnnexB joins an access unit's NAL units with 4-byte start codes.
func AnnexB(au [][]byte) []byte {
	n := 0
	for _, nalu := range au {
		n += 4 + len(nalu)
	}
	return AppendAnnexB(make([]byte, 0, n), au)
}

// AppendAnnexB appends au to dst as Annex-B with 4-byte start codes.
func AppendAnnexB(dst []byte, au [][]byte) []byte {
	for _, nalu := range au {
		dst = append(dst, 0, 0, 0, 1)
		dst = append(dst, nalu...)
	}
	return dst
}

// SplitAU returns the NAL units of one stored access unit: Annex-B (what
// the devices store) or, failing that, 4-byte length-prefixed AVCC. It
// reports false if p is neither. The slices alias p.
func SplitAU(p []byte) ([][]byte, bool) {
	if nalus := SplitAnnexB(p); len(nalus) > 0 && startsWithStartCode(p) {
		return nalus, true
	}
	return splitAVCC(p)
}

func startsWithStartCode(p []byte) bool {
	return (len(p) >= 4 && p[0] == 0 && p[1] == 0 && p[2] == 0 && p[3] == 1) ||
		(len(p) >= 3 && p[0] == 0 && p[1] == 0 && p[2] == 1)
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

// SplitAnnexB splits an Annex-B byte stream into NAL units without their
// start codes; the slices alias b. Zero bytes before a start code (the
// 4-byte form's leading zero, trailing_zero_8bits) are not part of a NAL
// unit. A stream without any start code gives nil.
func SplitAnnexB(b []byte) [][]byte {
	var nalus [][]byte
	start := -1
	for i := 0; i+2 < len(b); {
		if b[i] == 0 && b[i+1] == 0 && b[i+2] == 1 {
			if start >= 0 {
				nalus = appendNALU(nalus, b[start:i])
			}
			i += 3
			start = i
			continue
		}
		i++
	}
	if start >= 0 {
		nalus = appendNALU(nalus, b[start:])
	}
	return nalus
}

func appendNALU(nalus [][]byte, n []byte) [][]byte {
	for len(n) > 0 && n[len(n)-1] == 0 {
		n = n[:len(n)-1]
	}
	if len(n) == 0 {
		return nalus
	}
	return append(nalus, n)
}

// H264AUStart reports whether an H.264 RTP payload (RFC 6184) begins an
// access unit: an AUD, SEI or parameter set, or the first slice of a
// picture (first_mb_in_slice == 0, coded as a leading 1 bit).
func H264AUStart(p []byte) bool {
	if len(p) < 2 {
		return false
	}
	switch typ := p[0] & 0x1f; typ {
	case 24: // STAP-A: 16-bit size, then the first NALU
		if len(p) < 5 {
			return false
		}
		size := int(p[1])<<8 | int(p[2])
		if size < 2 || size > len(p)-3 {
			return false
		}
		return h264TypeStarts(p[3]&0x1f, p[4])
	case 28: // FU-A: start bit, then the original NALU type
		if p[1]&0x80 == 0 || len(p) < 3 {
			return false
		}
		return h264TypeStarts(p[1]&0x1f, p[2])
	default:
		return h264TypeStarts(typ, p[1])
	}
}

func h264TypeStarts(typ, next byte) bool {
	switch {
	case typ >= 6 && typ <= 9: // SEI, SPS, PPS, AUD
		return true
	case typ == 1 || typ == 5: // slice: first_mb_in_slice == 0
		return next&0x80 != 0
	}
	return false
}
