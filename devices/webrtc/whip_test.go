package webrtc

import (
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// publisher is a pion WHIP publisher that sends the test clip with its
// own RTP timestamps and RTCP sender reports.
type publisher struct {
	t     testing.TB
	pc    *webrtc.PeerConnection
	track *webrtc.TrackLocalStaticRTP
	ssrc  uint32
	loc   string
	pz    rtp.Packetizer
	base  uint32    // RTP timestamp of frame 0
	ntp0  time.Time // device time of frame 0
	plis  atomic.Int64
	nacks atomic.Int64
	// history keeps sent packets by sequence number, to answer NACKs
	// when retransmit is set.
	mu         sync.Mutex
	history    map[uint16]*rtp.Packet
	retransmit bool
}

func newPublisher(t testing.TB, url string, ntp0 time.Time) *publisher {
	t.Helper()
	pc, err := peerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	track, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264, ClockRate: 90000}, "video", "pub")
	if err != nil {
		t.Fatal(err)
	}
	sender, err := pc.AddTransceiverFromTrack(track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		t.Fatal(err)
	}
	// base wraps during the clip. Retransmission on NACK is on, as in
	// browsers, so a rare loopback drop under load is recovered; packets a
	// test withholds are not in the history and stay lost.
	p := &publisher{t: t, pc: pc, track: track, base: 0xfffff000, ntp0: ntp0, retransmit: true}
	go func() { // read RTCP, counting keyframe requests
		for {
			pkts, _, err := sender.Sender().ReadRTCP()
			if err != nil {
				return
			}
			for _, pk := range pkts {
				switch pk := pk.(type) {
				case *rtcp.PictureLossIndication:
					p.plis.Add(1)
				case *rtcp.TransportLayerNack:
					p.nacks.Add(1)
					p.resend(pk)
				}
			}
		}
	}()
	p.loc = negotiate(t, pc, url)
	waitConnected(t, pc)
	p.ssrc = uint32(sender.Sender().GetParameters().Encodings[0].SSRC)
	p.pz = rtp.NewPacketizer(1200, 96, p.ssrc, &codecs.H264Payloader{}, rtp.NewRandomSequencer(), 90000)
	return p
}

// ntpTime converts t to a 32.32 NTP timestamp.
func ntpTime(t time.Time) uint64 {
	return video.UnixNanoToNTP(t.UnixNano())
}

// rtpTS is frame i's RTP timestamp; devT its device time.
func (p *publisher) rtpTS(i int) uint32   { return p.base + uint32(i*3000) }
func (p *publisher) devT(i int) time.Time { return p.ntp0.Add(time.Duration(i) * time.Second / 30) }
func (p *publisher) sendSR(i int) {
	p.t.Helper()
	if err := p.pc.WriteRTCP([]rtcp.Packet{&rtcp.SenderReport{SSRC: p.ssrc, NTPTime: ntpTime(p.devT(i)), RTPTime: p.rtpTS(i)}}); err != nil {
		p.t.Fatal(err)
	}
}

// packets packetizes frame i (Annex-B) with pion's H.264 payloader.
func (p *publisher) packets(i int, au [][]byte) []*rtp.Packet {
	pkts := p.pz.Packetize(video.AnnexB(au), 3000)
	for _, pk := range pkts {
		pk.Timestamp = p.rtpTS(i)
	}
	return pkts
}

// resend answers a NACK from the history, if retransmit is on.
func (p *publisher) resend(n *rtcp.TransportLayerNack) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.retransmit {
		return
	}
	for _, pair := range n.Nacks {
		for _, seq := range pair.PacketList() {
			if pk := p.history[seq]; pk != nil {
				_ = p.track.WriteRTP(pk)
			}
		}
	}
}

// remember puts packets in the history without sending them.
func (p *publisher) remember(pkts []*rtp.Packet) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.history == nil {
		p.history = map[uint16]*rtp.Packet{}
	}
	for _, pk := range pkts {
		p.history[pk.SequenceNumber] = pk
	}
}

func (p *publisher) write(pkts []*rtp.Packet) {
	p.t.Helper()
	p.remember(pkts)
	for _, pk := range pkts {
		if err := p.track.WriteRTP(pk); err != nil {
			p.t.Fatal(err)
		}
	}
}

var whipBase = sample.Descriptor{Stream: "cell1/cam-whip", Device: "cam-whip", Clock: sample.ClockDevice, Latency: int64(40 * time.Millisecond)}

