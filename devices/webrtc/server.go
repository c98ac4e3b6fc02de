package webrtc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/nack"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/httpjson"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// episodeSource is what WHEP replay reads. storage.Store satisfies it.
type episodeSource interface {
	// Descriptors returns every descriptor version of stream, oldest first.
	Descriptors(stream string) ([]sample.Descriptor, error)
	// Range yields stream's samples with T in [from, to], ordered by T.
	Range(stream string, from, to int64) iter.Seq2[sample.Sample, error]
	// VideoStart finds the keyframe a window's video starts at.
	VideoStart(stream string, from, to int64) (sample.VideoStart, error)
	// Episode returns one episode record.
	Episode(id string) (episode.Episode, error)
}

// Sentinel errors.
var (
	// ErrRunning: Run was called twice.
	ErrRunning = errors.New("webrtc: already running")
)

// Timeouts of the ICE agent and of answering an offer.
const (
	iceDisconnectedTimeout = 5 * time.Second
	iceFailedTimeout       = 10 * time.Second
	iceKeepalive           = 2 * time.Second
	// gatherTimeout bounds host-candidate gathering while answering.
	gatherTimeout = 10 * time.Second
	// deleteWait is how long DELETE waits for the session to be torn
	// down, so that a publisher may POST again right away.
	deleteWait = 3 * time.Second
	// connectTimeout ends a session whose peer has not connected (ICE and
	// DTLS) this long after the answer.
	connectTimeout = 30 * time.Second
	// maxOfferSize bounds the SDP offer read from a request.
	maxOfferSize = 1 << 20
	// rtpPayloadMax keeps RTP packets below the usual 1280-byte path MTU
	// after SRTP and header overhead.
	rtpPayloadMax = 1150
)

// Server answers WHIP and WHEP offers. Create it with NewServer, mount its
// handlers on the HTTP server, and run it with Run, which owns every
// session: handlers answer 503 until Run has started, and all sessions are
// closed when Run's context is cancelled.
type Server struct {
	o   Options
	log *slog.Logger
	hub *Hub
	src episodeSource
	met *metrics
	// connectTimeout is connectTimeout (ns); tests shorten it.
	connectTimeout atomic.Int64
	running        atomic.Bool
	mu             struct {
		sync.Mutex
		rs       *runState // nil unless Run is serving
		whip     map[string]*whipStream
		sessions map[string]*session
	}
}

// runState is what exists only while Run is serving.
type runState struct {
	ctx              context.Context
	sink             devices.Sink
	whipAPI, whepAPI *webrtc.API
	// wg counts sessions; Add only under Server.mu while rs is current.
	wg sync.WaitGroup
}

// whipStream is one stream that WHIP publishers may feed.
type whipStream struct {
	base sample.Descriptor
	cnt  video.Counters
	// frames, bytes and keyframes written to the sink; rtpBytes received;
	// srs sender reports received; filledGaps sequence gaps closed by a
	// retransmission or a reordered packet.
	frames, bytes, keyframes, rtpBytes, srs, filledGaps counter
	// sessions and active are guarded by Server.mu.
	sessions uint64
	active   *session
}

// session is one WHIP or WHEP peer connection.
type session struct {
	id, kind, stream, episode string
	created                   time.Time
	ctx                       context.Context
	cancel                    context.CancelFunc
	// done is closed when the session is torn down.
	done chan struct{}
	pc   *webrtc.PeerConnection
	// state is the peer connection state (webrtc.PeerConnectionState).
	state atomic.Int32
	// For WHEP: frames and bytes sent, PLIs received, frames dropped.
	sentFrames, sentBytes, plis counter
	viewer                      atomic.Pointer[viewer]
	whip                        *whipSession
}

// NewServer returns a server that serves live preview from hub and replay
// from src (nil disables replay). It starts nothing and binds nothing; it
// registers its metrics on o.Registerer.
func NewServer(o Options, hub *Hub, src episodeSource) (*Server, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("webrtc options: %w", err)
	}
	if hub == nil {
		hub = NewHub(o.Logger)
	}
	s := &Server{o: o, log: o.Logger.With("component", "devices.webrtc"), hub: hub, src: src, met: newMetrics()}
	s.connectTimeout.Store(int64(connectTimeout))
	s.mu.whip = map[string]*whipStream{}
	s.mu.sessions = map[string]*session{}
	if err := s.met.register(o.Registerer); err != nil {
		return nil, err
	}
	return s, nil
}

// Hub returns the live tap the server reads from.
func (s *Server) Hub() *Hub { return s.hub }

