package webrtc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/internal/testwait"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// testLogger logs warnings and errors to stderr.
func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testServer is a Server running on an httptest server, ICE on loopback.
type testServer struct {
	*Server
	url  string
	sink *testSink
	// stop cancels Run and waits for it to return; it is idempotent.
	stop func()
}

func startServer(t testing.TB, o Options, hub *Hub, src episodeSource, whip ...sample.Descriptor) *testServer {
	t.Helper()
	if o.Interfaces == nil {
		o.Interfaces = []string{"lo"}
		o.IncludeLoopback = true
	}
	if o.Logger == nil {
		o.Logger = testLogger()
	}
	s, err := NewServer(o, hub, src)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range whip {
		s.AddWHIPStream(d)
	}
	mux := http.NewServeMux()
	s.Mount(func(p string, h http.Handler) { mux.Handle(p, h) })
	hs := httptest.NewServer(mux)
	sink := newTestSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, sink) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("Run did not return within 20 s of cancel")
			}
		})
	}
	t.Cleanup(func() {
		stop()
		hs.Close()
	})
	// Run installs its state asynchronously; wait until POSTs are served.
	waitFor(t, 5*time.Second, "server running", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.mu.rs != nil
	})
	return &testServer{Server: s, url: hs.URL, sink: sink, stop: stop}
}

// waitFor polls cond until it holds (testwait.For).
var waitFor = testwait.For

// testSink records what a device writes. It is the real devices.Sink
// contract, with storage replaced by a slice.
type testSink struct {
	mu      sync.Mutex
	descs   []sample.Descriptor
	samples []sample.Sample
	calls   int
	// refuse, if set, makes Write call number n (from 0) fail.
	refuse func(n int) bool
}

func newTestSink() *testSink { return &testSink{} }

func (k *testSink) Describe(d sample.Descriptor) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.descs = append(k.descs, d)
	return nil
}

func (k *testSink) Write(s sample.Sample, done func(error)) error {
	if len(s.Payload) == 0 {
		return errors.New("empty payload")
	}
	k.mu.Lock()
	n := k.calls
	k.calls++
	if k.refuse != nil && k.refuse(n) {
		k.mu.Unlock()
		return errors.New("test sink: refused")
	}
	k.samples = append(k.samples, s)
	k.mu.Unlock()
	if done != nil {
		done(nil)
	}
	return nil
}

func (k *testSink) snapshot() ([]sample.Descriptor, []sample.Sample) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]sample.Descriptor(nil), k.descs...), append([]sample.Sample(nil), k.samples...)
}

func (k *testSink) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.samples)
}

// peerAPI is a pion API for a test peer, with the loopback settings from
// TESTING.md and no interceptors (the tests write their own RTCP).
func peerAPI(t testing.TB) *webrtc.API {
	t.Helper()
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetInterfaceFilter(func(n string) bool { return n == "lo" })
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	m := &webrtc.MediaEngine{}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{
			MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
			SDPFmtpLine:  "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
			RTCPFeedback: []webrtc.RTCPFeedback{{Type: "nack"}, {Type: "nack", Parameter: "pli"}},
		},
		PayloadType: 96,
	}, webrtc.RTPCodecTypeVideo); err != nil {
		t.Fatal(err)
	}
	return webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(m),
		webrtc.WithInterceptorRegistry(&interceptor.Registry{}))
}

// negotiate sends pc's offer (after gathering) to url and applies the
// answer. It returns the session's Location.
func negotiate(t testing.TB, pc *webrtc.PeerConnection, url string) string {
	t.Helper()
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	code, body, hdr := post(t, url, pc.LocalDescription().SDP)
	if code != http.StatusCreated {
		t.Fatalf("POST %s = %d: %s", url, code, body)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/sdp" {
		t.Fatalf("answer content type %q", ct)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: body}); err != nil {
		t.Fatal(err)
	}
	loc := hdr.Get("Location")
	if loc == "" {
		t.Fatal("no Location in the answer")
	}
	return loc
}

func post(t testing.TB, url, body string) (int, string, http.Header) {
	t.Helper()
	return do(t, http.MethodPost, url, "application/sdp", body)
}

func do(t testing.TB, method, url, ct, body string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// waitConnected waits until pc is connected.
func waitConnected(t testing.TB, pc *webrtc.PeerConnection) time.Time {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(ch) })
		}
	})
	if pc.ConnectionState() == webrtc.PeerConnectionStateConnected {
		return time.Now()
	}
	select {
	case <-ch:
		return time.Now()
	case <-time.After(15 * time.Second):
		t.Fatalf("peer connection not connected after 15s (state %s)", pc.ConnectionState())
	}
	return time.Time{}
}