// The recorded samples match what the publisher sent: same access units
// byte for byte (Annex-B), in order, first a keyframe, SrcT from the
// sender reports within 1 ms, parameter sets in the descriptor.
func TestWHIPRecordsClip(t *testing.T) {
	ts := startServer(t, Options{}, nil, nil, whipBase)
	// A device clock one hour ahead of the gateway, so SrcT cannot be
	// mistaken for arrival time.
	ntp0 := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	p := newPublisher(t, ts.url+"/whip/"+whipBase.Stream, ntp0)

	// Send sender reports until the server has one, before any RTP.
	waitFor(t, 5*time.Second, "a sender report at the server", func() bool {
		p.sendSR(0)
		time.Sleep(20 * time.Millisecond) // pacing: one report per 20 ms until the server has one
		return ts.Stats().WHIP[0].SenderReports > 0
	})

	aus := clipAUs(t)
	for i, au := range aus {
		if i%30 == 15 {
			p.sendSR(i)
		}
		p.write(p.packets(i, au))
		time.Sleep(3 * time.Millisecond) // pacing, like a camera
	}
	waitFor(t, 10*time.Second, "all frames in the sink", func() bool { return ts.sink.count() >= len(aus) })

	descs, got := ts.sink.snapshot()
	if len(got) != len(aus) {
		t.Fatalf("recorded %d samples, want %d", len(got), len(aus))
	}
	for i, s := range got {
		// pion's payloader drops AUD and filler NAL units; the clip has none.
		want := video.AnnexB(stripNAL(aus[i], 9, 12))
		if !bytes.Equal(s.Payload, want) {
			t.Fatalf("sample %d: payload differs (%d bytes, NAL %v; want %d bytes, NAL %v)", i,
				len(s.Payload), nalTypes(s.Payload), len(want), nalTypes(want))
		}
		if s.Stream != whipBase.Stream {
			t.Fatalf("sample %d: stream %q", i, s.Stream)
		}
		if got, want := s.Flags.Has(sample.Keyframe), isKey(aus[i]); got != want {
			t.Fatalf("sample %d: keyframe flag %v, want %v", i, got, want)
		}
		if s.Flags.Has(sample.Discontinuity) || s.Lost != 0 || s.Dropped != 0 {
			t.Fatalf("sample %d: unexpected loss marks %+v", i, s.Flags)
		}
		if d := time.Duration(s.SrcT - p.devT(i).UnixNano()); d > time.Millisecond || d < -time.Millisecond {
			t.Fatalf("sample %d: SrcT off by %v from the sender report's clock", i, d)
		}
		if s.RecvT == 0 || s.RecvT > time.Now().UnixNano() {
			t.Fatalf("sample %d: RecvT %d", i, s.RecvT)
		}
	}
	if !got[0].Flags.Has(sample.Keyframe) {
		t.Fatal("first sample is not a keyframe")
	}
	if len(descs) == 0 {
		t.Fatal("no Describe before the samples")
	}
	d := descs[0]
	params := clipParams(t)
	if d.Stream != whipBase.Stream || d.Device != whipBase.Device || d.Kind != sample.KindVideo ||
		d.Codec != sample.CodecH264 || d.Clock != sample.ClockDevice || d.Latency != whipBase.Latency ||
		len(d.Params) != 2 || !bytes.Equal(d.Params[0], params[0]) || !bytes.Equal(d.Params[1], params[1]) {
		t.Fatalf("descriptor %+v", d)
	}
	st := ts.Stats().WHIP[0]
	if !st.Publishing || st.Frames != uint64(len(aus)) || st.Keyframes != 4 || st.LostPackets != 0 {
		t.Fatalf("stats %+v", st)
	}

	// DELETE ends the session; the stream takes a new publisher, whose
	// first sample is a keyframe marked as a discontinuity.
	if code, body, _ := do(t, http.MethodDelete, ts.url+p.loc, "", ""); code != http.StatusOK {
		t.Fatalf("DELETE %s = %d: %s", p.loc, code, body)
	}
	if st := ts.Stats(); st.WHIP[0].Publishing || len(st.Sessions) != 0 {
		t.Fatalf("after DELETE: %+v", st)
	}
	if code, _, _ := do(t, http.MethodDelete, ts.url+p.loc, "", ""); code != http.StatusNotFound {
		t.Fatalf("second DELETE = %d, want 404", code)
	}
	p2 := newPublisher(t, ts.url+"/whip/"+whipBase.Stream, ntp0)
	waitFor(t, 5*time.Second, "a sender report from the second publisher", func() bool {
		p2.sendSR(0)
		time.Sleep(20 * time.Millisecond) // pacing: one report per 20 ms until the server has one
		return ts.Stats().WHIP[0].SenderReports > 1
	})
	for i := 30; i < 35; i++ {
		p2.write(p2.packets(i, aus[i]))
	}
	waitFor(t, 10*time.Second, "frames of the second session", func() bool { return ts.sink.count() >= len(aus)+5 })
	_, got = ts.sink.snapshot()
	first := got[len(aus)]
	if !first.Flags.Has(sample.Keyframe) || !first.Flags.Has(sample.Discontinuity) {
		t.Fatalf("first sample of the second session has flags %v, want keyframe and discontinuity", first.Flags)
	}
}

