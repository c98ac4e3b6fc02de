package replay

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/pion/rtp"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/internal/video/videotest"
	"github.com/episoded/episoded/sample"
)

// An RTSP replay that starts in the middle of a GOP starts at the keyframe
// before it (pre-roll from the stored timeline), and that first access unit
// carries its parameter sets in band (SPS, PPS; VPS for H.265), although the
// stored keyframes have none: a gortsplib client can decode from its first
// access unit without relying on the SDP.
func TestReplayRTSPStartsOnKeyframe(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    *video.Codec
		gop4 bool // an ffmpeg clip with 4 s GOPs and B-frames instead of the shipped clip
	}{{"h264", video.H264, false}, {"h265", video.H265, false}, {"h264-bframes-gop4s", video.H264, true}} {
		c := tc.c
		t.Run(tc.name, func(t *testing.T) {
			var aus [][][]byte
			var pts []int64 // ms, in decode order; nil: no reordering
			var err error
			switch {
			case tc.gop4:
				cl := videotest.Encode(t, videotest.Options{Codec: c, GOP: 120, Secs: 10, BFrames: 2})
				aus, pts = cl.AUs, cl.PTS
			case c == video.H265:
				aus, err = assets.H265AccessUnits()
			default:
				aus, err = assets.H264AccessUnits()
			}
			if err != nil {
				t.Fatal(err)
			}
			// Decode times: the k-th smallest presentation time, shifted
			// to be no later than any presentation time.
			dts := make([]int64, len(aus))
			off := make([]int64, len(aus))
			for i := range aus {
				dts[i] = t0ms(i)
			}
			if pts != nil {
				sorted := slices.Clone(pts)
				slices.Sort(sorted)
				var shift int64
				for k := range pts {
					shift = max(shift, sorted[k]-pts[k])
				}
				for k := range pts {
					dts[k] = sorted[k] - shift
					off[k] = (pts[k] - dts[k]) * 1e6
				}
			}
			params := make([][]byte, c.NParams)
			var keys []int
			for i, au := range aus {
				if c.IsKeyframe(au) {
					keys = append(keys, i)
				}
				for _, n := range au {
					if k := c.ParamSlot(n); k >= 0 && params[k] == nil {
						params[k] = n
					}
				}
			}
			if len(keys) < 2 {
				t.Fatalf("clip keyframes at %v", keys)
			}
			st := openStore(t)
			t0 := time.Now().Add(-time.Hour).UnixNano()
			d := sample.Descriptor{Stream: "cell3/cam-" + string(c.Name), Kind: sample.KindVideo, Codec: c.Name, Device: "cam",
				Params: params, Since: t0}
			if _, err := st.PutDescriptor(d); err != nil {
				t.Fatal(err)
			}
			var stored []sample.Sample
			for i, au := range aus {
				var nalus [][]byte // parameter sets stripped: the descriptor has them
				for _, n := range au {
					if c.ParamSlot(n) < 0 {
						nalus = append(nalus, n)
					}
				}
				s := sample.Sample{Stream: d.Stream, Seq: uint64(i + 1), T: t0 + dts[i]*1e6, PTSOffset: off[i], Payload: video.AnnexB(nalus)}
				if c.IsKeyframe(au) {
					s.Flags = sample.Keyframe
				}
				stored = append(stored, s)
			}
			durable := make(chan error, 1)
			if err := st.Append(stored, func(err error) { durable <- err }); err != nil {
				t.Fatal(err)
			}
			if err := <-durable; err != nil {
				t.Fatal(err)
			}
			id := "0193a1b2-0000-7000-8000-0000000000" + fmt.Sprint(10+len(tc.name))
			if err := st.PutEpisode(episode.Episode{ID: id, Cell: "cell3", Start: t0, Stop: stored[len(stored)-1].T,
				Streams: []string{d.Stream}, State: episode.Closed}); err != nil {
				t.Fatal(err)
			}
			// Start half way into the second GOP.
			key := keys[1]
			mid := key + (keys[min(2, len(keys)-1)]-key)/2
			if len(keys) == 2 {
				mid = key + (len(aus)-key)/2
			}
			from := time.Duration(stored[mid].T - t0)
			want := len(aus) - key

			got, _ := replayToReader(t, st, id, Selection{From: from}, want)
			if len(got) != want {
				t.Fatalf("client got %d access units, want %d (from the keyframe at frame %d before the start at %d)", len(got), want, key, mid)
			}
			if !c.IsKeyframe(got[0]) || !c.HasParams(got[0]) {
				t.Fatalf("first access unit is not a keyframe carrying its parameter sets (keyframe %v)", c.IsKeyframe(got[0]))
			}
			for i, au := range got {
				if c.IsKeyframe(au) && !c.HasParams(au) {
					t.Errorf("keyframe %d without parameter sets", i)
				}
			}
		})
	}
}