// clipAUs returns the test clip's access units.
func clipAUs(t testing.TB) [][][]byte {
	t.Helper()
	aus, err := assets.H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	if len(aus) != assets.Frames {
		t.Fatalf("clip has %d access units, want %d", len(aus), assets.Frames)
	}
	return aus
}

// clipParams returns the clip's SPS and PPS.
func clipParams(t testing.TB) [][]byte {
	t.Helper()
	var sps, pps []byte
	for _, n := range clipAUs(t)[0] {
		switch n[0] & 0x1f {
		case 7:
			sps = n
		case 8:
			pps = n
		}
	}
	if sps == nil || pps == nil {
		t.Fatal("clip's first access unit has no SPS/PPS")
	}
	return [][]byte{sps, pps}
}

func isKey(au [][]byte) bool {
	for _, n := range au {
		if n[0]&0x1f == 5 {
			return true
		}
	}
	return false
}

// stripNAL returns au without NAL units of the given types.
func stripNAL(au [][]byte, types ...byte) [][]byte {
	var out [][]byte
next:
	for _, n := range au {
		for _, typ := range types {
			if n[0]&0x1f == typ {
				continue next
			}
		}
		out = append(out, n)
	}
	return out
}

// auReceiver assembles the H.264 access units a test viewer receives,
// with pion's depacketizer (independent of the server's packetizer).
type auReceiver struct {
	mu   sync.Mutex
	aus  [][]byte // Annex-B
	tss  []uint32
	cur  []byte
	seq  uint16
	gaps int
	have bool
	ch   chan struct{} // signalled on every complete AU
}

func newAUReceiver() *auReceiver { return &auReceiver{ch: make(chan struct{}, 1)} }

func (r *auReceiver) read(track *webrtc.TrackRemote) {
	var dep codecs.H264Packet
	for {
		pkt, _, err := track.ReadRTP()
		if err != nil {
			return
		}
		r.push(&dep, pkt)
	}
}

func (r *auReceiver) push(dep *codecs.H264Packet, pkt *rtp.Packet) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.have && pkt.SequenceNumber != r.seq+1 {
		r.gaps++
		r.cur = nil
	}
	r.have, r.seq = true, pkt.SequenceNumber
	b, err := dep.Unmarshal(pkt.Payload)
	if err != nil {
		r.gaps++
		r.cur = nil
		return
	}
	r.cur = append(r.cur, b...)
	if pkt.Marker && len(r.cur) > 0 {
		r.aus = append(r.aus, r.cur)
		r.tss = append(r.tss, pkt.Timestamp)
		r.cur = nil
		select {
		case r.ch <- struct{}{}:
		default:
		}
	}
}

func (r *auReceiver) snapshot() ([][]byte, []uint32, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.aus...), append([]uint32(nil), r.tss...), r.gaps
}

// nalTypes lists the NAL unit types of an Annex-B access unit.
func nalTypes(b []byte) []byte {
	var out []byte
	for _, n := range splitAnnexB(b) {
		out = append(out, n[0]&0x1f)
	}
	return out
}

// startsDecodable reports whether an Annex-B AU is an IDR with SPS and
// PPS before the IDR slice.
func startsDecodable(b []byte) error {
	types := nalTypes(b)
	var sps, pps bool
	for _, typ := range types {
		switch typ {
		case 7:
			sps = true
		case 8:
			pps = true
		case 5:
			if !sps || !pps {
				return fmt.Errorf("IDR without SPS/PPS before it (NAL types %v)", types)
			}
			return nil
		case 1:
			return fmt.Errorf("non-IDR slice first (NAL types %v)", types)
		}
	}
	return fmt.Errorf("no slice (NAL types %v)", types)
}

// newViewer makes a receive-only test peer whose video goes to an
// auReceiver, and negotiates it at url.
func newViewer(t testing.TB, url string) (*webrtc.PeerConnection, *auReceiver, string) {
	t.Helper()
	pc, err := peerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo,
		webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	rec := newAUReceiver()
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) { go rec.read(tr) })
	loc := negotiate(t, pc, url)
	return pc, rec, loc
}

var webrtcConfig = webrtc.Configuration{}

// recvOffer returns a receive-only video offer from pc, with candidates.
func recvOffer(t testing.TB, pc *webrtc.PeerConnection) string {
	t.Helper()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo,
		webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	return pc.LocalDescription().SDP
}

func testNow() time.Time { return time.Now() }

// newHTTPServer serves h on loopback until the test ends and returns its
// base URL.
func newHTTPServer(t testing.TB, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.URL
}

// splitAnnexB splits an Annex-B access unit into NAL units.
func splitAnnexB(b []byte) [][]byte { return video.SplitAnnexB(b) }
