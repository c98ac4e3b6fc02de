package rtsp

import (
	"errors"

	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph265"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h265"
	"github.com/pion/rtp"

	"github.com/episoded/episoded/internal/h26x"
	"github.com/episoded/episoded/sample"
)

// codec holds what differs between H.264 and H.265.
type codec struct {
	name sample.Codec
	// auStart reports whether an RTP payload begins an access unit.
	auStart func(payload []byte) bool
	// randomAccess reports whether an access unit decodes on its own.
	randomAccess func(au [][]byte) bool
	// paramSlot returns the index of nalu's parameter-set kind in the
	// descriptor's Params (decoding order), or -1.
	paramSlot func(nalu []byte) int
	nParams   int
	// moreNeeded and noPrevious are the decoder's "not an error" results.
	moreNeeded, noPrevious error
}

var codecH264 = &codec{
	name:         sample.CodecH264,
	auStart:      h26x.H264AUStart,
	randomAccess: h264.IsRandomAccess,
	paramSlot: func(n []byte) int {
		switch h264.NALUType(n[0] & 0x1f) {
		case h264.NALUTypeSPS:
			return 0
		case h264.NALUTypePPS:
			return 1
		}
		return -1
	},
	nParams:    2,
	moreNeeded: rtph264.ErrMorePacketsNeeded,
	noPrevious: rtph264.ErrNonStartingPacketAndNoPrevious,
}

var codecH265 = &codec{
	name:         sample.CodecH265,
	auStart:      h265AUStart,
	randomAccess: h265.IsRandomAccess,
	paramSlot: func(n []byte) int {
		if len(n) < 2 {
			return -1
		}
		switch h265.NALUType((n[0] >> 1) & 0x3f) {
		case h265.NALUType_VPS_NUT:
			return 0
		case h265.NALUType_SPS_NUT:
			return 1
		case h265.NALUType_PPS_NUT:
			return 2
		}
		return -1
	},
	nParams:    3,
	moreNeeded: rtph265.ErrMorePacketsNeeded,
	noPrevious: rtph265.ErrNonStartingPacketAndNoPrevious,
}

