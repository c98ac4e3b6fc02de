package rtsp

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/bluenviron/gortsplib/v4/pkg/liberrors"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/internal/testwait"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// memSink is a devices.Sink that keeps everything in memory.
type memSink struct {
	mu      sync.Mutex
	descs   []sample.Descriptor
	descAt  []int // number of samples written before each Describe
	samples []sample.Sample
	discard bool // count only (benchmarks)
	n       int
	bytes   int
	changed chan struct{}
}

func newMemSink() *memSink { return &memSink{changed: make(chan struct{}, 1)} }

func (s *memSink) Describe(d sample.Descriptor) error {
	s.mu.Lock()
	s.descs = append(s.descs, d)
	s.descAt = append(s.descAt, len(s.samples))
	s.mu.Unlock()
	return nil
}

func (s *memSink) Write(x sample.Sample, done func(error)) error {
	s.mu.Lock()
	s.n++
	s.bytes += len(x.Payload)
	if !s.discard {
		s.samples = append(s.samples, x)
	}
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
	if done != nil {
		done(nil)
	}
	return nil
}

func (s *memSink) snapshot() ([]sample.Descriptor, []sample.Sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sample.Descriptor(nil), s.descs...), append([]sample.Sample(nil), s.samples...)
}

func (s *memSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// waitFor polls cond until it holds (testwait.For).
var waitFor = testwait.For

// runCamera starts cam.Run in a goroutine. stop cancels it and returns
// Run's result; done is closed when Run returns.
func runCamera(t testing.TB, cam *Camera, sink devices.Sink) (stop func() error, done <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	d := make(chan struct{})
	var err error
	go func() {
		defer close(d)
		err = cam.Run(ctx, sink)
	}()
	var once sync.Once
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case <-d:
			case <-time.After(15 * time.Second):
				t.Errorf("Run did not return within 15s of cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop, d
}

// testServer is an in-process gortsplib server on loopback. It serves one
// stream to readers (play mode) or accepts one publisher and relays it
// (record mode, for ffmpeg).
type testServer struct {
	srv        *gortsplib.Server
	addr       string
	user, pass string
	record     bool

	mu     sync.Mutex
	stream *gortsplib.ServerStream
	// played gets a value when a PLAY has been answered with 200: the
	// reader is then active on the stream, so every packet written after
	// it reaches the reader (see OnResponse).
	played  chan struct{}
	methods sync.Map // *gortsplib.ServerConn -> base.Method of the request being answered

	// record mode: packets from the publisher, relayed to the stream once
	// a reader is playing so that the reader sees the whole clip.
	relay chan relayPkt
}

type relayPkt struct {
	medi *description.Media
	pkt  *rtp.Packet
}

// startServer starts a server on addr (empty for a fresh port) serving desc
// (nil in record mode).
func startServer(t testing.TB, addr string, desc *description.Session, user, pass string) *testServer {
	t.Helper()
	if addr == "" {
		addr = freeAddr(t)
	}
	s, err := tryServer(t, addr, desc, user, pass, 0)
	if err != nil {
		t.Fatalf("start rtsp server: %v", err)
	}
	return s
}

// startUDPServer is startServer with the UDP transport enabled.
func startUDPServer(t testing.TB, cl *clip) *testServer {
	t.Helper()
	var err error
	for range 20 {
		var s *testServer
		port := 20000 + 2*rand.IntN(15000)
		if s, err = tryServer(t, freeAddr(t), cl.desc, "", "", port); err == nil {
			return s
		}
	}
	t.Fatalf("start rtsp server with udp: %v", err)
	return nil
}

func tryServer(t testing.TB, addr string, desc *description.Session, user, pass string, udpPort int) (*testServer, error) {
	s := &testServer{addr: addr, user: user, pass: pass, played: make(chan struct{}, 64), record: desc == nil}
	if s.record {
		s.relay = make(chan relayPkt, 1<<16)
	}
	s.srv = &gortsplib.Server{
		Handler:     s,
		RTSPAddress: addr,
		// The automatic sender reports start only after 10 s and carry the
		// server's own NTP; tests send their own with a known mapping.
		DisableRTCPSenderReports: true,
	}
	if udpPort != 0 {
		s.srv.UDPRTPAddress = "127.0.0.1:" + itoa(udpPort)
		s.srv.UDPRTCPAddress = "127.0.0.1:" + itoa(udpPort+1)
	}
	if err := s.srv.Start(); err != nil {
		return nil, err
	}
	if desc != nil {
		st := &gortsplib.ServerStream{Server: s.srv, Desc: desc}
		if err := st.Initialize(); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock() // a reconnecting client may already be asking
		s.stream = st
		s.mu.Unlock()
	}
	t.Cleanup(s.close)
	return s, nil
}

func (s *testServer) url(path string) string { return "rtsp://" + s.addr + "/" + path }

// str returns the stream being served.
func (s *testServer) str() *gortsplib.ServerStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stream
}

func (s *testServer) close() {
	s.mu.Lock()
	st := s.stream
	s.stream = nil
	s.mu.Unlock()
	if st != nil {
		st.Close()
	}
	s.srv.Close()
}

func (s *testServer) auth(req *base.Request, c *gortsplib.ServerConn) bool {
	return s.user == "" || c.VerifyCredentials(req, s.user, s.pass)
}

func (s *testServer) OnDescribe(ctx *gortsplib.ServerHandlerOnDescribeCtx) (*base.Response, *gortsplib.ServerStream, error) {
	if !s.auth(ctx.Request, ctx.Conn) {
		return &base.Response{StatusCode: base.StatusUnauthorized}, nil, liberrors.ErrServerAuth{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stream == nil {
		return &base.Response{StatusCode: base.StatusNotFound}, nil, nil
	}
	return &base.Response{StatusCode: base.StatusOK}, s.stream, nil
}

func (s *testServer) OnAnnounce(ctx *gortsplib.ServerHandlerOnAnnounceCtx) (*base.Response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.record || s.stream != nil {
		return &base.Response{StatusCode: base.StatusBadRequest}, nil
	}
	s.stream = &gortsplib.ServerStream{Server: s.srv, Desc: ctx.Description}
	if err := s.stream.Initialize(); err != nil {
		return &base.Response{StatusCode: base.StatusInternalServerError}, err
	}
	return &base.Response{StatusCode: base.StatusOK}, nil
}

func (s *testServer) OnSetup(ctx *gortsplib.ServerHandlerOnSetupCtx) (*base.Response, *gortsplib.ServerStream, error) {
	if ctx.Session.State() == gortsplib.ServerSessionStatePreRecord {
		return &base.Response{StatusCode: base.StatusOK}, nil, nil
	}
	if !s.auth(ctx.Request, ctx.Conn) {
		return &base.Response{StatusCode: base.StatusUnauthorized}, nil, liberrors.ErrServerAuth{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stream == nil {
		return &base.Response{StatusCode: base.StatusNotFound}, nil, nil
	}
	return &base.Response{StatusCode: base.StatusOK}, s.stream, nil
}

func (s *testServer) OnPlay(*gortsplib.ServerHandlerOnPlayCtx) (*base.Response, error) {
	return &base.Response{StatusCode: base.StatusOK}, nil
}

// OnRequest and OnResponse signal played once a PLAY is answered. A
// connection's requests are handled one at a time, and gortsplib calls
// OnResponse after the session has made the reader active on the stream
// (OnPlay is too early: packets written then are dropped). Over TCP the
// reader's writer starts after the response is sent, but packets written
// before that wait in its queue.
func (s *testServer) OnRequest(c *gortsplib.ServerConn, req *base.Request) {
	s.methods.Store(c, req.Method)
}

func (s *testServer) OnResponse(c *gortsplib.ServerConn, res *base.Response) {
	if m, _ := s.methods.LoadAndDelete(c); m == base.Play && res.StatusCode == base.StatusOK {
		select {
		case s.played <- struct{}{}:
		default:
		}
	}
}

func (s *testServer) OnRecord(ctx *gortsplib.ServerHandlerOnRecordCtx) (*base.Response, error) {
	ctx.Session.OnPacketRTPAny(func(medi *description.Media, _ format.Format, pkt *rtp.Packet) {
		c := *pkt
		c.Payload = append([]byte(nil), pkt.Payload...)
		select {
		case s.relay <- relayPkt{medi, &c}:
		default:
		}
	})
	return &base.Response{StatusCode: base.StatusOK}, nil
}

// relayAfterPlay forwards the publisher's packets to the stream, starting
// after the first PLAY.
func (s *testServer) relayAfterPlay(ctx context.Context) {
	select {
	case <-s.played:
	case <-ctx.Done():
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-s.relay:
			s.mu.Lock()
			st := s.stream
			s.mu.Unlock()
			if st != nil {
				st.WritePacketRTP(p.medi, p.pkt) //nolint:errcheck
			}
		}
	}
}

// waitPlay waits until a reader's PLAY is answered: packets written
// afterwards reach it.
func (s *testServer) waitPlay(t testing.TB) {
	t.Helper()
	select {
	case <-s.played:
	case <-time.After(30 * time.Second):
		t.Fatal("no PLAY within 30s")
	}
}

// clip is a test clip: its access units and an RTP description of it.
type clip struct {
	codec sample.Codec
	aus   [][][]byte
	desc  *description.Session
	medi  *description.Media
	forma format.Format
	enc   interface {
		Encode([][]byte) ([]*rtp.Packet, error)
	}
	params [][]byte
}

func loadClip(t testing.TB, c sample.Codec) *clip {
	t.Helper()
	var (
		aus [][][]byte
		err error
	)
	if c == sample.CodecH264 {
		aus, err = assets.H264AccessUnits()
	} else {
		aus, err = assets.H265AccessUnits()
	}
	if err != nil {
		t.Fatal(err)
	}
	cl := &clip{codec: c, aus: aus}
	cd := video.CodecOf(c)
	cl.params = make([][]byte, cd.NParams)
	for _, n := range aus[0] {
		if i := cd.ParamSlot(n); i >= 0 {
			cl.params[i] = n
		}
	}
	cl.newEncoder(t)
	return cl
}

// newEncoder makes a fresh media, format and encoder (a "new camera").
func (cl *clip) newEncoder(t testing.TB) {
	t.Helper()
	if cl.codec == sample.CodecH264 {
		f := &format.H264{PayloadTyp: 96, PacketizationMode: 1, SPS: cl.params[0], PPS: cl.params[1]}
		e, err := f.CreateEncoder()
		if err != nil {
			t.Fatal(err)
		}
		cl.forma, cl.enc = f, e
	} else {
		f := &format.H265{PayloadTyp: 96, VPS: cl.params[0], SPS: cl.params[1], PPS: cl.params[2]}
		e, err := f.CreateEncoder()
		if err != nil {
			t.Fatal(err)
		}
		cl.forma, cl.enc = f, e
	}
	cl.medi = &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{cl.forma}}
	cl.desc = &description.Session{Medias: []*description.Media{cl.medi}}
}

// packets packetizes access unit i with RTP timestamp ts.
func (cl *clip) packets(t testing.TB, i int, ts uint32) []*rtp.Packet {
	pkts, err := cl.enc.Encode(cl.aus[i%len(cl.aus)])
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		p.Timestamp = ts
	}
	return pkts
}

// multiPacketAU returns the first access unit at or after from whose
// largest NAL unit needs fragmentation, so that it spans several packets.
func (cl *clip) multiPacketAU(t testing.TB, from int) int {
	for i := from; i < len(cl.aus); i++ {
		for _, n := range cl.aus[i] {
			if len(n) > 1500 {
				return i
			}
		}
	}
	t.Fatalf("no multi-packet access unit after %d", from)
	return 0
}

// ntpTime converts t to the 64-bit NTP format of sender reports.
func ntpTime(t time.Time) uint64 { return video.UnixNanoToNTP(t.UnixNano()) }

// senderReport sends an RTCP sender report mapping RTP time ts to wall
// time at, with the SSRC the client sees (the server rewrites SSRCs).
func senderReport(t testing.TB, st *gortsplib.ServerStream, cl *clip, ts uint32, at time.Time) {
	t.Helper()
	ssrc := st.Stats().Medias[cl.medi].Formats[cl.forma].LocalSSRC
	sr := &rtcp.SenderReport{SSRC: ssrc, NTPTime: ntpTime(at), RTPTime: ts}
	if err := st.WritePacketRTCP(cl.medi, sr); err != nil {
		t.Fatal(err)
	}
}

// annexBOf is the expected sample payload for an access unit.
func annexBOf(au [][]byte) []byte { return video.AnnexB(au) }

// logBuffer is a slog handler target that tests can search.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func itoa(i int) string { return strconv.Itoa(i) }

// splitAnnexB splits a sample payload at its 4-byte start codes.
func splitAnnexB(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 4 || !bytes.Equal(b[:4], []byte{0, 0, 0, 1}) {
			t.Fatalf("payload is not 4-byte-start-code Annex-B")
		}
		b = b[4:]
		i := bytes.Index(b, []byte{0, 0, 0, 1})
		if i < 0 {
			i = len(b)
		}
		out = append(out, b[:i])
		b = b[i:]
	}
	return out
}

func (cl *clip) h264Decoder(t testing.TB) (video.Depacketizer, error) {
	f := &format.H264{PayloadTyp: 96, PacketizationMode: 1}
	return f.CreateDecoder()
}

func (cl *clip) h265Decoder(t testing.TB) (video.Depacketizer, error) {
	f := &format.H265{PayloadTyp: 96}
	return f.CreateDecoder()
}
