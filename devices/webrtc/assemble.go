package webrtc

import (
	"errors"

	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/pion/rtp"

	"github.com/episoded/episoded/internal/h26x"
)

// unit is one assembled access unit on its way to the sink.
type unit struct {
	au      [][]byte
	ts      uint32 // RTP timestamp
	key     bool
	lost    uint32 // RTP packets lost before it
	dropped uint32 // frames discarded before it
	disc    bool
	params  [][]byte // non-nil: parameter sets changed (or first unit); describe first
}

// asmCounters are the assembler's counters, shared with Stats and metrics.
type asmCounters struct {
	lost, dropped, decodeErrors, queueFull counter
}

// assembler turns an RTP packet sequence (RFC 6184, packetization mode 0
// or 1) into complete H.264 access units. It runs on the session's RTP
// reader goroutine and never blocks.
//
// Invariants: an access unit is emitted only if every one of its packets
// arrived (a sequence gap or decoder error resets the decoder and skips to
// the next packet that starts an access unit), and the first unit emitted
// after connecting or after any loss is a keyframe. Everything discarded on
// the way is counted in the next emitted unit's lost/dropped fields.
//
// There is no reordering: WebRTC on a LAN rarely reorders, and a packet
// that arrives after its successor counts as lost.
type assembler struct {
	emit func(u unit) bool // false: the queue was full and u was dropped
	cnt  *asmCounters

	dec      *rtph264.Decoder
	haveSeq  bool
	lastSeq  uint16
	resync   bool // skipping packets until one starts an access unit
	waitKey  bool // discarding units until a keyframe
	inFlight bool // the decoder holds packets of an unfinished unit
	bufTS    uint32

	discarding bool // discardTS is the timestamp of the last discarded frame
	discardTS  uint32

	params   [2][]byte // SPS, PPS
	describe bool

	pendLost, pendDropped uint32
	pendDisc              bool
}

func newAssembler(cnt *asmCounters, emit func(unit) bool) *assembler {
	return &assembler{emit: emit, cnt: cnt, resync: true, waitKey: true, describe: true}
}

// waitingForKey reports whether the assembler is discarding until a
// keyframe (so the publisher should be asked for one).
func (a *assembler) waitingForKey() bool { return a.waitKey }

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

// push handles one RTP packet.
func (a *assembler) push(pkt *rtp.Packet) {
	if a.haveSeq {
		switch d := pkt.SequenceNumber - a.lastSeq; {
		case d == 1:
		case d == 0 || d >= 0x8000: // duplicate or late: already accounted
			return
		default:
			lost := uint32(d - 1)
			a.pendLost += lost
			a.cnt.lost.Add(uint64(lost))
			a.markGap()
		}
	}
	a.haveSeq, a.lastSeq = true, pkt.SequenceNumber
	if len(pkt.Payload) == 0 { // padding-only packet
		return
	}

	if a.resync {
		if !h26x.H264AUStart(pkt.Payload) {
			a.dropFrame(pkt.Timestamp)
			return
		}
		a.resync, a.discarding = false, false
	}
	if a.dec == nil {
		a.dec = &rtph264.Decoder{PacketizationMode: 1}
		if err := a.dec.Init(); err != nil { // cannot happen for mode 1
			a.cnt.decodeErrors.Add(1)
			a.markGap()
			return
		}
	}

	wasInFlight, prevTS := a.inFlight, a.bufTS
	au, err := a.dec.Decode(pkt)
	switch {
	case err == nil:
	case errors.Is(err, rtph264.ErrMorePacketsNeeded):
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
	key := h264.IsRandomAccess(au)
	if a.waitKey && !key {
		a.dropFrame(ts)
		a.pendDisc = true
		return
	}
	for _, n := range au {
		if len(n) == 0 {
			continue
		}
		i := -1
		switch h264.NALUType(n[0] & 0x1f) {
		case h264.NALUTypeSPS:
			i = 0
		case h264.NALUTypePPS:
			i = 1
		}
		if i >= 0 && string(a.params[i]) != string(n) {
			a.params[i] = append([]byte(nil), n...)
			a.describe = true
		}
	}
	u := unit{au: au, ts: ts, key: key, lost: a.pendLost, dropped: a.pendDropped,
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

// splitAnnexB splits an Annex-B access unit into NAL units (aliasing b);
// bytes without any start code are taken as one bare NAL unit.
func splitAnnexB(b []byte) [][]byte {
	if nalus := h26x.SplitAnnexB(b); nalus != nil || len(b) == 0 {
		return nalus
	}
	return [][]byte{b}
}

// withParams returns au with the parameter sets params in front if it is
// an IDR access unit that lacks an SPS or a PPS. WebRTC decoders need them
// before every IDR.
func withParams(au [][]byte, params [][]byte) [][]byte {
	var idr, sps, pps bool
	for _, n := range au {
		if len(n) == 0 {
			continue
		}
		switch h264.NALUType(n[0] & 0x1f) {
		case h264.NALUTypeIDR:
			idr = true
		case h264.NALUTypeSPS:
			sps = true
		case h264.NALUTypePPS:
			pps = true
		}
	}
	if !idr || (sps && pps) || len(params) == 0 {
		return au
	}
	out := make([][]byte, 0, len(au)+len(params))
	for _, p := range params {
		if len(p) == 0 {
			continue
		}
		t := h264.NALUType(p[0] & 0x1f)
		if (t == h264.NALUTypeSPS && !sps) || (t == h264.NALUTypePPS && !pps) {
			out = append(out, p)
		}
	}
	// Keep an access unit delimiter first, if there is one.
	if len(au) > 0 && len(au[0]) > 0 && h264.NALUType(au[0][0]&0x1f) == h264.NALUTypeAccessUnitDelimiter {
		return append(append([][]byte{au[0]}, out...), au[1:]...)
	}
	return append(out, au...)
}
