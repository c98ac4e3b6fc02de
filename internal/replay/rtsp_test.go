package replay

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// rtspRecording is what an independent gortsplib client received.
type rtspRecording struct {
	mu   sync.Mutex
	sps  []byte
	pps  []byte
	aus  [][][]byte
	ts   []uint32
	srs  []*rtcp.SenderReport
	ssrc []uint32
}

// playRTSP connects a gortsplib client (outside the replay code) to url and
// records every access unit and sender report until the server ends the
// session.
func playRTSP(t *testing.T, url string) (*rtspRecording, <-chan error) {
	t.Helper()
	u, err := base.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	tcp := gortsplib.TransportTCP
	c := &gortsplib.Client{Scheme: u.Scheme, Host: u.Host, Transport: &tcp}
	if err := c.Start2(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	desc, _, err := c.Describe(u)
	if err != nil {
		t.Fatalf("describe %s: %v", url, err)
	}
	var forma *format.H264
	medi := desc.FindFormat(&forma)
	if medi == nil {
		t.Fatalf("no H.264 in the SDP of %s", url)
	}
	rec := &rtspRecording{}
	rec.sps, rec.pps = forma.SafeParams()
	dec, err := forma.CreateDecoder()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Setup(desc.BaseURL, medi, 0, 0); err != nil {
		t.Fatal(err)
	}
	c.OnPacketRTP(medi, forma, func(pkt *rtp.Packet) {
		au, err := dec.Decode(pkt)
		if err != nil {
			return // not the last packet of a unit
		}
		rec.mu.Lock()
		rec.aus = append(rec.aus, au)
		rec.ts = append(rec.ts, pkt.Timestamp)
		rec.ssrc = append(rec.ssrc, pkt.SSRC)
		rec.mu.Unlock()
	})
	c.OnPacketRTCP(medi, func(p rtcp.Packet) {
		if sr, ok := p.(*rtcp.SenderReport); ok {
			rec.mu.Lock()
			rec.srs = append(rec.srs, sr)
			rec.mu.Unlock()
		}
	})
	if _, err := c.Play(nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	return rec, done
}

// ntpToUnix decodes an RFC 3550 NTP timestamp, independently of the code
// under test.
func ntpToUnix(v uint64) int64 {
	secs := int64(v>>32) - 2208988800
	return secs*1e9 + int64((v&0xffffffff)*1e9>>32)
}

// sliceNALUs keeps the coded slices (types 1 and 5) of a list of NAL
// units.
func sliceNALUs(nalus [][]byte) [][]byte {
	var out [][]byte
	for _, n := range nalus {
		if t := n[0] & 0x1f; t == 1 || t == 5 {
			out = append(out, n)
		}
	}
	return out
}

// Replay over RTSP: an independent gortsplib client and ffmpeg record the
// camera; the gortsplib client's access units are the stored ones NAL unit
// for NAL unit, its sender reports map each RTP timestamp back to the
// stored T, and ffmpeg's recording holds the same coded slices.
func TestReplayRTSP(t *testing.T) {
	needBin(t, "ffmpeg as an independent RTSP client", "ffmpeg")
	st := openStore(t)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	te := buildEpisode(t, st, epID, t0, 3*time.Second, episode.Closed)

	srv, err := rtsp.NewServer(rtsp.ServerOptions{Addr: "127.0.0.1:0", SRPeriod: 500 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	url := srv.URL(sCam)
	if want := "rtsp://" + srv.Addr() + "/cell1/cam1"; url != want {
		t.Fatalf("url %s, want %s", url, want)
	}
	out := filepath.Join(t.TempDir(), "out.h264")
	var outs []*rtsp.OutStream
	var (
		rec    *rtspRecording
		recEnd <-chan error
		ff     *exec.Cmd
		ffDone = make(chan error, 1)
	)
	p, err := New(Options{
		Logger: testLogger(t),
		Video: func(stream string, d sample.Descriptor) (VideoStream, error) {
			o, err := srv.AddStream(stream, d)
			if err == nil {
				outs = append(outs, o)
			}
			return o, err
		},
		BeforeStart: func(ctx context.Context, h Header) error {
			if len(outs) != 1 {
				return fmt.Errorf("%d video streams, want 1", len(outs))
			}
			ff = exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-rtsp_transport", "tcp",
				"-i", url, "-c", "copy", "-f", "h264", "-y", out)
			ff.Stderr = os.Stderr
			if err := ff.Start(); err != nil {
				return err
			}
			go func() { ffDone <- ff.Wait() }()
			rec, recEnd = playRTSP(t, url)
			deadline := time.Now().Add(20 * time.Second)
			for outs[0].Readers() < 2 {
				if time.Now().After(deadline) {
					return fmt.Errorf("only %d RTSP readers after 20s", outs[0].Readers())
				}
				time.Sleep(10 * time.Millisecond)
			}
			return rtsp.WaitPlayed(ctx, outs...)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := p.Run(context.Background(), StoreOpener(st, epID, Selection{Streams: "cell1/cam*"}))
	if err != nil {
		t.Fatal(err)
	}
	stats := outs[0].Stats()
	srv.Close() // lingers, then ends the sessions: both clients see the end
	select {
	case <-recEnd:
	case <-time.After(10 * time.Second):
		t.Error("gortsplib client did not see the end of the session")
	}
	select {
	case err := <-ffDone:
		if err != nil {
			t.Logf("ffmpeg exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		_ = ff.Process.Signal(syscall.SIGINT)
		<-ffDone
	}

	stored := te.samples[sCam]
	if cam := sum.Streams[0]; cam.Stream != sCam || cam.Sink != SinkRTSP || cam.Sent != uint64(len(stored)) || cam.Target != url {
		t.Errorf("summary %+v", cam)
	}
	if stats.AccessUnits != uint64(len(stored)) || stats.SenderReports < 3 {
		t.Errorf("server stats %+v", stats)
	}

	// The gortsplib client: identical access units, SDP parameter sets,
	// and RTP time mapped by the sender reports to the stored T.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if string(rec.sps) != string(te.params[0]) || string(rec.pps) != string(te.params[1]) {
		t.Errorf("SDP parameter sets differ from the descriptor's")
	}
	if len(rec.aus) != len(stored) {
		t.Fatalf("gortsplib client got %d access units, want %d", len(rec.aus), len(stored))
	}
	for i, s := range stored {
		var want h264.AnnexB
		if err := want.Unmarshal(s.Payload); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(rec.aus[i], [][]byte(want)) {
			t.Fatalf("access unit %d differs: %d NAL units, want %d", i, len(rec.aus[i]), len(want))
		}
		// RTP time is the media time T − From in 90 kHz ticks, rounded.
		ticks := func(ns int64) int64 { return (ns*9 + 50_000) / 100_000 }
		if d, want := rec.ts[i]-rec.ts[0], ticks(s.T-t0)-ticks(stored[0].T-t0); int64(d) != want {
			t.Errorf("access unit %d: RTP time +%d ticks, want +%d", i, d, want)
		}
	}
	if len(rec.srs) < 3 {
		t.Fatalf("%d sender reports, want at least 3", len(rec.srs))
	}
	for _, sr := range rec.srs {
		if sr.SSRC != rec.ssrc[0] {
			t.Errorf("sender report for SSRC %08x, packets have %08x", sr.SSRC, rec.ssrc[0])
		}
		// Map every access unit through this report; each lands on its T
		// within half a 90 kHz tick (5.6 µs) each way.
		for i, s := range stored {
			got := ntpToUnix(sr.NTPTime) + int64(int32(rec.ts[i]-sr.RTPTime))*1e9/90000
			if diff := got - s.T; diff < -11_200 || diff > 11_200 {
				t.Fatalf("access unit %d maps to %d through SR (rtp %d), stored T %d: off by %s", i, got, sr.RTPTime, s.T, time.Duration(diff))
			}
		}
	}

	// ffmpeg: the same coded slices in the same order (ffmpeg may insert
	// or repeat parameter sets).
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("ffmpeg wrote nothing: %v", err)
	}
	got := sliceNALUs(assets.SplitAnnexB(b))
	var want [][]byte
	for _, s := range stored {
		want = append(want, sliceNALUs(assets.SplitAnnexB(s.Payload))...)
	}
	if len(got) != len(want) {
		t.Fatalf("ffmpeg recorded %d slices, want %d", len(got), len(want))
	}
	for i := range want {
		if string(got[i]) != string(want[i]) {
			t.Fatalf("ffmpeg slice %d differs", i)
		}
	}
	tm := sum.Overall()
	t.Logf("%d access units to 2 readers; %d sender reports; send timing error p50 %.3f ms p99 %.3f ms",
		len(stored), stats.SenderReports, tm.P50, tm.P99)
}

// H.265: the SDP carries the descriptor's VPS, SPS and PPS, and a
// gortsplib client receives the stored access units unchanged.
func TestReplayRTSPH265(t *testing.T) {
	aus, err := assets.H265AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	var vps, sps, pps []byte
	for _, au := range aus {
		for _, n := range au {
			switch (n[0] >> 1) & 0x3f {
			case 32:
				vps = cmpOr(vps, n)
			case 33:
				sps = cmpOr(sps, n)
			case 34:
				pps = cmpOr(pps, n)
			}
		}
	}
	st := openStore(t)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	d := sample.Descriptor{Stream: "cell2/cam-h265", Kind: sample.KindVideo, Codec: sample.CodecH265, Device: "cam",
		Params: [][]byte{vps, sps, pps}, Since: t0}
	if _, err := st.PutDescriptor(d); err != nil {
		t.Fatal(err)
	}
	n := 45
	var stored []sample.Sample
	for i := range n {
		smp := sample.Sample{Stream: d.Stream, Seq: uint64(i + 1), T: t0 + int64(i)*int64(time.Second)/30, Payload: annexB(aus[i])}
		if video.H265.IsKeyframe(aus[i]) {
			smp.Flags = sample.Keyframe
		}
		stored = append(stored, smp)
	}
	durable := make(chan error, 1)
	if err := st.Append(stored, func(err error) { durable <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-durable; err != nil {
		t.Fatal(err)
	}
	if err := st.PutEpisode(episode.Episode{ID: epID, Cell: "cell2", Start: t0, Stop: t0 + int64(1500*time.Millisecond),
		Streams: []string{d.Stream}, State: episode.Closed}); err != nil {
		t.Fatal(err)
	}
	aus265, sdp := replayToReader(t, st, epID, Selection{}, n)
	if string(sdp[0]) != string(vps) || string(sdp[1]) != string(sps) || string(sdp[2]) != string(pps) {
		t.Error("SDP parameter sets differ from the descriptor's")
	}
	if len(aus265) != n {
		t.Fatalf("client got %d access units, want %d", len(aus265), n)
	}
	for i := range n {
		if !reflect.DeepEqual(aus265[i], aus[i]) {
			t.Fatalf("access unit %d differs", i)
		}
	}
}

func cmpOr(cur, n []byte) []byte {
	if cur != nil {
		return cur
	}
	return n
}