// AddWHIPStream allows WHIP publishing to base.Stream. base supplies the
// descriptor fields the publisher cannot: Device, Clock and Latency (Kind,
// Codec, Source and Params are filled in by the server). With
// Clock == sample.ClockArrival, SrcT stays 0. Call it before Run.
func (s *Server) AddWHIPStream(base sample.Descriptor) {
	base.Kind = sample.KindVideo
	base.Codec = sample.CodecH264
	base.Source = "whip"
	base.Params = nil
	if base.Clock == "" {
		base.Clock = sample.ClockDevice
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ws := s.mu.whip[base.Stream]; ws != nil {
		ws.base = base
		return
	}
	s.mu.whip[base.Stream] = &whipStream{base: base}
}

// Mount registers the server's routes through handle, which takes Go 1.22
// mux patterns (for example (*api.Server).Handle):
//
//	POST   /whip/{stream...}                  WHIP ingest
//	DELETE /whip/sessions/{id}                end a WHIP session
//	POST   /whep/episodes/{id}/{stream...}    WHEP replay (?offset=DURATION)
//	POST   /whep/{stream...}                  WHEP live preview
//	DELETE /whep/sessions/{id}                end a WHEP session
//
// Stream ids contain slashes, hence the trailing wildcards; a live stream
// whose id starts with "episodes/" cannot be previewed.
func (s *Server) Mount(handle func(pattern string, h http.Handler)) {
	handle("POST /whip/{stream...}", http.HandlerFunc(s.HandleWHIP))
	handle("DELETE /whip/sessions/{id}", http.HandlerFunc(s.HandleWHIPDelete))
	handle("POST /whep/episodes/{id}/{stream...}", http.HandlerFunc(s.HandleWHEPReplay))
	handle("POST /whep/{stream...}", http.HandlerFunc(s.HandleWHEP))
	handle("DELETE /whep/sessions/{id}", http.HandlerFunc(s.HandleWHEPDelete))
}

// Run serves sessions until ctx is cancelled, then closes every session
// and waits for them. WHIP samples go to sink, each session writing from
// its own goroutine through a bounded queue.
func (s *Server) Run(ctx context.Context, sink devices.Sink) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	whipAPI, whepAPI, closeMux, err := s.buildAPIs()
	if err != nil {
		return err
	}
	defer closeMux()
	rs := &runState{ctx: ctx, sink: sink, whipAPI: whipAPI, whepAPI: whepAPI}
	s.mu.Lock()
	s.mu.rs = rs
	s.mu.Unlock()
	s.log.Info("webrtc serving", "interfaces", s.o.Interfaces, "udp_port", s.o.UDPPort,
		"loopback", s.o.IncludeLoopback)

	<-ctx.Done()

	s.mu.Lock()
	s.mu.rs = nil
	open := make([]*session, 0, len(s.mu.sessions))
	for _, ss := range s.mu.sessions {
		open = append(open, ss)
	}
	s.mu.Unlock()
	for _, ss := range open {
		ss.cancel()
	}
	rs.wg.Wait()
	s.log.Info("webrtc stopped", "closed_sessions", len(open))
	return nil
}

