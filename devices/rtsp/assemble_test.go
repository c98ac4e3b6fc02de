package rtsp

import (
	"bytes"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/episoded/episoded/internal/h26x"
	"github.com/episoded/episoded/sample"
)

func TestAUStart(t *testing.T) {
	for _, tc := range []struct {
		name string
		hevc bool
		p    []byte
		want bool
	}{
		{"h264 sps", false, []byte{0x67, 0x42}, true},
		{"h264 pps", false, []byte{0x68, 0xce}, true},
		{"h264 aud", false, []byte{0x09, 0xf0}, true},
		{"h264 idr first slice", false, []byte{0x65, 0x88}, true},
		{"h264 p second slice", false, []byte{0x41, 0x7a}, false},
		{"h264 stap-a with sps", false, []byte{0x78, 0x00, 0x02, 0x67, 0x42}, true},
		{"h264 stap-a bad size", false, []byte{0x78, 0x00, 0x09, 0x67, 0x42}, false},
		{"h264 fu-a start of first slice", false, []byte{0x7c, 0x85, 0x88}, true},
		{"h264 fu-a middle", false, []byte{0x7c, 0x05, 0x88}, false},
		{"h264 fu-a start of second slice", false, []byte{0x7c, 0x85, 0x10}, false},
		{"h264 short", false, []byte{0x65}, false},
		{"h265 vps", true, []byte{0x40, 0x01, 0x0c}, true},
		{"h265 idr first slice", true, []byte{0x26, 0x01, 0xaf}, true},
		{"h265 trail second slice", true, []byte{0x02, 0x01, 0x2f}, false},
		{"h265 ap with vps", true, []byte{0x60, 0x01, 0x00, 0x03, 0x40, 0x01, 0x0c}, true},
		{"h265 fu start first slice", true, []byte{0x62, 0x01, 0x93, 0xaf}, true},
		{"h265 fu middle", true, []byte{0x62, 0x01, 0x13, 0xaf}, false},
	} {
		f := h26x.H264AUStart
		if tc.hevc {
			f = h265AUStart
		}
		if got := f(tc.p); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNTPConversion(t *testing.T) {
	for _, at := range []time.Time{t0, time.Date(2036, 2, 7, 6, 28, 15, 999999999, time.UTC), time.Unix(0, 1)} {
		if d := ntpToUnixNano(ntpTime(at)) - at.UnixNano(); d < -1 || d > 1 {
			t.Errorf("%v: off by %d ns", at, d)
		}
	}
	// 0.5 s is fraction 0x80000000 (RFC 3550), not 2147483648 ns.
	if got := ntpToUnixNano((ntpEpochOffset+10)<<32 | 0x80000000); got != 10_500_000_000 {
		t.Errorf("got %d", got)
	}
	m := &srMapping{ntp: 1e18, rtp: 0xFFFFFF00}
	if got := m.at(0x00000100, 90000); got != 1e18+int64(512*1e9)/90000 {
		t.Errorf("across wrap-around: %d", got)
	}
	if got := m.at(0xFFFFFE00, 90000); got != 1e18-int64(256*1e9)/90000 {
		t.Errorf("before the report: %d", got)
	}
}

// feed packetizes the clip's access units [from, to) into a.
func feed(t *testing.T, cl *clip, a *assembler, from, to int, mutate func(i int, pkts []*rtp.Packet) []*rtp.Packet) {
	for i := from; i < to; i++ {
		pkts := cl.packets(t, i, frameTS(i))
		if mutate != nil {
			pkts = mutate(i, pkts)
		}
		for _, p := range pkts {
			a.push(p)
		}
	}
}

func newTestAssembler(t *testing.T, cl *clip, emit func(unit) bool) (*assembler, *counters) {
	cnt := &counters{}
	cd := codecH264
	if cl.codec == sample.CodecH265 {
		cd = codecH265
	}
	dec := func() (auDecoder, error) {
		if cl.codec == sample.CodecH265 {
			return (&clip{}).h265Decoder(t)
		}
		return (&clip{}).h264Decoder(t)
	}
	return newAssembler(cd, cl.params, dec, cnt, emit), cnt
}

func TestAssemblerQueueFullDropsUntilKeyframe(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	var got []unit
	full := false
	a, cnt := newTestAssembler(t, cl, func(u unit) bool {
		if full {
			return false
		}
		got = append(got, u)
		return true
	})
	feed(t, cl, a, 0, 10, nil)
	full = true
	feed(t, cl, a, 10, 12, nil) // frame 10 hits a full queue; 11 then waits for a keyframe
	full = false
	feed(t, cl, a, 12, 61, nil)
	if len(got) != 10+31 {
		t.Fatalf("got %d units, want 41", len(got))
	}
	if got[0].params == nil || !got[0].key || got[0].disc {
		t.Errorf("first unit: key %v disc %v params %v", got[0].key, got[0].disc, got[0].params != nil)
	}
	u := got[10]
	if !u.key || !u.disc || u.dropped != 20 || u.lost != 0 || u.ts != frameTS(30) {
		t.Errorf("unit after the full queue: key %v disc %v dropped %d lost %d ts %d", u.key, u.disc, u.dropped, u.lost, u.ts)
	}
	if cnt.dropped.Load() != 20 || cnt.queueFull.Load() != 1 {
		t.Errorf("dropped %d queue full %d", cnt.dropped.Load(), cnt.queueFull.Load())
	}
	for k, u := range got {
		i := k
		if k >= 10 {
			i = k + 20
		}
		if !bytes.Equal(h26x.AnnexB(u.au), h26x.AnnexB(cl.aus[i])) {
			t.Fatalf("unit %d is not access unit %d", k, i)
		}
	}
}

func TestAssemblerDuplicatesAndJoinMidStream(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	var got []unit
	a, cnt := newTestAssembler(t, cl, func(u unit) bool { got = append(got, u); return true })
	// Join in the middle of frame 5 (its second packet): everything up to
	// the keyframe at 30 is dropped, not stored half-decodable.
	i5 := cl.multiPacketAU(t, 5)
	feed(t, cl, a, 0, i5+1, func(i int, pkts []*rtp.Packet) []*rtp.Packet {
		if i < i5 {
			return nil
		}
		return pkts[1:]
	})
	feed(t, cl, a, i5+1, 40, func(_ int, pkts []*rtp.Packet) []*rtp.Packet {
		return append(pkts, pkts[len(pkts)-1]) // a duplicate of the last packet
	})
	if len(got) != 10 || !got[0].key || got[0].ts != frameTS(30) {
		t.Fatalf("got %d units, first key %v", len(got), len(got) > 0 && got[0].key)
	}
	if got[0].dropped != uint32(30-i5) || got[0].lost != 0 || !got[0].disc {
		t.Errorf("first unit: dropped %d lost %d disc %v", got[0].dropped, got[0].lost, got[0].disc)
	}
	if cnt.lost.Load() != 0 || cnt.decodeErrors.Load() != 0 {
		t.Errorf("lost %d decode errors %d", cnt.lost.Load(), cnt.decodeErrors.Load())
	}
}

func TestAssemblerParameterSetChange(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	var got []unit
	a, _ := newTestAssembler(t, cl, func(u unit) bool { got = append(got, u); return true })
	feed(t, cl, a, 0, 31, func(i int, pkts []*rtp.Packet) []*rtp.Packet {
		if i != 30 {
			return pkts
		}
		// A new PPS in band at the second keyframe (same bytes, but one
		// more trailing byte makes it different).
		au := append([][]byte(nil), cl.aus[30]...)
		for k, n := range au {
			if n[0]&0x1f == 8 {
				au[k] = append(append([]byte(nil), n...), 0x80)
			}
		}
		p, err := cl.enc.Encode(au)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range p {
			x.Timestamp = frameTS(30)
		}
		return p
	})
	if len(got) != 31 {
		t.Fatalf("got %d units", len(got))
	}
	for k, u := range got {
		if (u.params != nil) != (k == 0 || k == 30) {
			t.Errorf("unit %d: params %v", k, u.params != nil)
		}
	}
	if !bytes.Equal(got[30].params[0], cl.params[0]) || bytes.Equal(got[30].params[1], cl.params[1]) {
		t.Errorf("new params not carried")
	}
}
