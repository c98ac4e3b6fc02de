package video

import (
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h265"

	"github.com/episoded/episoded/sample"
)

// Codec holds what differs between H.264 and H.265 at the NAL unit level.
// Use the values H264 and H265.
type Codec struct {
	// Name is the stream codec.
	Name sample.Codec
	// NParams is the number of parameter-set kinds: 2 (SPS, PPS) for
	// H.264, 3 (VPS, SPS, PPS) for H.265.
	NParams int

	nalType func(n []byte) int
	auStart func(payload []byte) bool
	// randomAccess reports whether an access unit decodes on its own.
	randomAccess func(au [][]byte) bool
	paramSlot    func(typ int) int
	aud          int
	irap         func(typ int) bool
}

// H264 is H.264 (RFC 6184 payloads).
var H264 = &Codec{
	Name:    sample.CodecH264,
	NParams: 2,
	nalType: func(n []byte) int {
		if len(n) == 0 {
			return -1
		}
		return int(n[0] & 0x1f)
	},
	auStart:      H264AUStart,
	randomAccess: h264.IsRandomAccess,
	paramSlot: func(typ int) int {
		switch h264.NALUType(typ) {
		case h264.NALUTypeSPS:
			return 0
		case h264.NALUTypePPS:
			return 1
		}
		return -1
	},
	aud:  int(h264.NALUTypeAccessUnitDelimiter),
	irap: func(typ int) bool { return typ == int(h264.NALUTypeIDR) },
}

// H265 is H.265 (RFC 7798 payloads without DONL).
var H265 = &Codec{
	Name:    sample.CodecH265,
	NParams: 3,
	nalType: func(n []byte) int {
		if len(n) < 2 {
			return -1
		}
		return int(n[0]>>1) & 0x3f
	},
	auStart:      H265AUStart,
	randomAccess: h265.IsRandomAccess,
	paramSlot: func(typ int) int {
		switch h265.NALUType(typ) {
		case h265.NALUType_VPS_NUT:
			return 0
		case h265.NALUType_SPS_NUT:
			return 1
		case h265.NALUType_PPS_NUT:
			return 2
		}
		return -1
	},
	aud:  int(h265.NALUType_AUD_NUT),
	irap: func(typ int) bool { return typ >= 16 && typ <= 21 },
}

// CodecOf returns the Codec of a stream codec, or nil for a non-video one.
func CodecOf(c sample.Codec) *Codec {
	switch c {
	case sample.CodecH264:
		return H264
	case sample.CodecH265:
		return H265
	}
	return nil
}

// AUStart reports whether an RTP payload begins an access unit.
func (c *Codec) AUStart(payload []byte) bool { return c.auStart(payload) }

// ParamSlot returns the index of n's parameter-set kind in decoding order
// (H.264 SPS 0, PPS 1; H.265 VPS 0, SPS 1, PPS 2), or -1.
func (c *Codec) ParamSlot(n []byte) int {
	t := c.nalType(n)
	if t < 0 {
		return -1
	}
	return c.paramSlot(t)
}

// IsKeyframe reports whether an access unit decodes on its own: it holds
// an IDR (H.264) or IRAP (H.265) slice.
func (c *Codec) IsKeyframe(au [][]byte) bool {
	for _, n := range au {
		if t := c.nalType(n); t >= 0 && c.irap(t) {
			return true
		}
	}
	return false
}

// HasParams reports whether au carries every parameter-set kind in band.
func (c *Codec) HasParams(au [][]byte) bool {
	var have [3]bool
	for _, n := range au {
		if i := c.ParamSlot(n); i >= 0 {
			have[i] = true
		}
	}
	for i := 0; i < c.NParams; i++ {
		if !have[i] {
			return false
		}
	}
	return true
}

