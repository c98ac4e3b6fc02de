package video

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/pion/rtp"
)

// H264Depacketizer turns H.264 RTP packets (RFC 6184, packetization modes
// 0 and 1: single NAL units, STAP-A, FU-A) into access units. It follows
// gortsplib's rtph264.Decoder — the same errors and sentinels, an access
// unit ends at the marker bit or when the timestamp changes, NAL units
// that some cameras wrap in Annex-B are split, the same size limits — but
// builds each access unit in Annex-B form in one buffer as its packets
// arrive: the NAL units it returns are slices of that buffer, and AnnexB
// returns the buffer itself. A fragmented NAL unit is copied once, into
// place, instead of being joined and then copied again into Annex-B (two
// allocations and two copies of every frame on the recording path).
//
// When the timestamp changes before a marker, the previous access unit is
// returned with the packet that changes it (rtph264.Decoder returns it
// with the first complete NAL unit of the next one); the Assembler treats
// both alike. After an error the depacketizer must be discarded, as the
// Assembler does.
type H264Depacketizer struct {
	buf   []byte   // the access unit being built, Annex-B
	spans [][2]int // its NAL units: [from, to) in buf, without start codes
	ts    uint32   // of the access unit being built
	have  bool     // buf holds NAL units
	fu    bool     // a FU-A is in progress; its NAL unit starts at fuAt
	fuAt  int      //
	fuSeq uint16   // the sequence number the next fragment must have
	first bool     // a packet that starts a NAL unit was received
	annex bool     // the camera wraps NAL units in Annex-B
	last  []byte   // the Annex-B bytes of the access unit last returned
	// hint is the size of the last access unit that began with a
	// parameter set or an IDR slice (hint[1]) or with anything else
	// (hint[0]): keyframes are several times larger than the frames
	// between them, so each kind sizes the next buffer of its kind.
	hint  [2]int
	kind  int         // of the access unit being built
	split h264.AnnexB // scratch for an Annex-B-wrapped NAL unit
}

// NewH264Depacketizer returns a depacketizer for packetization mode 0 or
// 1 (mode 2, interleaved, is not supported, as in rtph264.Decoder).
func NewH264Depacketizer(packetizationMode int) (*H264Depacketizer, error) {
	if packetizationMode >= 2 {
		return nil, fmt.Errorf("PacketizationMode >= 2 is not supported")
	}
	return &H264Depacketizer{}, nil
}

// AnnexB returns the Annex-B bytes of the access unit Decode last
// returned: its NAL units, each after a 4-byte start code. The caller owns
// them (the depacketizer never writes them again).
func (d *H264Depacketizer) AnnexB() []byte { return d.last }

var annexBCode = []byte{0, 0, 0, 1}

// Decode takes one RTP packet, in sequence, and returns the NAL units of
// an access unit when one is complete, or rtph264.ErrMorePacketsNeeded.
func (d *H264Depacketizer) Decode(pkt *rtp.Packet) ([][]byte, error) {
	p := pkt.Payload
	if len(p) < 1 {
		return nil, fmt.Errorf("payload is too short")
	}
	typ := h264.NALUType(p[0] & 0x1f)
	// Check the packet before changing any state.
	fuCont := false
	switch typ {
	case h264.NALUTypeFUA:
		if len(p) < 2 {
			return nil, fmt.Errorf("invalid FU-A packet (invalid size)")
		}
		if p[1]&0x80 == 0 {
			fuCont = true
			if !d.fu {
				if !d.first {
					return nil, rtph264.ErrNonStartingPacketAndNoPrevious
				}
				return nil, fmt.Errorf("invalid FU-A packet (non-starting)")
			}
			if pkt.SequenceNumber != d.fuSeq {
				return nil, fmt.Errorf("discarding frame since a RTP packet is missing")
			}
			if size := len(d.buf) - d.fuAt + len(p) - 2; size > h264.MaxAccessUnitSize {
				return nil, fmt.Errorf("NALU size (%d) is too big, maximum is %d", size, h264.MaxAccessUnitSize)
			}
		}
	case h264.NALUTypeSTAPA:
		if err := checkSTAPA(p[1:]); err != nil {
			return nil, err
		}
	case h264.NALUTypeSTAPB, h264.NALUTypeMTAP16, h264.NALUTypeMTAP24, h264.NALUTypeFUB:
		return nil, fmt.Errorf("packet type not supported (%v)", typ)
	}

	if d.fu && !fuCont {
		// An unfinished fragmented NAL unit is dropped.
		d.buf, d.fu = d.buf[:d.fuAt-4], false
		if len(d.spans) == 0 {
			d.have = false
		}
	}
	var out [][]byte
	if d.have && !fuCont && pkt.Timestamp != d.ts {
		// Some cameras never set the marker: a new timestamp ends the
		// access unit.
		out = d.finish()
	}
	if !d.have {
		d.have, d.ts = true, pkt.Timestamp
		if d.buf == nil {
			first := typ
			if typ == h264.NALUTypeFUA {
				first = h264.NALUType(p[1] & 0x1f)
			} else if typ == h264.NALUTypeSTAPA && len(p) > 3 {
				first = h264.NALUType(p[3] & 0x1f)
			}
			d.kind = 0
			switch first {
			case h264.NALUTypeSPS, h264.NALUTypePPS, h264.NALUTypeIDR:
				d.kind = 1
			}
			// The last unit of the kind and a packet more: it rarely
			// grows (a copy), and holds little spare room.
			d.buf = make([]byte, 0, max(d.hint[d.kind]+d.hint[d.kind]/8+1500, 4096))
		}
	}

	nalus0 := len(d.spans)
	switch typ {
	case h264.NALUTypeFUA:
		d.first = true
		if !fuCont {
			d.buf = append(d.buf, 0, 0, 0, 1, p[0]&0xe0|p[1]&0x1f)
			d.fuAt = len(d.buf) - 1
			d.fu = true
		}
		d.buf = append(d.buf, p[2:]...)
		d.fuSeq = pkt.SequenceNumber + 1
		if p[1]&0x40 == 0 { // not the end
			if out != nil {
				return out, nil
			}
			return nil, rtph264.ErrMorePacketsNeeded
		}
		d.fu = false
		d.spans = append(d.spans, [2]int{d.fuAt, len(d.buf)})
	case h264.NALUTypeSTAPA:
		d.first = true
		for q := p[1:]; len(q) >= 2; {
			size := int(q[0])<<8 | int(q[1])
			if size == 0 {
				break // padding (checked by checkSTAPA)
			}
			d.add(q[2 : 2+size])
			q = q[2+size:]
		}
	default:
		d.first = true
		d.add(p)
	}
	if len(d.spans)-nalus0 == 1 {
		if err := d.unwrapAnnexB(nalus0); err != nil {
			return nil, err
		}
	}
	if n := len(d.spans); n > h264.MaxNALUsPerAccessUnit {
		return nil, fmt.Errorf("NALU count (%d) exceeds maximum allowed (%d)", n, h264.MaxNALUsPerAccessUnit)
	}
	if size := len(d.buf) - 4*len(d.spans); size > h264.MaxAccessUnitSize {
		return nil, fmt.Errorf("access unit size (%d) is too big, maximum is %d", size, h264.MaxAccessUnitSize)
	}
	if out != nil {
		return out, nil
	}
	if !pkt.Marker {
		return nil, rtph264.ErrMorePacketsNeeded
	}
	return d.finish(), nil
}