// rtspReader is an independent RTSP reader (a gortsplib client over TCP)
// that collects the access units of a served stream and the parameter sets
// of its SDP.
type rtspReader struct {
	mu  sync.Mutex
	sdp [][]byte // H.264 SPS, PPS; H.265 VPS, SPS, PPS
	aus [][][]byte
}

// play connects to url, sets up its H.264 or H.265 media and plays it.
func (r *rtspReader) play(t *testing.T, url string) error {
	u, err := base.ParseURL(url)
	if err != nil {
		return err
	}
	tcp := gortsplib.TransportTCP
	cl := &gortsplib.Client{Scheme: u.Scheme, Host: u.Host, Transport: &tcp}
	if err := cl.Start2(); err != nil {
		return err
	}
	t.Cleanup(cl.Close)
	desc, _, err := cl.Describe(u)
	if err != nil {
		return err
	}
	medi := desc.Medias[0]
	forma := medi.Formats[0]
	var dec interface {
		Decode(*rtp.Packet) ([][]byte, error)
	}
	switch f := forma.(type) {
	case *format.H264:
		sps, pps := f.SafeParams()
		r.sdp = [][]byte{sps, pps}
		dec, err = f.CreateDecoder()
	case *format.H265:
		vps, sps, pps := f.SafeParams()
		r.sdp = [][]byte{vps, sps, pps}
		dec, err = f.CreateDecoder()
	default:
		return fmt.Errorf("format %T", forma)
	}
	if err != nil {
		return err
	}
	if _, err := cl.Setup(desc.BaseURL, medi, 0, 0); err != nil {
		return err
	}
	cl.OnPacketRTP(medi, forma, func(pkt *rtp.Packet) {
		if au, err := dec.Decode(pkt); err == nil {
			r.mu.Lock()
			r.aus = append(r.aus, au)
			r.mu.Unlock()
		}
	})
	_, err = cl.Play(nil)
	return err
}

// wait returns the access units received once there are n, or after d.
func (r *rtspReader) wait(n int, d time.Duration) [][][]byte {
	deadline := time.Now().Add(d)
	for {
		r.mu.Lock()
		k := len(r.aus)
		r.mu.Unlock()
		if k >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][][]byte(nil), r.aus...)
}

// t0ms is frame i's time in ms at 30 fps.
func t0ms(i int) int64 { return int64(i) * 1000 / 30 }

// replayToReader replays episode id from st over RTSP (a loopback
// devices/rtsp Server) to an rtspReader, and returns the access units it
// received once there are want (or after 20 s) and the SDP's parameter sets.
func replayToReader(t *testing.T, st Source, id string, sel Selection, want int) ([][][]byte, [][]byte) {
	t.Helper()
	srv, err := rtsp.NewServer(rtsp.ServerOptions{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var (
		r   rtspReader
		out *rtsp.OutStream
	)
	p, err := New(Options{
		Video: func(stream string, d sample.Descriptor) (VideoStream, error) {
			o, err := srv.AddStream(stream, d)
			out = o
			return o, err
		},
		BeforeStart: func(ctx context.Context, h Header) error {
			if err := r.play(t, out.URL()); err != nil {
				return err
			}
			return rtsp.WaitPlayed(ctx, out)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Run(context.Background(), StoreOpener(st, id, sel)); err != nil {
		t.Fatal(err)
	}
	return r.wait(want, 20*time.Second), r.sdp
}
