package rtsp

// Outbound: an RTSP server that serves stored H.264/H.265 access units
// (replay, and anything else that needs to play samples out over RTSP).
//
// Server wraps a gortsplib Server on one TCP address. Each stream is served
// at rtsp://ADDR/<path>, where path may contain '/' (rtsp://ADDR/cell1/cam1).
// Only interleaved TCP transport is offered; clients that try UDP first get
// 461 Unsupported Transport and fall back (ffmpeg: -rtsp_transport tcp).
//
// The SDP carries the parameter sets of the descriptor the stream was added
// with (H.264 SPS/PPS, H.265 VPS/SPS/PPS). Access units are written as the
// Annex-B payloads that devices/rtsp records, one per sample; they are
// split into NAL units and packetized (RFC 6184 / RFC 7798) unchanged.
//
// Time: the caller gives each access unit its media time (RTP timestamps
// are derived from it, 90 kHz, starting at a random offset) and its
// absolute time. gortsplib's own sender reports are turned off (its NTP
// conversion in v4.16.2 writes the fraction as nanoseconds); this file
// sends RTCP sender reports itself, per RFC 3550: NTP seconds since 1900 in
// the upper 32 bits and the fraction of a second times 2^32 in the lower,
// mapping the RTP timestamp of an access unit to its absolute time. A report
// follows each of the first access units after a PLAY (clients ignore
// reports that arrive before their first RTP packet) and then one every
// SRPeriod.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph265"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"

	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// DefaultServerAddr is where Server listens by default.
const DefaultServerAddr = "127.0.0.1:8554"

// DefaultSRPeriod is the default interval between sender reports.
const DefaultSRPeriod = time.Second

// srPlayBurst is how many access units after a PLAY are each followed by a
// sender report.
const srPlayBurst = 3

// ServerOptions configure an outbound RTSP server.
type ServerOptions struct {
	// Addr is the TCP listen address (default 127.0.0.1:8554).
	Addr string
	// SRPeriod is the interval between RTCP sender reports (default 1s).
	SRPeriod time.Duration
	// WriteQueueSize is gortsplib's per-reader queue of outgoing packets
	// (default 4096). When a reader's queue is full gortsplib drops the
	// packet for that reader.
	WriteQueueSize int
	// Linger is how long Close waits, when a stream has readers, before it
	// ends their sessions, so that packets still in gortsplib's write
	// queues reach them (default 500ms; negative: none).
	Linger time.Duration
	// Logger is tagged with component=devices.rtsp.server; nil discards.
	Logger *slog.Logger
}

// Server serves streams of access units over RTSP. NewServer starts
// nothing; Start binds and serves; Close stops. It is safe for concurrent
// use.
type Server struct {
	o   ServerOptions
	log *slog.Logger
	srv *gortsplib.Server
	ln  net.Listener

	mu struct {
		sync.Mutex
		streams map[string]*OutStream
		readers map[*gortsplib.ServerSession]*OutStream
		closed  bool
	}
}

// NewServer checks the options and returns a server that is not started.
func NewServer(o ServerOptions) (*Server, error) {
	if o.Addr == "" {
		o.Addr = DefaultServerAddr
	}
	if o.SRPeriod == 0 {
		o.SRPeriod = DefaultSRPeriod
	}
	if o.WriteQueueSize == 0 {
		o.WriteQueueSize = 4096
	}
	if o.Linger == 0 {
		o.Linger = 500 * time.Millisecond
	}
	var errs []error
	if _, _, err := net.SplitHostPort(o.Addr); err != nil {
		errs = append(errs, fmt.Errorf("addr: %q is not host:port: %w", o.Addr, err))
	}
	if o.SRPeriod < 0 {
		errs = append(errs, fmt.Errorf("sr period: %s is negative", o.SRPeriod))
	}
	if o.WriteQueueSize < 1 || o.WriteQueueSize&(o.WriteQueueSize-1) != 0 {
		errs = append(errs, fmt.Errorf("write queue size: %d is not a power of two", o.WriteQueueSize))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("rtsp server options: %w", err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: o, log: log.With("component", "devices.rtsp.server")}
	s.mu.streams = map[string]*OutStream{}
	s.mu.readers = map[*gortsplib.ServerSession]*OutStream{}
	return s, nil
}

// Start binds the address and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.o.Addr)
	if err != nil {
		return fmt.Errorf("rtsp server: listen on %s: %w", s.o.Addr, err)
	}
	s.ln = ln
	s.srv = &gortsplib.Server{
		Handler:                  &serverHandler{s: s},
		RTSPAddress:              ln.Addr().String(),
		WriteQueueSize:           s.o.WriteQueueSize,
		DisableRTCPSenderReports: true,
		Listen: func(string, string) (net.Listener, error) {
			return ln, nil
		},
	}
	if err := s.srv.Start(); err != nil {
		ln.Close()
		return fmt.Errorf("rtsp server: start: %w", err)
	}
	s.log.Info("rtsp server listening", "addr", ln.Addr().String())
	return nil
}

