package video

import (
	"errors"
	"sync/atomic"

	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph265"
	"github.com/pion/rtp"
)

// ClockRate is the RTP clock rate of H.264 and H.265 video.
const ClockRate = 90000

// Depacketizer is the part of rtph264.Decoder / rtph265.Decoder the
// Assembler uses.
type Depacketizer interface {
	Decode(pkt *rtp.Packet) ([][]byte, error)
}

// Unit is one complete access unit.
type Unit struct {
	AU   [][]byte
	TS   uint32 // RTP timestamp: the presentation time
	SSRC uint32 // of the unit's last packet
	Key  bool
	// PTSOffset is the presentation time minus the decode time, in ns
	// (0 for streams without B-frames, never negative).
	PTSOffset int64
	Lost      uint32 // RTP packets lost before it
	Dropped   uint32 // frames discarded before it
	Disc      bool
	// Params is non-nil for the first unit and whenever the parameter
	// sets changed: the stream must be described (again) before it.
	Params [][]byte
	// annexB is AU in Annex-B form when the depacketizer built it so
	// (H264Depacketizer), else nil.
	annexB []byte
}

// Payload returns the unit as stored: Annex-B with 4-byte start codes. It
// is the depacketizer's buffer when it built one (no copy), else a new
// slice. The caller owns it.
func (u Unit) Payload() []byte {
	if u.annexB != nil {
		return u.annexB
	}
	return AnnexB(u.AU)
}

// annexBDepacketizer is a Depacketizer that builds its access units in
// Annex-B form (H264Depacketizer).
type annexBDepacketizer interface {
	AnnexB() []byte
}

// Counters are an Assembler's running totals, read lock-free by stats and
// metrics while the assembler updates them.
type Counters struct {
	Lost, Dropped, DecodeErrors, QueueFull atomic.Uint64
}

// Assembler turns an RTP packet sequence into complete access units. It
// runs on the transport's reader goroutine and never blocks; it is not
// safe for concurrent use.
//
// The loss rule: an access unit is emitted only if every one of its
// packets arrived. Any sequence gap or depacketizer error discards the
// unfinished unit, resets the depacketizer and skips to the next packet
// that starts an access unit, and the first unit emitted after connecting
// or after any loss is a keyframe. A keyframe right after a resync that
// lacks the in-band parameter sets the stream otherwise carries is not
// stored whole, so it is discarded too. A packet numbered before its
// predecessor is a late or duplicate packet and is ignored (the
// transports reorder, or do not reorder at all, before this point).
// Everything discarded on the way is counted in the next emitted unit's
// Lost/Dropped fields and in Counters.
//
// Each emitted unit carries its presentation offset (PTS - DTS) from
// mediacommon's DTS extractor, so that consumers keep decode order; a
// stream whose slices the extractor cannot follow gets offset 0 until the
// next keyframe.
type Assembler struct {
	c      *Codec
	newDec func() (Depacketizer, error)
	emit   func(u Unit) bool // false: the queue was full and u was dropped
	cnt    *Counters

	dec      Depacketizer
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

	dts DTS

	pendLost, pendDropped uint32
	pendDisc              bool
}

// NewAssembler returns an assembler for codec c. sdpParams are the
// parameter sets from the session description (may be empty), newDec makes
// a fresh depacketizer (nil: the codec's default, H.264 packetization mode
// 1 or H.265 without DONL), cnt receives the counts, and emit takes each
// complete unit and reports false if it had to drop it (queue full).
func NewAssembler(c *Codec, sdpParams [][]byte, newDec func() (Depacketizer, error), cnt *Counters, emit func(Unit) bool) *Assembler {
	if newDec == nil {
		newDec = defaultDepacketizer(c)
	}
	a := &Assembler{c: c, newDec: newDec, emit: emit, cnt: cnt, resync: true, waitKey: true, describe: true}
	a.params = make([][]byte, c.NParams)
	for _, p := range sdpParams {
		if i := c.ParamSlot(p); i >= 0 {
			a.params[i] = append([]byte(nil), p...)
		}
	}
	a.dts.Init(c)
	return a
}

