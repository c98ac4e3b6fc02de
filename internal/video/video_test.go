package video_test

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph265"
	"github.com/pion/rtp"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/internal/video"
)

// bframeClip is an ffmpeg-encoded clip with B-frames (testdata; made with
// ffmpeg -f lavfi -i testsrc2=size=160x120:rate=30 -t 2, libx264
// -profile:v main -bf 2 -g 30, or libx265 -x265-params bframes=3:keyint=30,
// then -c copy to Annex-B) and the presentation time in ms of each of its
// access units in decode order (ffprobe -show_entries packet=pts).
func bframeClip(t *testing.T, c *video.Codec) ([][][]byte, []int64) {
	t.Helper()
	name := "testdata/bframes.h264"
	if c == video.H265 {
		name = "testdata/bframes.h265"
	}
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	aus, err := assets.AccessUnits(b, c == video.H265)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(name + ".pts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var pts []int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, err := strconv.ParseInt(strings.Split(sc.Text(), ",")[0], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		pts = append(pts, v)
	}
	if len(pts) != len(aus) {
		t.Fatalf("%d access units, %d presentation times", len(aus), len(pts))
	}
	return aus, pts
}

type encoder interface {
	Encode([][]byte) ([]*rtp.Packet, error)
}

func newEncoder(t *testing.T, c *video.Codec) encoder {
	t.Helper()
	seq := uint16(65000) // wraps during the clip
	if c == video.H265 {
		e := &rtph265.Encoder{PayloadType: 96, InitialSequenceNumber: &seq}
		if err := e.Init(); err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := &rtph264.Encoder{PayloadType: 96, PacketizationMode: 1, InitialSequenceNumber: &seq}
	if err := e.Init(); err != nil {
		t.Fatal(err)
	}
	return e
}

// The assembler keeps decode order and gives every unit a presentation
// offset such that the decode times (PTS - offset) never go back, are never
// after the presentation time, and differ from it where B-frames are.
func TestAssemblerBFrames(t *testing.T) {
	for _, c := range []*video.Codec{video.H264, video.H265} {
		t.Run(string(c.Name), func(t *testing.T) {
			aus, pts := bframeClip(t, c)
			enc := newEncoder(t, c)
			var got []video.Unit
			var cnt video.Counters
			a := video.NewAssembler(c, nil, nil, &cnt, func(u video.Unit) bool { got = append(got, u); return true })
			base := uint32(0xFFFF0000) // RTP time wraps during the clip
			for i, au := range aus {
				pkts, err := enc.Encode(au)
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range pkts {
					p.Timestamp = base + uint32(pts[i]*90)
					a.Push(p)
				}
			}
			// The last unit is emitted when the next one starts; the
			// encoder marks the last packet, so all are out.
			if len(got) != len(aus) {
				t.Fatalf("%d units from %d access units (dropped %d)", len(got), len(aus), cnt.Dropped.Load())
			}
			var lastDTS int64 = -1 << 62
			reordered := 0
			for i, u := range got {
				if !bytes.Equal(video.AnnexB(u.AU), video.AnnexB(aus[i])) {
					t.Fatalf("unit %d is not access unit %d: decode order lost", i, i)
				}
				if u.PTSOffset < 0 {
					t.Fatalf("unit %d: negative offset %d", i, u.PTSOffset)
				}
				p := pts[i] * 1e6
				dts := p - u.PTSOffset
				if dts < lastDTS {
					t.Fatalf("unit %d: decode time %d before the previous %d", i, dts, lastDTS)
				}
				lastDTS = dts
				if u.PTSOffset > 0 {
					reordered++
				}
			}
			if reordered == 0 {
				t.Fatal("no unit has a presentation offset in a stream with B-frames")
			}
			if cnt.Lost.Load() != 0 || cnt.DecodeErrors.Load() != 0 {
				t.Fatalf("lost %d, decode errors %d", cnt.Lost.Load(), cnt.DecodeErrors.Load())
			}
		})
	}
}

// Without B-frames every offset is 0.
func TestAssemblerNoReorderNoOffset(t *testing.T) {
	aus, err := assets.H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	enc := newEncoder(t, video.H264)
	var cnt video.Counters
	n := 0
	a := video.NewAssembler(video.H264, nil, nil, &cnt, func(u video.Unit) bool {
		n++
		if u.PTSOffset != 0 {
			t.Errorf("unit %d: offset %d in a stream without B-frames", n, u.PTSOffset)
		}
		return true
	})
	for i, au := range aus {
		pkts, _ := enc.Encode(au)
		for _, p := range pkts {
			p.Timestamp = uint32(i * 3000)
			a.Push(p)
		}
	}
	if n != len(aus) {
		t.Fatalf("%d units of %d", n, len(aus))
	}
}

// The loss rule: a lost packet discards its unit and everything up to the
// next keyframe, which comes out marked, with the counts.
func TestAssemblerLossRule(t *testing.T) {
	for _, c := range []*video.Codec{video.H264, video.H265} {
		t.Run(string(c.Name), func(t *testing.T) {
			var aus [][][]byte
			var err error
			if c == video.H265 {
				aus, err = assets.H265AccessUnits()
			} else {
				aus, err = assets.H264AccessUnits()
			}
			if err != nil {
				t.Fatal(err)
			}
			keys := []int{}
			for i, au := range aus {
				if c.IsKeyframe(au) {
					keys = append(keys, i)
				}
			}
			if len(keys) < 2 || keys[0] != 0 {
				t.Fatalf("clip keyframes at %v", keys)
			}
			enc := newEncoder(t, c)
			var got []video.Unit
			var cnt video.Counters
			a := video.NewAssembler(c, nil, nil, &cnt, func(u video.Unit) bool { got = append(got, u); return true })
			lose := 3 // a packet of access unit 3 is lost
			for i, au := range aus {
				pkts, _ := enc.Encode(au)
				for k, p := range pkts {
					p.Timestamp = uint32(i * 3000)
					if i == lose && k == 0 {
						continue
					}
					a.Push(p)
				}
			}
			if len(got) != lose+len(aus)-keys[1] {
				t.Fatalf("%d units, want %d", len(got), lose+len(aus)-keys[1])
			}
			u := got[lose]
			if !u.Key || !u.Disc || u.Lost != 1 || u.Dropped != uint32(keys[1]-lose) {
				t.Fatalf("unit after the loss: key %v disc %v lost %d dropped %d (keyframe at %d)", u.Key, u.Disc, u.Lost, u.Dropped, keys[1])
			}
			if got[0].Params == nil || !got[0].Key {
				t.Fatal("first unit is not a described keyframe")
			}
			if !c.HasParams(c.WithParams(got[0].AU, got[0].Params, true)) {
				t.Fatal("keyframe with the stream's parameter sets lacks some")
			}
		})
	}
}

func TestWithParams(t *testing.T) {
	sps, pps, aud := []byte{0x67, 1}, []byte{0x68, 2}, []byte{0x09, 0xf0}
	idr, p := []byte{0x65, 0x88}, []byte{0x41, 0x9a}
	params := [][]byte{sps, pps}
	eq := func(a, b [][]byte) bool { return bytes.Equal(video.AnnexB(a), video.AnnexB(b)) }
	for _, tc := range []struct {
		name string
		au   [][]byte
		key  bool
		want [][]byte
	}{
		{"idr without params", [][]byte{idr}, false, [][]byte{sps, pps, idr}},
		{"flagged keyframe", [][]byte{idr}, true, [][]byte{sps, pps, idr}},
		{"after the AUD", [][]byte{aud, idr}, false, [][]byte{aud, sps, pps, idr}},
		{"in-band kept", [][]byte{{0x67, 9}, {0x68, 9}, idr}, false, [][]byte{{0x67, 9}, {0x68, 9}, idr}},
		{"partial in-band completed", [][]byte{{0x68, 9}, idr}, false, [][]byte{sps, {0x68, 9}, idr}},
		{"params after the slice moved", [][]byte{idr, sps, pps}, false, [][]byte{sps, pps, idr}},
		{"non-keyframe untouched", [][]byte{p}, false, [][]byte{p}},
	} {
		if got := video.H264.WithParams(tc.au, params, tc.key); !eq(got, tc.want) {
			t.Errorf("%s: got %x, want %x", tc.name, got, tc.want)
		}
	}
	vps, hsps, hpps, irap := []byte{0x40, 1}, []byte{0x42, 1}, []byte{0x44, 1}, []byte{0x26, 1, 0xaf}
	got := video.H265.WithParams([][]byte{irap}, [][]byte{vps, hsps, hpps}, false)
	if !eq(got, [][]byte{vps, hsps, hpps, irap}) || !video.H265.HasParams(got) {
		t.Errorf("h265: got %x", got)
	}
}

func TestSplitAU(t *testing.T) {
	au := [][]byte{{0x67, 1, 2}, {0x65, 0, 0, 3}}
	for name, b := range map[string][]byte{
		"annex-b": video.AnnexB(au),
		"avcc":    {0, 0, 0, 3, 0x67, 1, 2, 0, 0, 0, 4, 0x65, 0, 0, 3},
	} {
		got, ok := video.SplitAU(b)
		if !ok || len(got) != 2 || !bytes.Equal(got[1], au[1]) {
			t.Errorf("%s: got %x %v", name, got, ok)
		}
	}
	if _, ok := video.SplitAU([]byte{0x65, 1, 2}); ok {
		t.Error("garbage parsed")
	}
}

func TestAUStart(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    *video.Codec
		p    []byte
		want bool
	}{
		{"h264 sps", video.H264, []byte{0x67, 0x42}, true},
		{"h264 aud", video.H264, []byte{0x09, 0xf0}, true},
		{"h264 p second slice", video.H264, []byte{0x41, 0x7a}, false},
		{"h264 fu-a start of first slice", video.H264, []byte{0x7c, 0x85, 0x88}, true},
		{"h265 vps", video.H265, []byte{0x40, 0x01, 0x0c}, true},
		{"h265 idr first slice", video.H265, []byte{0x26, 0x01, 0xaf}, true},
		{"h265 trail second slice", video.H265, []byte{0x02, 0x01, 0x2f}, false},
		{"h265 ap with vps", video.H265, []byte{0x60, 0x01, 0x00, 0x03, 0x40, 0x01, 0x0c}, true},
		{"h265 fu start first slice", video.H265, []byte{0x62, 0x01, 0x93, 0xaf}, true},
		{"h265 fu middle", video.H265, []byte{0x62, 0x01, 0x13, 0xaf}, false},
	} {
		if got := tc.c.AUStart(tc.p); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