// h265AUStart is h26x.H264AUStart for H.265 (RFC 7798, no DONL): VPS, SPS, PPS,
// AUD, prefix SEI, or a slice with first_slice_segment_in_pic_flag.
func h265AUStart(p []byte) bool {
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

// auDecoder is the part of rtph264.Decoder / rtph265.Decoder we use.
type auDecoder interface {
	Decode(pkt *rtp.Packet) ([][]byte, error)
}

// unit is one assembled access unit on its way to storage.
type unit struct {
	au      [][]byte
	ts      uint32 // RTP timestamp
	ssrc    uint32
	key     bool
	lost    uint32 // RTP packets lost before it
	dropped uint32 // frames discarded before it
	disc    bool
	params  [][]byte // non-nil: parameter sets changed (or first unit); describe first
}

// assembler turns an in-order RTP packet sequence into complete access
// units. It runs on gortsplib's reader goroutine and never blocks.
//
// Invariants: an access unit is emitted only if every one of its packets
// arrived (any sequence gap or decoder error resets the decoder and skips to
// the next packet that starts an access unit), and the first unit emitted
// after connecting or after any loss is a keyframe. Everything discarded on
// the way is counted in the next emitted unit's lost/dropped fields.
type assembler struct {
	c      *codec
	newDec func() (auDecoder, error)
	emit   func(u unit) bool // false: the queue was full and u was dropped
	cnt    *counters

	dec      auDecoder
	haveSeq  bool
	lastSeq  uint16
	resync   bool // skipping packets until one starts an access unit
	waitKey  bool // discarding units until a keyframe
	inFlight bool // the decoder holds packets of an unfinished unit
	bufTS    uint32
	ssrc     uint32 // of the last packet

	// haveParamsInBand: stored keyframes carry their parameter sets, so a
	// keyframe without them right after a resync lost its first packets.
	haveParamsInBand bool
	suspect          bool // the next unit is the first after a resync

	discarding bool // discardTS is the timestamp of the last discarded frame
	discardTS  uint32

	params   [][]byte
	describe bool

	pendLost, pendDropped uint32
	pendDisc              bool
}

func newAssembler(c *codec, sdpParams [][]byte, newDec func() (auDecoder, error), cnt *counters, emit func(unit) bool) *assembler {
	a := &assembler{c: c, newDec: newDec, emit: emit, cnt: cnt, resync: true, waitKey: true, describe: true}
	a.params = make([][]byte, c.nParams)
	for i, p := range sdpParams {
		if i < c.nParams && len(p) > 0 {
			a.params[i] = append([]byte(nil), p...)
		}
	}
	return a
}

// markGap records that data was lost: the unfinished unit is discarded and
// assembly restarts at the next access unit start, then the next keyframe.
func (a *assembler) markGap() {
	if a.inFlight {
		a.dropFrame(a.bufTS)
	}
	a.inFlight = false
	a.dec = nil
	a.resync = true
	a.waitKey = true
	a.pendDisc = true
}

// dropFrame counts the frame with RTP timestamp ts as dropped, once.
func (a *assembler) dropFrame(ts uint32) {
	if a.discarding && a.discardTS == ts {
		return
	}
	a.discarding, a.discardTS = true, ts
	a.pendDropped++
	a.cnt.dropped.Add(1)
}

// push handles one RTP packet. Packets arrive in sequence order (gortsplib
// reorders UDP), so a sequence gap is loss.
func (a *assembler) push(pkt *rtp.Packet) {
	if a.haveSeq {
		switch d := pkt.SequenceNumber - a.lastSeq; {
		case d == 1:
		case d == 0: // duplicate
			return
		case d < 0x8000:
			lost := uint32(d - 1)
			a.pendLost += lost
			a.cnt.lost.Add(uint64(lost))
			a.markGap()
		default:
			// Backwards: gortsplib has already reordered (UDP) or the
			// transport is ordered (TCP), so the source's numbering
			// jumped. A gap of unknown size.
			a.markGap()
		}
	}
	a.haveSeq, a.lastSeq, a.ssrc = true, pkt.SequenceNumber, pkt.SSRC

	if a.resync {
		if !a.c.auStart(pkt.Payload) {
			a.dropFrame(pkt.Timestamp)
			return
		}
		// discarding stays set: if this unit turns out to be the rest
		// of the one being discarded, it is not counted twice.
		a.resync = false
		a.suspect = a.haveParamsInBand
	}
	if a.dec == nil {
		d, err := a.newDec()
		if err != nil { // cannot happen for the packetization modes we accept
			a.cnt.decodeErrors.Add(1)
			a.markGap()
			return
		}
		a.dec = d
	}

	wasInFlight, prevTS := a.inFlight, a.bufTS
	au, err := a.dec.Decode(pkt)
	switch {
	case err == nil:
	case errors.Is(err, a.c.moreNeeded):
		a.inFlight, a.bufTS = true, pkt.Timestamp
		return
	default:
		// A malformed packet or an over-long unit: the decoder has
		// thrown away what it held. Treat it like loss.
		a.cnt.decodeErrors.Add(1)
		a.inFlight, a.bufTS = true, pkt.Timestamp
		a.markGap()
		return
	}
	ts := pkt.Timestamp
	if wasInFlight && prevTS != pkt.Timestamp {
		// The decoder closed the previous unit because the timestamp
		// changed (its marker packet never came); this packet is now
		// buffered as the start of the next unit.
		ts = prevTS
		a.inFlight, a.bufTS = true, pkt.Timestamp
	} else {
		a.inFlight = false
	}
	a.unit(au, ts)
}

// unit handles one complete access unit.
func (a *assembler) unit(au [][]byte, ts uint32) {
	key := a.c.randomAccess(au)
	suspect := a.suspect
	a.suspect = false
	if a.waitKey && !key {
		a.dropFrame(ts)
		a.pendDisc = true
		return
	}
	hasParams := false
	for _, n := range au {
		if len(n) > 0 && a.c.paramSlot(n) >= 0 {
			hasParams = true
			break
		}
	}
	if key && suspect && !hasParams {
		// The packets before the gap may have held this unit's
		// parameter sets: it is not stored whole, so it is not stored.
		a.dropFrame(ts)
		a.pendDisc = true
		return
	}
	if key && hasParams {
		a.haveParamsInBand = true
	}
	for _, n := range au {
		if len(n) == 0 {
			continue
		}
		if i := a.c.paramSlot(n); i >= 0 && string(a.params[i]) != string(n) {
			a.params[i] = append([]byte(nil), n...)
			a.describe = true
		}
	}
	u := unit{au: au, ts: ts, ssrc: a.ssrc, key: key, lost: a.pendLost, dropped: a.pendDropped,
		disc: a.pendDisc || a.pendLost > 0 || a.pendDropped > 0}
	if a.describe {
		u.params = make([][]byte, 0, len(a.params))
		for _, p := range a.params {
			if p != nil {
				u.params = append(u.params, p)
			}
		}
	}
	if !a.emit(u) {
		// Queue full: u is gone, and so is everything that depends on
		// it until the next keyframe.
		a.pendDropped++
		a.cnt.dropped.Add(1)
		a.cnt.queueFull.Add(1)
		a.waitKey, a.pendDisc = true, true
		a.discarding, a.discardTS = true, ts
		return
	}
	a.waitKey, a.describe = false, false
	a.pendLost, a.pendDropped, a.pendDisc = 0, 0, false
	a.discarding = false
}
