package video_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/pion/rtp"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/internal/video"
)

// depacketized runs packets through a depacketizer and returns every
// access unit it completes, as Annex-B, and the number of errors.
func depacketized(t *testing.T, dec video.Depacketizer, annexB func() []byte, pkts []*rtp.Packet) ([]string, int) {
	t.Helper()
	var out []string
	errs := 0
	for _, p := range pkts {
		au, err := dec.Decode(p)
		switch {
		case err == nil:
			b := video.AnnexB(au)
			if annexB != nil {
				if got := annexB(); !bytes.Equal(got, b) {
					t.Fatalf("AnnexB() is not the returned NAL units in Annex-B (%d vs %d bytes)", len(got), len(b))
				}
			}
			out = append(out, string(b))
		case errors.Is(err, rtph264.ErrMorePacketsNeeded):
		default:
			errs++
		}
	}
	return out, errs
}

// packetsOf packetizes access units with gortsplib's encoder (FU-A for
// large NAL units, STAP-A for the parameter sets) at 30 fps, then applies
// edit to each packet.
func packetsOf(t *testing.T, aus [][][]byte, maxSize int, edit func(*rtp.Packet)) []*rtp.Packet {
	t.Helper()
	enc := &rtph264.Encoder{PayloadType: 96, PayloadMaxSize: maxSize}
	if err := enc.Init(); err != nil {
		t.Fatal(err)
	}
	var all []*rtp.Packet
	for i, au := range aus {
		pkts, err := enc.Encode(au)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pkts {
			p.Timestamp = uint32(i * 3000)
			if edit != nil {
				edit(p)
			}
			all = append(all, p)
		}
	}
	return all
}

// TestH264DepacketizerMatchesGortsplib: the recording path's
// depacketizer gives the same access units, byte for byte, as
// gortsplib's rtph264.Decoder followed by AnnexB, on a real clip (with
// and without markers, small and large packets, NAL units wrapped in
// Annex-B by the camera), and fails on the same malformed packets.
func TestH264DepacketizerMatchesGortsplib(t *testing.T) {
	aus, err := assets.H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	bf, _ := bframeClip(t, video.H264)
	wrapped := make([][][]byte, len(aus))
	for i, au := range aus {
		// One NAL unit holding the whole unit in Annex-B (cameras that
		// do this exist; rtph264.Decoder splits them).
		wrapped[i] = [][]byte{video.AnnexB(au)}
	}
	noMarker := func(p *rtp.Packet) { p.Marker = false }
	cases := []struct {
		name string
		pkts []*rtp.Packet
	}{
		{"clip", packetsOf(t, aus, 1460, nil)},
		{"b-frames", packetsOf(t, bf, 1460, nil)},
		{"small packets", packetsOf(t, aus, 200, nil)},
		{"no marker", packetsOf(t, aus, 1460, noMarker)},
		{"annex-b inside", packetsOf(t, wrapped, 1460, nil)},
		{"annex-b inside, no marker", packetsOf(t, wrapped, 60000, noMarker)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var seq uint16
			for _, p := range c.pkts {
				p.SequenceNumber = seq
				seq++
			}
			ref := &rtph264.Decoder{PacketizationMode: 1}
			if err := ref.Init(); err != nil {
				t.Fatal(err)
			}
			want, wantErrs := depacketized(t, ref, nil, c.pkts)
			ours, err := video.NewH264Depacketizer(1)
			if err != nil {
				t.Fatal(err)
			}
			got, gotErrs := depacketized(t, ours, ours.AnnexB, c.pkts)
			if len(want) < len(aus)/2 {
				t.Fatalf("reference decoded only %d units", len(want))
			}
			if gotErrs != wantErrs || len(got) != len(want) {
				t.Fatalf("%d units and %d errors, want %d and %d", len(got), gotErrs, len(want), wantErrs)
			}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("unit %d differs: %d bytes, want %d", i, len(got[i]), len(want[i]))
				}
			}
		})
	}

	// Malformed packets: both refuse them.
	bad := []*rtp.Packet{
		{Payload: []byte{}},
		{Payload: []byte{28}},                   // FU-A without its header
		{Payload: []byte{28, 0x05, 1, 2}},       // FU-A continuation without a start
		{Payload: []byte{24, 0, 9, 0x67}},       // STAP-A size beyond the packet
		{Payload: []byte{24, 0, 0, 1}},          // STAP-A padding that is not zero
		{Payload: []byte{25, 0, 1, 0x67}},       // STAP-B: not supported
		{Payload: []byte{24}},                   // STAP-A without a NAL unit
		{Payload: []byte{29, 0x85, 1}},          // FU-B: not supported
		{Payload: []byte{24, 0, 1, 0x09, 0, 0}}, // STAP-A with zero padding: fine
	}
	for i, p := range bad {
		ref := &rtph264.Decoder{PacketizationMode: 1}
		_ = ref.Init()
		_, refErr := ref.Decode(p)
		ours, _ := video.NewH264Depacketizer(1)
		_, ourErr := ours.Decode(p)
		if (refErr == nil) != (ourErr == nil) || fmt.Sprint(refErr) != fmt.Sprint(ourErr) {
			t.Errorf("packet %d (% x): error %v, want %v", i, p.Payload, ourErr, refErr)
		}
	}
	if _, err := video.NewH264Depacketizer(2); err == nil {
		t.Error("packetization mode 2 accepted")
	}
}

// TestH264DepacketizerLostFragment: a fragment missing in the middle of
// a NAL unit is an error, as in rtph264.Decoder (the Assembler then drops
// the unit and resyncs).
func TestH264DepacketizerLostFragment(t *testing.T) {
	aus, err := assets.H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	pkts := packetsOf(t, aus[:1], 500, nil)
	if len(pkts) < 8 {
		t.Fatalf("%d packets: want a fragmented keyframe", len(pkts))
	}
	for i, p := range pkts {
		p.SequenceNumber = uint16(i)
	}
	d, _ := video.NewH264Depacketizer(1)
	var last error
	for i, p := range pkts {
		if i == 5 {
			continue // lost: a fragment in the middle of the IDR slice
		}
		if _, err := d.Decode(p); err != nil && !errors.Is(err, rtph264.ErrMorePacketsNeeded) {
			last = err
			break
		}
	}
	if last == nil {
		t.Fatal("no error for a missing fragment")
	}
}
