package rtsp

import (
	"bytes"
	"testing"

	"github.com/pion/rtp"

	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// feed packetizes the clip's access units [from, to) into a.
func feed(t *testing.T, cl *clip, a *video.Assembler, from, to int, mutate func(i int, pkts []*rtp.Packet) []*rtp.Packet) {
	for i := from; i < to; i++ {
		pkts := cl.packets(t, i, frameTS(i))
		if mutate != nil {
			pkts = mutate(i, pkts)
		}
		for _, p := range pkts {
			a.Push(p)
		}
	}
}

func newTestAssembler(t *testing.T, cl *clip, emit func(video.Unit) bool) (*video.Assembler, *video.Counters) {
	cnt := &video.Counters{}
	cd := video.CodecOf(cl.codec)
	dec := func() (video.Depacketizer, error) {
		if cl.codec == sample.CodecH265 {
			return (&clip{}).h265Decoder(t)
		}
		return (&clip{}).h264Decoder(t)
	}
	return video.NewAssembler(cd, cl.params, dec, cnt, emit), cnt
}

func TestAssemblerQueueFullDropsUntilKeyframe(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	var got []video.Unit
	full := false
	a, cnt := newTestAssembler(t, cl, func(u video.Unit) bool {
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
	if got[0].Params == nil || !got[0].Key || got[0].Disc {
		t.Errorf("first unit: key %v disc %v params %v", got[0].Key, got[0].Disc, got[0].Params != nil)
	}
	u := got[10]
	if !u.Key || !u.Disc || u.Dropped != 20 || u.Lost != 0 || u.TS != frameTS(30) {
		t.Errorf("unit after the full queue: key %v disc %v dropped %d lost %d ts %d", u.Key, u.Disc, u.Dropped, u.Lost, u.TS)
	}
	if cnt.Dropped.Load() != 20 || cnt.QueueFull.Load() != 1 {
		t.Errorf("dropped %d queue full %d", cnt.Dropped.Load(), cnt.QueueFull.Load())
	}
	for k, u := range got {
		i := k
		if k >= 10 {
			i = k + 20
		}
		if !bytes.Equal(video.AnnexB(u.AU), video.AnnexB(cl.aus[i])) {
			t.Fatalf("unit %d is not access unit %d", k, i)
		}
	}
}

func TestAssemblerDuplicatesAndJoinMidStream(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	var got []video.Unit
	a, cnt := newTestAssembler(t, cl, func(u video.Unit) bool { got = append(got, u); return true })
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
	if len(got) != 10 || !got[0].Key || got[0].TS != frameTS(30) {
		t.Fatalf("got %d units, first key %v", len(got), len(got) > 0 && got[0].Key)
	}
	if got[0].Dropped != uint32(30-i5) || got[0].Lost != 0 || !got[0].Disc {
		t.Errorf("first unit: dropped %d lost %d disc %v", got[0].Dropped, got[0].Lost, got[0].Disc)
	}
	if cnt.Lost.Load() != 0 || cnt.DecodeErrors.Load() != 0 {
		t.Errorf("lost %d decode errors %d", cnt.Lost.Load(), cnt.DecodeErrors.Load())
	}
}

func TestAssemblerParameterSetChange(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	var got []video.Unit
	a, _ := newTestAssembler(t, cl, func(u video.Unit) bool { got = append(got, u); return true })
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
		if (u.Params != nil) != (k == 0 || k == 30) {
			t.Errorf("unit %d: params %v", k, u.Params != nil)
		}
	}
	if !bytes.Equal(got[30].Params[0], cl.params[0]) || bytes.Equal(got[30].Params[1], cl.params[1]) {
		t.Errorf("new params not carried")
	}
}