// Loss accounting: a lost packet in the middle of a group drops the rest
// of the group; the next keyframe carries Discontinuity, Lost and Dropped.
func TestWHIPLoss(t *testing.T) {
	ts := startServer(t, Options{}, nil, nil, whipBase)
	p := newPublisher(t, ts.url+"/whip/"+whipBase.Stream, time.Now())
	aus := clipAUs(t)
	const lossAt = 10 // frame 10 loses one packet; frames 10..29 cannot be decoded
	var lostPackets int
	for i := 0; i < 60; i++ {
		pkts := p.packets(i, aus[i])
		if i == lossAt {
			lostPackets = 1
			pkts = pkts[1:] // sequence numbers were taken: a real gap
		}
		p.write(pkts)
		time.Sleep(2 * time.Millisecond) // pacing, like a camera
	}
	waitFor(t, 10*time.Second, "frames after the loss", func() bool { return ts.sink.count() >= 60-20 })
	// While frames were discarded, the server asked for a keyframe.
	waitFor(t, 5*time.Second, "a PLI at the publisher", func() bool { return p.plis.Load() > 0 })
	ts.stop() // Run has returned: the counts below are final
	_, got := ts.sink.snapshot()
	if len(got) != 40 {
		t.Fatalf("recorded %d samples, want 40 (frames 0-9 and 30-59)", len(got))
	}
	for i, s := range got {
		src := i
		if i >= lossAt {
			src = i + 20
		}
		if !bytes.Equal(s.Payload, video.AnnexB(aus[src])) {
			t.Fatalf("sample %d: not frame %d", i, src)
		}
		disc := s.Flags.Has(sample.Discontinuity)
		if src == 30 {
			if !disc || !s.Flags.Has(sample.Keyframe) || s.Lost != uint32(lostPackets) || s.Dropped != 20 {
				t.Fatalf("frame 30: flags %v lost %d dropped %d; want keyframe+discontinuity, lost %d, dropped 20",
					s.Flags, s.Lost, s.Dropped, lostPackets)
			}
		} else if disc {
			t.Fatalf("frame %d marked as discontinuity", src)
		}
	}
	st := ts.Stats().WHIP[0]
	if st.LostPackets != 1 || st.DroppedFrames != 20 {
		t.Fatalf("stats: lost %d dropped %d, want 1 and 20", st.LostPackets, st.DroppedFrames)
	}
}