// Addr returns the bound address (after Start), else the configured one.
func (s *Server) Addr() string {
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.o.Addr
}

// URL returns the URL a stream at path is served on.
func (s *Server) URL(path string) string {
	return "rtsp://" + s.Addr() + "/" + strings.Trim(path, "/")
}

// Close closes every stream (ending its readers' sessions, after Linger if
// there are any) and the server.
func (s *Server) Close() {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return
	}
	if len(s.mu.readers) > 0 && s.o.Linger > 0 {
		s.mu.Unlock()
		time.Sleep(s.o.Linger)
		s.mu.Lock()
	}
	s.mu.closed = true
	streams := s.mu.streams
	s.mu.streams = map[string]*OutStream{}
	s.mu.Unlock()
	for _, st := range streams {
		st.st.Close()
	}
	if s.srv != nil {
		s.srv.Close()
	}
}

// OutStream is one served stream.
type OutStream struct {
	s     *Server
	path  string
	codec sample.Codec
	st    *gortsplib.ServerStream
	medi  *description.Media
	forma format.Format
	ssrc  uint32
	rtp0  uint32
	enc   interface {
		Encode([][]byte) ([]*rtp.Packet, error)
	}

	burst   atomic.Int32
	readers atomic.Int32
	played  chan struct{} // closed at the first PLAY
	once    sync.Once

	// Written only by WriteAccessUnit's caller (one goroutine).
	lastSR  time.Time
	packets uint32
	octets  uint32

	aus atomic.Uint64
	srs atomic.Uint64
}

// AddStream serves a new stream at path (no leading or trailing '/'),
// described by d: Kind video, Codec h264 or h265, Params its parameter
// sets in decoding order.
func (s *Server) AddStream(path string, d sample.Descriptor) (*OutStream, error) {
	path = strings.Trim(path, "/")
	if path == "" {
		return nil, errors.New("rtsp server: add stream: empty path")
	}
	o := &OutStream{s: s, path: path, codec: d.Codec, played: make(chan struct{}), rtp0: rand.Uint32()}
	seq := uint16(rand.Uint32())
	switch d.Codec {
	case sample.CodecH264:
		f := &format.H264{PayloadTyp: 96, PacketizationMode: 1}
		for _, p := range d.Params {
			if len(p) == 0 {
				continue
			}
			switch h264.NALUType(p[0] & 0x1f) {
			case h264.NALUTypeSPS:
				f.SPS = p
			case h264.NALUTypePPS:
				f.PPS = p
			}
		}
		enc := &rtph264.Encoder{PayloadType: 96, PacketizationMode: 1, InitialSequenceNumber: &seq}
		if err := enc.Init(); err != nil {
			return nil, fmt.Errorf("rtsp server: add stream %s: %w", path, err)
		}
		o.forma, o.enc = f, enc
	case sample.CodecH265:
		f := &format.H265{PayloadTyp: 96}
		for _, p := range d.Params {
			if len(p) < 2 {
				continue
			}
			switch (p[0] >> 1) & 0x3f {
			case 32:
				f.VPS = p
			case 33:
				f.SPS = p
			case 34:
				f.PPS = p
			}
		}
		enc := &rtph265.Encoder{PayloadType: 96, InitialSequenceNumber: &seq}
		if err := enc.Init(); err != nil {
			return nil, fmt.Errorf("rtsp server: add stream %s: %w", path, err)
		}
		o.forma, o.enc = f, enc
	default:
		return nil, fmt.Errorf("rtsp server: add stream %s: codec %q is not h264 or h265", path, d.Codec)
	}
	if s.srv == nil {
		return nil, fmt.Errorf("rtsp server: add stream %s: server not started", path)
	}
	o.medi = &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{o.forma}}
	o.st = &gortsplib.ServerStream{Server: s.srv, Desc: &description.Session{Medias: []*description.Media{o.medi}}}
	if err := o.st.Initialize(); err != nil {
		return nil, fmt.Errorf("rtsp server: add stream %s: %w", path, err)
	}
	o.ssrc = o.st.Stats().Medias[o.medi].Formats[o.forma].LocalSSRC
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		o.st.Close()
		return nil, fmt.Errorf("rtsp server: add stream %s: server closed", path)
	}
	if _, dup := s.mu.streams[path]; dup {
		o.st.Close()
		return nil, fmt.Errorf("rtsp server: add stream %s: path already served", path)
	}
	s.mu.streams[path] = o
	return o, nil
}

// URL returns the stream's URL.
func (o *OutStream) URL() string { return o.s.URL(o.path) }

// Readers returns the number of sessions playing the stream now.
func (o *OutStream) Readers() int { return int(o.readers.Load()) }

// Played is closed when a client first sends PLAY for this stream.
func (o *OutStream) Played() <-chan struct{} { return o.played }

// OutStreamStats counts what a stream sent.
type OutStreamStats struct {
	AccessUnits   uint64
	SenderReports uint64
	Readers       int
}

// Stats returns the stream's counters.
func (o *OutStream) Stats() OutStreamStats {
	return OutStreamStats{AccessUnits: o.aus.Load(), SenderReports: o.srs.Load(), Readers: o.Readers()}
}

