package assets

import (
	"bytes"
	"testing"

	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h265"
)

func TestH264AccessUnits(t *testing.T) {
	aus, err := H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	if len(aus) != Frames {
		t.Fatalf("got %d access units, want %d", len(aus), Frames)
	}
	for i, au := range aus {
		if got, want := h264.IsRandomAccess(au), i%GOP == 0; got != want {
			t.Errorf("au %d: random access %v, want %v", i, got, want)
		}
		if i%GOP == 0 {
			types := map[h264.NALUType]bool{}
			for _, n := range au {
				types[h264.NALUType(n[0]&0x1f)] = true
			}
			if !types[h264.NALUTypeSPS] || !types[h264.NALUTypePPS] {
				t.Errorf("keyframe %d lacks SPS/PPS: %v", i, types)
			}
		}
	}
	var sps h264.SPS
	if err := sps.Unmarshal(aus[0][0]); err != nil {
		t.Fatalf("first NALU is not an SPS: %v", err)
	}
	if sps.Width() != 320 || sps.Height() != 240 || sps.ProfileIdc != 66 {
		t.Fatalf("sps: %dx%d profile %d", sps.Width(), sps.Height(), sps.ProfileIdc)
	}
	// Re-joining the NAL units with start codes gives back the stream's
	// NAL unit payloads: nothing is lost or duplicated by the splitter.
	var joined []byte
	for _, au := range aus {
		for _, n := range au {
			joined = append(joined, 0, 0, 0, 1)
			joined = append(joined, n...)
		}
	}
	again, err := AccessUnits(joined, false)
	if err != nil || len(again) != len(aus) {
		t.Fatalf("resplit: %d aus, %v", len(again), err)
	}
	if n := bytes.Count(H264AnnexB(), []byte{0, 0, 1}); n != bytes.Count(joined, []byte{0, 0, 1}) {
		t.Fatalf("start codes: clip %d, rejoined %d", n, bytes.Count(joined, []byte{0, 0, 1}))
	}
	// Fresh slices on every call.
	aus[0][0][0] = 0
	again2, _ := H264AccessUnits()
	if again2[0][0][0] == 0 {
		t.Fatal("H264AccessUnits returned shared memory")
	}
}

func TestH265AccessUnits(t *testing.T) {
	aus, err := H265AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	if len(aus) != Frames {
		t.Fatalf("got %d access units, want %d", len(aus), Frames)
	}
	for i, au := range aus {
		if got, want := h265.IsRandomAccess(au), i%GOP == 0; got != want {
			t.Errorf("au %d: random access %v, want %v", i, got, want)
		}
	}
	var sps h265.SPS
	found := false
	for _, n := range aus[0] {
		if h265.NALUType((n[0]>>1)&0x3f) == h265.NALUType_SPS_NUT {
			if err := sps.Unmarshal(n); err != nil {
				t.Fatal(err)
			}
			found = true
		}
	}
	if !found || sps.Width() != 320 || sps.Height() != 240 {
		t.Fatalf("sps found=%v %dx%d", found, sps.Width(), sps.Height())
	}
}

func TestAccessUnitsEmpty(t *testing.T) {
	if _, err := AccessUnits([]byte{1, 2, 3, 4}, false); err != ErrNoNALUs {
		t.Fatalf("err = %v", err)
	}
}