// buildAPIs makes the pion APIs for WHIP (receive) and WHEP (send): LAN
// host candidates only, UDP4, no mDNS, optionally one muxed UDP port.
func (s *Server) buildAPIs() (whipAPI, whepAPI *webrtc.API, closeMux func(), err error) {
	filter := func(string) bool { return true }
	if len(s.o.Interfaces) > 0 {
		allowed := slices.Clone(s.o.Interfaces)
		filter = func(name string) bool { return slices.Contains(allowed, name) }
	}
	logs := pionLogs{s.log}
	closeMux = func() {}
	var mux ice.UDPMux
	if s.o.UDPPort != 0 {
		opts := []ice.UDPMuxFromPortOption{
			ice.UDPMuxFromPortWithInterfaceFilter(filter),
			ice.UDPMuxFromPortWithNetworks(ice.NetworkTypeUDP4),
			ice.UDPMuxFromPortWithLogger(logs.NewLogger("udpmux")),
		}
		if s.o.IncludeLoopback {
			opts = append(opts, ice.UDPMuxFromPortWithLoopback())
		}
		m, err := ice.NewMultiUDPMuxFromPort(s.o.UDPPort, opts...)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("listen on ice udp port %d: %w", s.o.UDPPort, err)
		}
		mux = m
		closeMux = func() { _ = m.Close() }
	}
	settings := func(receive bool) *webrtc.SettingEngine {
		se := &webrtc.SettingEngine{LoggerFactory: logs}
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
		se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
		se.SetIncludeLoopbackCandidate(s.o.IncludeLoopback)
		se.SetInterfaceFilter(filter)
		se.SetICETimeouts(iceDisconnectedTimeout, iceFailedTimeout, iceKeepalive)
		if mux != nil {
			se.SetICEUDPMux(mux)
		}
		// OnTrack fires at negotiation (for declared SSRCs), so the
		// sender-report reader runs before the first RTP packet.
		se.SetFireOnTrackBeforeFirstRTP(receive)
		return se
	}
	build := func(receive bool) (*webrtc.API, error) {
		m := &webrtc.MediaEngine{}
		fb := []webrtc.RTCPFeedback{{Type: webrtc.TypeRTCPFBCCM, Parameter: "fir"}}
		nackOn := !receive || s.o.ReorderWait > 0
		if !nackOn {
			fb = append(fb, webrtc.RTCPFeedback{Type: webrtc.TypeRTCPFBNACK, Parameter: "pli"})
		}
		for i, p := range []string{"42e01f", "42001f", "4d001f", "640032"} {
			err := m.RegisterCodec(webrtc.RTPCodecParameters{
				RTPCodecCapability: webrtc.RTPCodecCapability{
					MimeType: webrtc.MimeTypeH264, ClockRate: 90000,
					SDPFmtpLine:  "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=" + p,
					RTCPFeedback: fb,
				},
				PayloadType: webrtc.PayloadType(102 + 2*i),
			}, webrtc.RTPCodecTypeVideo)
			if err != nil {
				return nil, fmt.Errorf("register h264 codec: %w", err)
			}
		}
		reg := &interceptor.Registry{}
		if err := webrtc.ConfigureRTCPReports(reg); err != nil {
			return nil, fmt.Errorf("configure rtcp reports: %w", err)
		}
		if nackOn {
			// Adds the nack and nack-pli feedback. WHEP answers NACKs
			// from viewers (responder); WHIP sends NACKs for gaps
			// (generator) while the reorderer waits.
			gen := []nack.GeneratorOption{nack.GeneratorInterval(20 * time.Millisecond),
				nack.GeneratorMaxNacksPerPacket(5), nack.GeneratorLog(logs.NewLogger("nack"))}
			if err := webrtc.ConfigureNackWithOptions(m, reg, gen); err != nil {
				return nil, fmt.Errorf("configure nack: %w", err)
			}
		}
		return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithSettingEngine(*settings(receive)),
			webrtc.WithInterceptorRegistry(reg)), nil
	}
	if whipAPI, err = build(true); err == nil {
		whepAPI, err = build(false)
	}
	if err != nil {
		closeMux()
		return nil, nil, nil, err
	}
	return whipAPI, whepAPI, closeMux, nil
}

// httpError is an error with the HTTP status to answer.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

// writeError answers err as the API's JSON error ({"error": "..."},
// internal/httpjson), like every other route: WHIP/WHEP clients show the
// body, and the dashboard's viewer reads its "error".
func (s *Server) writeError(w http.ResponseWriter, err error) {
	code, msg := http.StatusInternalServerError, "internal error"
	var he *httpError
	if errors.As(err, &he) {
		code, msg = he.code, he.msg
	} else {
		s.log.Warn("webrtc request failed", "err", err)
		msg = err.Error()
	}
	httpjson.Error(w, code, msg)
}

// readOffer reads and checks an SDP offer: content type application/sdp,
// parseable, with a video section offering H.264.
func readOffer(w http.ResponseWriter, r *http.Request) (string, error) {
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "application/sdp" {
		return "", errorf(http.StatusUnsupportedMediaType, "the request body must be an SDP offer (Content-Type: application/sdp)")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOfferSize))
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return "", errorf(http.StatusRequestEntityTooLarge, "SDP offer over %d bytes", mbe.Limit)
		}
		return "", errorf(http.StatusBadRequest, "read SDP offer: %v", err)
	}
	var sd sdp.SessionDescription
	if err := sd.Unmarshal(body); err != nil {
		return "", errorf(http.StatusBadRequest, "malformed SDP offer: %v", err)
	}
	video, h264 := false, false
	for _, md := range sd.MediaDescriptions {
		if md.MediaName.Media != "video" {
			continue
		}
		video = true
		for _, a := range md.Attributes {
			if a.Key == "rtpmap" && strings.Contains(strings.ToUpper(a.Value), " H264/90000") {
				h264 = true
			}
		}
	}
	switch {
	case !video:
		return "", errorf(http.StatusBadRequest, "the SDP offer has no video section")
	case !h264:
		return "", errorf(http.StatusBadRequest, "the SDP offer's video section does not offer H.264 (the only codec served)")
	}
	return string(body), nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// startSession registers a new session of kind on stream, or fails with