// WithParams returns au as a decoder needs it: if key is set (or au holds
// an IDR/IRAP slice), every parameter-set kind goes in front of the
// slices, after an access unit delimiter if there is one, each taken from
// au itself where it carries that kind, else from params (a stream
// descriptor's Params, in decoding order). Other units are returned as
// they are. au is not modified; the result may alias it.
//
// This is the one place that puts parameter sets before keyframes: export,
// WHEP, RTSP replay and the DTS extractor all use it.
func (c *Codec) WithParams(au [][]byte, params [][]byte, key bool) [][]byte {
	if !key && !c.IsKeyframe(au) {
		return au
	}
	var inBand [3][]byte
	n := 0
	for _, x := range au {
		if i := c.ParamSlot(x); i >= 0 {
			if inBand[i] == nil {
				n++
			}
			inBand[i] = x
		}
	}
	if n == c.NParams && c.paramsFirst(au) {
		return au
	}
	var byKind [3][]byte
	for _, p := range params {
		if i := c.ParamSlot(p); i >= 0 {
			byKind[i] = p
		}
	}
	out := make([][]byte, 0, len(au)+c.NParams)
	rest := au
	if len(au) > 0 && c.nalType(au[0]) == c.aud {
		out = append(out, au[0])
		rest = au[1:]
	}
	for i := 0; i < c.NParams; i++ {
		switch {
		case inBand[i] != nil:
			out = append(out, inBand[i])
		case byKind[i] != nil:
			out = append(out, byKind[i])
		}
	}
	for _, x := range rest {
		if c.ParamSlot(x) < 0 {
			out = append(out, x)
		}
	}
	return out
}

// paramsFirst reports whether au's parameter sets come before its first
// slice.
func (c *Codec) paramsFirst(au [][]byte) bool {
	seen := 0
	for _, x := range au {
		if c.ParamSlot(x) >= 0 {
			seen++
			continue
		}
		t := c.nalType(x)
		if t == c.aud {
			continue
		}
		if c.Name == sample.CodecH264 && t >= 1 && t <= 5 || c.Name == sample.CodecH265 && t >= 0 && t < 32 {
			return seen == c.NParams
		}
	}
	return true
}

// H265AUStart is H264AUStart for H.265 (RFC 7798, no DONL): VPS, SPS, PPS,
// AUD, prefix SEI, or a slice with first_slice_segment_in_pic_flag.
func H265AUStart(p []byte) bool {
	if len(p) < 3 {
		return false
	}
	switch typ := (p[0] >> 1) & 0x3f; typ {
	case 48: // aggregation packet: 16-bit size, then the first NALU
		if len(p) < 7 {
			return false
		}
		size := int(p[2])<<8 | int(p[3])
		if size < 3 || size > len(p)-4 {
			return false
		}
		return h265TypeStarts((p[4]>>1)&0x3f, p[6])
	case 49: // fragmentation unit: FU header with start bit and type
		if p[2]&0x80 == 0 || len(p) < 4 {
			return false
		}
		return h265TypeStarts(p[2]&0x3f, p[3])
	default:
		return h265TypeStarts(typ, p[2])
	}
}

func h265TypeStarts(typ, next byte) bool {
	switch {
	case typ >= 32 && typ <= 35, typ == 39: // VPS, SPS, PPS, AUD, prefix SEI
		return true
	case typ < 32: // slice segment: first_slice_segment_in_pic_flag
		return next&0x80 != 0
	}
	return false
}

// StartFilter drops the access units that a decoder starting at a keyframe
// cannot decode: the RASL pictures (H.265 types 8 and 9) that follow a
// starting CRA picture in decode order and reference pictures before it
// (open GOP). H.264 keyframes are IDR pictures, after which everything
// decodes. Feed it a stream's units in decode order from its first
// keyframe; the zero value (with C set) is ready.
type StartFilter struct {
	C       *Codec
	started bool
	cra     bool // the stream started at a CRA and its leading pictures are being skipped
}

// Skip reports whether au is to be left out.
func (f *StartFilter) Skip(au [][]byte) bool {
	if f.C != H265 {
		return false
	}
	if !f.started {
		f.started = true
		for _, n := range au {
			if f.C.nalType(n) == int(h265.NALUType_CRA_NUT) {
				f.cra = true
			}
		}
		return false
	}
	if !f.cra {
		return false
	}
	for _, n := range au {
		switch t := f.C.nalType(n); {
		case t == int(h265.NALUType_RASL_N) || t == int(h265.NALUType_RASL_R):
			return true
		case t >= 0 && t < 32:
			f.cra = false // the first picture that is not RASL ends them
			return false
		}
	}
	return false
}