func defaultDepacketizer(c *Codec) func() (Depacketizer, error) {
	if c == H265 {
		return func() (Depacketizer, error) {
			d := &rtph265.Decoder{}
			return d, d.Init()
		}
	}
	return func() (Depacketizer, error) { return NewH264Depacketizer(1) }
}

// WaitingForKey reports whether the assembler is discarding until a
// keyframe (so a WebRTC publisher should be asked for one).
func (a *Assembler) WaitingForKey() bool { return a.waitKey }

// MarkDiscontinuity flags the next emitted unit as following a gap (for
// example the outage between two sessions).
func (a *Assembler) MarkDiscontinuity() { a.pendDisc = true }

// markGap records that data was lost: the unfinished unit is discarded and
// assembly restarts at the next access unit start, then the next keyframe.
func (a *Assembler) markGap() {
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
func (a *Assembler) dropFrame(ts uint32) {
	if a.discarding && a.discardTS == ts {
		return
	}
	a.discarding, a.discardTS = true, ts
	a.pendDropped++
	a.cnt.Dropped.Add(1)
}

// Push handles one RTP packet, in sequence order.
func (a *Assembler) Push(pkt *rtp.Packet) {
	if a.haveSeq {
		switch d := pkt.SequenceNumber - a.lastSeq; {
		case d == 1:
		case d == 0 || d >= 0x8000: // duplicate or late: already accounted
			return
		default:
			lost := uint32(d - 1)
			a.pendLost += lost
			a.cnt.Lost.Add(uint64(lost))
			a.markGap()
		}
	}
	a.haveSeq, a.lastSeq, a.ssrc = true, pkt.SequenceNumber, pkt.SSRC
	if len(pkt.Payload) == 0 { // padding only
		return
	}

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
			a.cnt.DecodeErrors.Add(1)
			a.markGap()
			return
		}
		a.dec = d
	}

	wasInFlight, prevTS := a.inFlight, a.bufTS
	au, err := a.dec.Decode(pkt)
	switch {
	case err == nil:
	case errors.Is(err, rtph264.ErrMorePacketsNeeded), errors.Is(err, rtph265.ErrMorePacketsNeeded):
		a.inFlight, a.bufTS = true, pkt.Timestamp
		return
	default:
		// A malformed packet or an over-long unit: the decoder has
		// thrown away what it held. Treat it like loss.
		a.cnt.DecodeErrors.Add(1)
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
	var annexB []byte
	if ab, ok := a.dec.(annexBDepacketizer); ok {
		annexB = ab.AnnexB()
	}
	a.unit(au, ts, annexB)
}

// unit handles one complete access unit.
func (a *Assembler) unit(au [][]byte, ts uint32, annexB []byte) {
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
		if a.c.ParamSlot(n) >= 0 {
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
		if i := a.c.ParamSlot(n); i >= 0 && string(a.params[i]) != string(n) {
			a.params[i] = append([]byte(nil), n...)
			a.describe = true
		}
	}
	disc := a.pendDisc || a.pendLost > 0 || a.pendDropped > 0
	if disc {
		a.dts.Reset()
	}
	u := Unit{AU: au, TS: ts, SSRC: a.ssrc, Key: key, Lost: a.pendLost, Dropped: a.pendDropped, Disc: disc, annexB: annexB}
	u.PTSOffset = a.dts.Offset(au, a.params, key, ts)
	if a.describe {
		u.Params = make([][]byte, 0, len(a.params))
		for _, p := range a.params {
			if p != nil {
				u.Params = append(u.Params, p)
			}
		}
	}
	if !a.emit(u) {
		// Queue full: u is gone, and so is everything that depends on
		// it until the next keyframe.
		a.pendDropped++
		a.cnt.Dropped.Add(1)
		a.cnt.QueueFull.Add(1)
		a.waitKey, a.pendDisc = true, true
		a.discarding, a.discardTS = true, ts
		return
	}
	a.waitKey, a.describe = false, false
	a.pendLost, a.pendDropped, a.pendDisc = 0, 0, false
	a.discarding = false
}