// the HTTP error to answer. For WHIP, ws is the stream, which must have no
// active publisher.
func (s *Server) startSession(kind, stream string, ws *whipStream) (*session, *runState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.mu.rs
	if rs == nil {
		return nil, nil, errorf(http.StatusServiceUnavailable, "webrtc is not running")
	}
	if len(s.mu.sessions) >= s.o.MaxSessions {
		return nil, nil, errorf(http.StatusServiceUnavailable, "too many webrtc sessions (limit %d)", s.o.MaxSessions)
	}
	if ws != nil && ws.active != nil {
		return nil, nil, errorf(http.StatusConflict, "stream %q already has a WHIP publisher; DELETE its session first", stream)
	}
	ctx, cancel := context.WithCancel(rs.ctx)
	ss := &session{id: newID(), kind: kind, stream: stream, created: time.Now(), ctx: ctx, cancel: cancel,
		done: make(chan struct{})}
	if ws != nil {
		ws.active = ss
		ws.sessions++
	}
	s.mu.sessions[ss.id] = ss
	rs.wg.Add(1)
	s.met.sessions.WithLabelValues(kind).Inc()
	return ss, rs, nil
}

// endSession unregisters ss after its teardown.
func (s *Server) endSession(ss *session, rs *runState) {
	s.mu.Lock()
	delete(s.mu.sessions, ss.id)
	if ws := s.mu.whip[ss.stream]; ss.kind == kindWHIP && ws != nil && ws.active == ss {
		ws.active = nil
	}
	s.mu.Unlock()
	s.met.sessions.WithLabelValues(ss.kind).Dec()
	close(ss.done)
	rs.wg.Done()
}

// watchState ends ss when its peer connection fails or closes.
func (s *Server) watchState(ss *session, connected chan<- struct{}) {
	var once sync.Once
	ss.pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		ss.state.Store(int32(st))
		switch st {
		case webrtc.PeerConnectionStateConnected:
			if connected != nil {
				once.Do(func() { close(connected) })
			}
		case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
			ss.cancel()
		}
	})
}

// connectDeadline ends ss if its peer does not connect within
// connectTimeout, so a client that POSTs and vanishes does not hold a
// session (or a WHIP stream) for ever.
func (s *Server) connectDeadline(ss *session, connected <-chan struct{}) {
	wait := time.Duration(s.connectTimeout.Load())
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-connected:
	case <-ss.ctx.Done():
	case <-t.C:
		s.log.Warn("webrtc peer did not connect; ending the session", "session", ss.id, "kind", ss.kind,
			"stream", ss.stream, "after", wait)
		ss.cancel()
	}
}

// answer applies offer to pc and returns the answer once ICE gathering is
// complete (no trickle ICE).
func answer(ctx context.Context, pc *webrtc.PeerConnection, offer string) (string, error) {
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", errorf(http.StatusBadRequest, "cannot use the SDP offer: %v", err)
	}
	ans, err := pc.CreateAnswer(nil)
	if err != nil {
		return "", errorf(http.StatusBadRequest, "cannot answer the SDP offer: %v", err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(ans); err != nil {
		return "", fmt.Errorf("set local description: %w", err)
	}
	t := time.NewTimer(gatherTimeout)
	defer t.Stop()
	select {
	case <-gathered:
	case <-ctx.Done():
		return "", errorf(http.StatusServiceUnavailable, "session closed while gathering ICE candidates")
	case <-t.C:
		return "", errorf(http.StatusInternalServerError, "ICE gathering did not complete within %v", gatherTimeout)
	}
	ld := pc.LocalDescription()
	if ld == nil {
		return "", errors.New("no local description after gathering")
	}
	if !strings.Contains(ld.SDP, "a=candidate:") {
		return "", errorf(http.StatusInternalServerError,
			"no ICE host candidates on the configured interfaces (check the webrtc interfaces setting; loopback needs IncludeLoopback)")
	}
	return ld.SDP, nil
}

func writeAnswer(w http.ResponseWriter, location, sdp string) {
	w.Header().Set("Content-Type", "application/sdp")
	w.Header().Set("Location", location)
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, sdp)
}