// Cancelling Run closes every open session (WHIP and WHEP), writes the
// queued frames, and returns.
func TestRunClosesSessions(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	ts := startServer(t, Options{Registerer: reg}, nil, nil, whipBase)
	p := newPublisher(t, ts.url+"/whip/"+whipBase.Stream, time.Now())
	aus := clipAUs(t)
	for i := 0; i < 10; i++ {
		p.write(p.packets(i, aus[i]))
	}
	d := liveDesc
	d.Params = clipParams(t)
	ts.Hub().Publish(d, clipSample(aus, 0, 1))
	v, rec, _ := newViewer(t, ts.url+"/whep/"+d.Stream)
	waitConnected(t, v)
	select {
	case <-rec.ch:
	case <-time.After(10 * time.Second):
		t.Fatal("viewer got no frame")
	}
	waitFor(t, 5*time.Second, "10 frames", func() bool { return ts.sink.count() >= 10 })
	// The viewer can hold a frame before the sender has counted its bytes.
	waitFor(t, 5*time.Second, "sent bytes counted", func() bool {
		return gather(t, reg)[`episoded_webrtc_sent_bytes_total{kind="whep"}`] > 0
	})
	if n := len(ts.Stats().Sessions); n != 2 {
		t.Fatalf("%d sessions open, want 2", n)
	}
	m := gather(t, reg)
	for name, want := range map[string]float64{
		`episoded_webrtc_sessions{kind="whip"}`:                            1,
		`episoded_webrtc_sessions{kind="whep"}`:                            1,
		`episoded_webrtc_whip_frames_total{stream="cell1/cam-whip"}`:       10,
		`episoded_webrtc_viewers{stream="cell1/cam-top"}`:                  1,
		`episoded_webrtc_whip_lost_packets_total{stream="cell1/cam-whip"}`: 0,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	if m[`episoded_webrtc_received_bytes_total{stream="cell1/cam-whip"}`] == 0 || m[`episoded_webrtc_sent_bytes_total{kind="whep"}`] == 0 {
		t.Errorf("byte counters not counting: %v", m)
	}
	ts.stop()
	m = gather(t, reg)
	if m[`episoded_webrtc_sessions{kind="whip"}`] != 0 || m[`episoded_webrtc_sessions{kind="whep"}`] != 0 {
		t.Errorf("sessions gauge after stop: %v", m)
	}
	if st := ts.Stats(); len(st.Sessions) != 0 || st.WHIP[0].Publishing {
		t.Fatalf("after Run returned: %+v", st)
	}
	waitFor(t, 15*time.Second, "the publisher to see the connection close", func() bool {
		s := p.pc.ConnectionState()
		return s == webrtc.PeerConnectionStateClosed || s == webrtc.PeerConnectionStateFailed
	})
	pc, err := peerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if code, _, _ := post(t, ts.url+"/whep/"+d.Stream, recvOffer(t, pc)); code != http.StatusServiceUnavailable {
		t.Fatalf("POST after Run returned = %d, want 503", code)
	}
}

// Frames the sink refuses are dropped with everything up to the next
// keyframe, which carries Discontinuity and the count.
func TestWHIPSinkRefuses(t *testing.T) {
	ts := startServer(t, Options{}, nil, nil, whipBase)
	ts.sink.mu.Lock()
	ts.sink.refuse = func(n int) bool { return n == 5 } // frame 5
	ts.sink.mu.Unlock()
	p := newPublisher(t, ts.url+"/whip/"+whipBase.Stream, time.Now())
	aus := clipAUs(t)
	for i := 0; i < 40; i++ {
		p.write(p.packets(i, aus[i]))
		time.Sleep(2 * time.Millisecond) // pacing, like a camera
	}
	waitFor(t, 10*time.Second, "frames after the refusal", func() bool { return ts.sink.count() >= 15 })
	ts.stop() // Run has returned: the counts below are final
	_, got := ts.sink.snapshot()
	if len(got) != 15 { // frames 0-4 and 30-39
		t.Fatalf("recorded %d samples, want 15", len(got))
	}
	k := got[5]
	if !bytes.Equal(k.Payload, video.AnnexB(aus[30])) || !k.Flags.Has(sample.Keyframe|sample.Discontinuity) || k.Dropped != 25 || k.Lost != 0 {
		t.Fatalf("sample after the refusal: flags %v dropped %d lost %d; want frame 30, keyframe+discontinuity, dropped 25",
			k.Flags, k.Dropped, k.Lost)
	}
}

// A lost packet that the publisher retransmits on NACK, and packets that
// arrive out of order, are put back in place: nothing is lost or dropped.
func TestWHIPRetransmitAndReorder(t *testing.T) {
	ts := startServer(t, Options{}, nil, nil, whipBase)
	p := newPublisher(t, ts.url+"/whip/"+whipBase.Stream, time.Now())
	aus := clipAUs(t)
	for i := 0; i < 60; i++ {
		pkts := p.packets(i, aus[i])
		switch {
		case i == 10 && len(pkts) > 1:
			p.remember(pkts[:1]) // "lost": only a NACK brings it
			pkts = pkts[1:]
		case i == 20 || i == 30: // reversed (frame 30 is a keyframe in several packets)
			slices.Reverse(pkts)
		}
		p.write(pkts)
		time.Sleep(2 * time.Millisecond) // pacing, like a camera
	}
	waitFor(t, 10*time.Second, "60 frames", func() bool { return ts.sink.count() >= 60 }, func() string {
		return fmt.Sprintf("stats %+v; NACKs at the publisher %d", ts.Stats().WHIP[0], p.nacks.Load())
	})
	ts.stop() // Run has returned: the counts below are final
	_, got := ts.sink.snapshot()
	if len(got) != 60 {
		t.Fatalf("recorded %d frames, want 60; stats %+v; NACKs at the publisher %d", len(got), ts.Stats().WHIP[0], p.nacks.Load())
	}
	for i, s := range got {
		if !bytes.Equal(s.Payload, video.AnnexB(aus[i])) || s.Flags.Has(sample.Discontinuity) {
			t.Fatalf("sample %d: payload equal %v, flags %v", i, bytes.Equal(s.Payload, video.AnnexB(aus[i])), s.Flags)
		}
	}
	st := ts.Stats().WHIP[0]
	if st.LostPackets != 0 || st.DroppedFrames != 0 || st.RecoveredGaps < 3 || p.nacks.Load() == 0 {
		t.Fatalf("stats %+v, nacks at the publisher %d; want no loss, >= 3 recovered gaps, a NACK", st, p.nacks.Load())
	}
}

// gather returns every sample in reg as "name{labels}" -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"=\""+l.GetValue()+"\"")
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out[mf.GetName()+"{"+strings.Join(ls, ",")+"}"] = v
		}
	}
	return out
}