// WriteAccessUnit sends one access unit (Annex-B, start codes of 3 or 4
// bytes) to every reader. media is its media time from any fixed origin:
// the RTP timestamp is the stream's random offset plus media in 90 kHz
// ticks, so media must not decrease. abs is its absolute time (ns since the
// Unix epoch) that sender reports map the RTP timestamp to. With no reader
// the unit is discarded. Call from one goroutine.
func (o *OutStream) WriteAccessUnit(media time.Duration, abs int64, au []byte) error {
	nalus, ok := video.SplitAU(au)
	if !ok {
		return fmt.Errorf("rtsp server: stream %s: split access unit: not Annex-B", o.path)
	}
	pkts, err := o.enc.Encode(nalus)
	if err != nil {
		return fmt.Errorf("rtsp server: stream %s: packetize: %w", o.path, err)
	}
	ts := o.rtp0 + uint32(ticks90k(media))
	for _, p := range pkts {
		p.Timestamp = ts
		if err := o.st.WritePacketRTP(o.medi, p); err != nil {
			return fmt.Errorf("rtsp server: stream %s: %w", o.path, err)
		}
		o.packets++
		o.octets += uint32(len(p.Payload))
	}
	o.aus.Add(1)
	now := time.Now()
	if o.burst.Load() > 0 || now.Sub(o.lastSR) >= o.s.o.SRPeriod {
		if o.burst.Load() > 0 {
			o.burst.Add(-1)
		}
		o.lastSR = now
		sr := &rtcp.SenderReport{SSRC: o.ssrc, NTPTime: video.UnixNanoToNTP(abs), RTPTime: ts, PacketCount: o.packets, OctetCount: o.octets}
		if err := o.st.WritePacketRTCP(o.medi, sr); err == nil {
			o.srs.Add(1)
		}
	}
	return nil
}

// ticks90k converts d (not negative) to 90 kHz ticks, rounded to the
// nearest, without overflow.
func ticks90k(d time.Duration) int64 {
	const s = int64(time.Second)
	n := int64(d)
	return n/s*90000 + (n%s*90000+s/2)/s
}

// serverHandler answers DESCRIBE, SETUP and PLAY for the served streams.
type serverHandler struct{ s *Server }

func (h *serverHandler) find(path string) (*base.Response, *OutStream, error) {
	h.s.mu.Lock()
	o := h.s.mu.streams[strings.Trim(path, "/")]
	h.s.mu.Unlock()
	if o == nil {
		return &base.Response{StatusCode: base.StatusNotFound}, nil, fmt.Errorf("no stream at %q", path)
	}
	return &base.Response{StatusCode: base.StatusOK}, o, nil
}

func (h *serverHandler) OnDescribe(ctx *gortsplib.ServerHandlerOnDescribeCtx) (*base.Response, *gortsplib.ServerStream, error) {
	res, o, err := h.find(ctx.Path)
	if o == nil {
		return res, nil, err
	}
	return res, o.st, nil
}

func (h *serverHandler) OnSetup(ctx *gortsplib.ServerHandlerOnSetupCtx) (*base.Response, *gortsplib.ServerStream, error) {
	if ctx.Transport != gortsplib.TransportTCP {
		return &base.Response{StatusCode: base.StatusUnsupportedTransport}, nil, nil
	}
	res, o, err := h.find(ctx.Path)
	if o == nil {
		return res, nil, err
	}
	return res, o.st, nil
}

func (h *serverHandler) OnPlay(ctx *gortsplib.ServerHandlerOnPlayCtx) (*base.Response, error) {
	if _, o, _ := h.find(ctx.Path); o != nil {
		o.burst.Store(srPlayBurst)
		h.s.mu.Lock()
		if _, ok := h.s.mu.readers[ctx.Session]; !ok {
			h.s.mu.readers[ctx.Session] = o
			o.readers.Add(1)
		}
		h.s.mu.Unlock()
		o.once.Do(func() { close(o.played) })
		h.s.log.Info("rtsp reader playing", "path", o.path, "remote", ctx.Conn.NetConn().RemoteAddr().String())
	}
	return &base.Response{StatusCode: base.StatusOK}, nil
}

func (h *serverHandler) OnSessionClose(ctx *gortsplib.ServerHandlerOnSessionCloseCtx) {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	if o, ok := h.s.mu.readers[ctx.Session]; ok {
		delete(h.s.mu.readers, ctx.Session)
		o.readers.Add(-1)
	}
}

// playGrace is how long WaitPlayed waits after the last PLAY: gortsplib
// makes a session a reader of the stream just after OnPlay returns, so
// units written at once could miss it.
const playGrace = 50 * time.Millisecond

// WaitPlayed blocks until every stream has been played at least once (and
// the reader is active), or ctx ends.
func WaitPlayed(ctx context.Context, streams ...*OutStream) error {
	for _, o := range streams {
		select {
		case <-o.played:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	t := time.NewTimer(playGrace)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