// add appends one NAL unit.
func (d *H264Depacketizer) add(nalu []byte) {
	d.buf = append(d.buf, 0, 0, 0, 1)
	from := len(d.buf)
	d.buf = append(d.buf, nalu...)
	d.spans = append(d.spans, [2]int{from, len(d.buf)})
}

// unwrapAnnexB splits the NAL unit at spans[i] (the only one its packet
// carried) if the camera wrapped NAL units in Annex-B, as rtph264.Decoder
// does: once one NAL unit holds a 4-byte start code, every single one is
// taken as Annex-B.
func (d *H264Depacketizer) unwrapAnnexB(i int) error {
	s := d.spans[i]
	nalu := d.buf[s[0]:s[1]]
	if !d.annex && !hasStartCode(nalu) {
		return nil
	}
	d.annex = true
	wrapped := append([]byte(nil), nalu...)
	if !bytes.HasPrefix(wrapped, annexBCode) {
		wrapped = append(append([]byte(nil), annexBCode...), wrapped...)
	}
	if err := d.split.Unmarshal(wrapped); err != nil {
		return err
	}
	d.buf, d.spans = d.buf[:s[0]-4], d.spans[:i]
	for _, n := range d.split {
		d.add(n)
	}
	return nil
}

// hasStartCode reports whether b holds a 4-byte Annex-B start code, as
// bytes.Contains(b, annexBCode), looking for its last byte first: in a
// NAL unit 0x01 is rare and zeros are not (bytes.Contains stopped at each
// zero; this scan ran on every byte of every frame).
func hasStartCode(b []byte) bool {
	for i := 3; i < len(b); i++ {
		j := bytes.IndexByte(b[i:], 1)
		if j < 0 {
			return false
		}
		i += j
		if b[i-1] == 0 && b[i-2] == 0 && b[i-3] == 0 {
			return true
		}
	}
	return false
}

// finish returns the access unit built so far and starts the next one in
// a new buffer (the returned one belongs to the caller).
func (d *H264Depacketizer) finish() [][]byte {
	nalus := make([][]byte, len(d.spans))
	for i, s := range d.spans {
		nalus[i] = d.buf[s[0]:s[1]:s[1]]
	}
	d.last, d.hint[d.kind] = d.buf, len(d.buf)
	d.buf, d.spans, d.have = nil, d.spans[:0], false
	return nalus
}

// checkSTAPA checks the aggregation units of a STAP-A payload (after its
// header byte) as rtph264.Decoder does.
func checkSTAPA(q []byte) error {
	n := 0
	for {
		if len(q) < 2 {
			return errors.New("invalid STAP-A packet (invalid size)")
		}
		size := int(q[0])<<8 | int(q[1])
		q = q[2:]
		if size == 0 {
			if isAllZero(q) {
				break
			}
			return errors.New("invalid STAP-A packet (invalid size)")
		}
		if size > len(q) {
			return errors.New("invalid STAP-A packet (invalid size)")
		}
		n++
		q = q[size:]
		if len(q) == 0 {
			break
		}
	}
	if n == 0 {
		return errors.New("STAP-A packet doesn't contain any NALU")
	}
	return nil
}

func isAllZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