// handleDelete ends the session named in the path if its kind is one of
// kinds.
func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request, kinds ...string) {
	id := r.PathValue("id")
	s.mu.Lock()
	ss := s.mu.sessions[id]
	s.mu.Unlock()
	if ss == nil || !slices.Contains(kinds, ss.kind) {
		s.writeError(w, errorf(http.StatusNotFound, "no such session"))
		return
	}
	ss.cancel()
	t := time.NewTimer(deleteWait)
	defer t.Stop()
	select {
	case <-ss.done:
	case <-t.C:
	case <-r.Context().Done():
	}
	w.WriteHeader(http.StatusOK)
}

// HandleWHIPDelete ends a WHIP session: DELETE on the Location returned
// by HandleWHIP. Unknown sessions answer 404.
func (s *Server) HandleWHIPDelete(w http.ResponseWriter, r *http.Request) {
	s.handleDelete(w, r, kindWHIP)
}

// HandleWHEPDelete ends a WHEP (live or replay) session. Unknown sessions
// answer 404.
func (s *Server) HandleWHEPDelete(w http.ResponseWriter, r *http.Request) {
	s.handleDelete(w, r, kindWHEP, kindReplay)
}

// Stats is a snapshot for /v1/status.
type Stats struct {
	WHIP     []WHIPStats    `json:"whip"`
	Sessions []SessionStats `json:"sessions"`
}

// WHIPStats are one WHIP stream's counters, over all its sessions.
type WHIPStats struct {
	Stream        string `json:"stream"`
	Device        string `json:"device"`
	Publishing    bool   `json:"publishing"`
	Sessions      uint64 `json:"sessions"`
	Frames        uint64 `json:"frames"`
	Keyframes     uint64 `json:"keyframes"`
	Bytes         uint64 `json:"bytes"`
	RTPBytes      uint64 `json:"rtp_bytes"`
	SenderReports uint64 `json:"sender_reports"`
	// RecoveredGaps counts sequence gaps closed by a retransmission
	// (NACK) or a reordered packet before ReorderWait ran out.
	RecoveredGaps uint64 `json:"recovered_gaps"`
	DroppedFrames uint64 `json:"dropped_frames"`
	QueueFull     uint64 `json:"queue_full"`
	LostPackets   uint64 `json:"lost_packets"`
	DecodeErrors  uint64 `json:"decode_errors"`
}

// SessionStats describe one open session.
type SessionStats struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"` // whip, whep, replay
	Stream  string    `json:"stream"`
	Episode string    `json:"episode,omitempty"`
	State   string    `json:"state"`
	Created time.Time `json:"created"`
	// For WHEP sessions.
	SentFrames    uint64 `json:"sent_frames,omitempty"`
	SentBytes     uint64 `json:"sent_bytes,omitempty"`
	DroppedFrames uint64 `json:"dropped_frames,omitempty"`
	PLIs          uint64 `json:"plis,omitempty"`
}

// Stats returns a snapshot of the WHIP streams and open sessions.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out Stats
	for id, ws := range s.mu.whip {
		out.WHIP = append(out.WHIP, WHIPStats{
			Stream: id, Device: ws.base.Device, Publishing: ws.active != nil, Sessions: ws.sessions,
			Frames: ws.frames.Load(), Keyframes: ws.keyframes.Load(), Bytes: ws.bytes.Load(),
			RTPBytes: ws.rtpBytes.Load(), SenderReports: ws.srs.Load(), RecoveredGaps: ws.filledGaps.Load(),
			DroppedFrames: ws.cnt.Dropped.Load(), QueueFull: ws.cnt.QueueFull.Load(),
			LostPackets: ws.cnt.Lost.Load(), DecodeErrors: ws.cnt.DecodeErrors.Load(),
		})
	}
	for _, ss := range s.mu.sessions {
		st := SessionStats{ID: ss.id, Kind: ss.kind, Stream: ss.stream, Episode: ss.episode,
			State: webrtc.PeerConnectionState(ss.state.Load()).String(), Created: ss.created,
			SentFrames: ss.sentFrames.Load(), SentBytes: ss.sentBytes.Load(), PLIs: ss.plis.Load()}
		if v := ss.viewer.Load(); v != nil {
			st.DroppedFrames = v.dropped.Load()
		}
		out.Sessions = append(out.Sessions, st)
	}
	sort.Slice(out.WHIP, func(i, j int) bool { return out.WHIP[i].Stream < out.WHIP[j].Stream })
	sort.Slice(out.Sessions, func(i, j int) bool { return out.Sessions[i].Created.Before(out.Sessions[j].Created) })
	return out
}
