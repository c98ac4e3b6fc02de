package webrtc

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v4"

	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// replayTail is how long a replay session stays open after its last frame,
// so the last packets reach the viewer before the connection closes.
const replayTail = 500 * time.Millisecond

// rtpOut packetizes Annex-B access units onto one outgoing track, with RTP
// timestamps taken from the samples' T (so the viewer plays them at their
// recorded timing).
type rtpOut struct {
	track   *webrtc.TrackLocalStaticRTP
	enc     *rtph264.Encoder
	base    uint32
	t0      int64
	started bool
	ss      *session
	bytesM  func(float64)
}

func newRTPOut(ss *session, track *webrtc.TrackLocalStaticRTP, bytesM func(float64)) (*rtpOut, error) {
	enc := &rtph264.Encoder{PayloadType: 96, PayloadMaxSize: rtpPayloadMax, PacketizationMode: 1}
	if err := enc.Init(); err != nil {
		return nil, fmt.Errorf("init h264 packetizer: %w", err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &rtpOut{track: track, enc: enc, base: binary.BigEndian.Uint32(b[:]), ss: ss, bytesM: bytesM}, nil
}

// ticks converts a duration in ns to 90 kHz RTP ticks without overflow.
func ticks(d int64) uint32 {
	return uint32(d/1e9*90000 + d%1e9*90000/1e9)
}

// send writes one sample; params are put in front of an IDR that lacks
// them.
func (o *rtpOut) send(s sample.Sample, params [][]byte) error {
	t := s.PTS() // RTP timestamps are presentation times
	if s.T == 0 {
		t = s.RecvT
	}
	if !o.started {
		o.started, o.t0 = true, t
	}
	au, ok := video.SplitAU(s.Payload)
	if !ok {
		if len(s.Payload) == 0 {
			return nil
		}
		au = [][]byte{s.Payload} // one bare NAL unit
	}
	au = video.H264.WithParams(au, params, s.Flags.Has(sample.Keyframe))
	pkts, err := o.enc.Encode(au)
	if err != nil {
		return fmt.Errorf("packetize access unit: %w", err)
	}
	ts := o.base + ticks(t-o.t0)
	n := 0
	for _, p := range pkts {
		p.Timestamp = ts
		n += len(p.Payload)
		if err := o.track.WriteRTP(p); err != nil {
			return fmt.Errorf("write rtp: %w", err)
		}
	}
	o.ss.sentFrames.Add(1)
	o.ss.sentBytes.Add(uint64(n))
	o.bytesM(float64(n))
	return nil
}

// fmtpFor returns the SDP fmtp line for a stream with parameter sets
// params: its real profile-level-id if there is an SPS.
func fmtpFor(params [][]byte) string {
	pli := "42e01f"
	for _, p := range params {
		if len(p) >= 4 && h264.NALUType(p[0]&0x1f) == h264.NALUTypeSPS {
			pli = fmt.Sprintf("%02x%02x%02x", p[1], p[2], p[3])
		}
	}
	return "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=" + pli
}

// newViewerPeer makes the send-only peer connection of a WHEP session,
// applies offer, and returns the answer and the packetizer.
func (s *Server) newViewerPeer(ss *session, rs *runState, offer string, params [][]byte, connected chan struct{}) (string, *rtpOut, error) {
	pc, err := rs.whepAPI.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return "", nil, fmt.Errorf("new peer connection: %w", err)
	}
	ss.pc = pc
	ss.state.Store(int32(webrtc.PeerConnectionStateNew))
	s.watchState(ss, connected)
	track, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeH264, ClockRate: 90000, SDPFmtpLine: fmtpFor(params),
	}, "video", "episoded")
	if err != nil {
		return "", nil, fmt.Errorf("new track: %w", err)
	}
	sender, err := pc.AddTrack(track)
	if err != nil {
		return "", nil, fmt.Errorf("add track: %w", err)
	}
	// Read RTCP so the interceptors (NACK responder, reports) see it.
	go func() {
		for {
			pkts, _, err := sender.ReadRTCP()
			if err != nil {
				return
			}
			for _, p := range pkts {
				switch p.(type) {
				case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
					ss.plis.Add(1)
				}
			}
		}
	}()
	ans, err := answer(ss.ctx, pc, offer)
	if err != nil {
		return "", nil, err
	}
	bytesM := s.met.sentBytes.WithLabelValues(ss.kind)
	out, err := newRTPOut(ss, track, bytesM.Add)
	if err != nil {
		return "", nil, err
	}
	return ans, out, nil
}

// closeSession tears down a WHEP session.
func (s *Server) closeSession(ss *session, rs *runState) {
	ss.cancel()
	if ss.pc != nil {
		_ = ss.pc.Close()
	}
	s.endSession(ss, rs)
}

// HandleWHEP answers a WHEP offer for live preview of the stream in the
// path: 201 with the SDP answer and the session's Location; 404 if the
// stream has published no video yet; 415 for an H.265 stream (browsers
// rarely decode H.265 over WebRTC) or a body that is not application/sdp;
// 400 for a malformed offer or one without H.264.
//
// The viewer first gets the stream's cached keyframe, then the live
// stream from its next keyframe.
func (s *Server) HandleWHEP(w http.ResponseWriter, r *http.Request) {
	stream := r.PathValue("stream")
	desc, ok := s.hub.Descriptor(stream)
	if !ok {
		s.writeError(w, errorf(http.StatusNotFound, "stream %q is not live (no video published)", stream))
		return
	}
	if desc.Codec != sample.CodecH264 {
		s.writeError(w, errorf(http.StatusUnsupportedMediaType, "stream %q is %s; WHEP preview serves H.264 only (no transcoding)", stream, desc.Codec))
		return
	}
	offer, err := readOffer(w, r)
	if err != nil {
		s.writeError(w, err)
		return
	}
	ss, rs, err := s.startSession(kindWHEP, stream, nil)
	if err != nil {
		s.writeError(w, err)
		return
	}
	connected := make(chan struct{})
	ans, out, err := s.newViewerPeer(ss, rs, offer, desc.Params, connected)
	if err != nil {
		s.closeSession(ss, rs)
		s.writeError(w, err)
		return
	}
	writeAnswer(w, "/whep/sessions/"+ss.id, ans)
	log := s.log.With("session", ss.id, "kind", kindWHEP, "stream", stream)
	log.Info("whep session started", "remote", r.RemoteAddr)
	go s.connectDeadline(ss, connected)
	go func() {
		defer s.closeSession(ss, rs)
		err := s.serveLive(ss, out, connected)
		v := ss.viewer.Load()
		var dropped uint64
		if v != nil {
			dropped = v.dropped.Load()
		}
		log.Info("whep session ended", "sent_frames", ss.sentFrames.Load(), "dropped_frames", dropped, "err", err)
	}()
}

// serveLive forwards the hub's frames to the viewer once connected.
func (s *Server) serveLive(ss *session, out *rtpOut, connected <-chan struct{}) error {
	select {
	case <-connected:
	case <-ss.ctx.Done():
		return nil
	}
	dropsM := s.met.viewerDrops.WithLabelValues(ss.stream)
	v, ok := s.hub.subscribe(ss.stream, s.o.QueueSize, dropsM.Inc)
	if !ok {
		return errors.New("stream vanished")
	}
	ss.viewer.Store(v)
	s.met.viewers.WithLabelValues(ss.stream).Inc()
	defer func() {
		s.hub.unsubscribe(ss.stream, v)
		s.met.viewers.WithLabelValues(ss.stream).Dec()
	}()
	for {
		select {
		case <-ss.ctx.Done():
			return nil
		case it := <-v.ch:
			if err := out.send(it.s, it.desc.Params); err != nil {
				if errors.Is(err, io.ErrClosedPipe) {
					return nil
				}
				return err
			}
		}
	}
}

// HandleWHEPReplay answers a WHEP offer for replay of one stream of a
// stored episode, from ?offset=DURATION (default 0) into the episode's
// window: 201 with the SDP answer and Location; 404 for an unknown episode
// or a stream not in it; 400 for a bad offset or offer; 415 for H.265.
//
// Replay starts at the last keyframe at or before the offset (or the first
// after it if that one is gone) and is paced by the samples' T in real
// time. The session closes itself after the end
// of the window.
func (s *Server) HandleWHEPReplay(w http.ResponseWriter, r *http.Request) {
	id, stream := r.PathValue("id"), r.PathValue("stream")
	if s.src == nil {
		s.writeError(w, errorf(http.StatusNotFound, "replay is not available (no episode store)"))
		return
	}
	var offset time.Duration
	if q := r.URL.Query().Get("offset"); q != "" {
		d, err := time.ParseDuration(q)
		if err != nil || d < 0 {
			s.writeError(w, errorf(http.StatusBadRequest, "offset %q is not a non-negative duration such as 90s or 1m30s", q))
			return
		}
		offset = d
	}
	ep, err := s.src.Episode(id)
	if err != nil {
		if s.o.ErrNotFound == nil || errors.Is(err, s.o.ErrNotFound) {
			s.writeError(w, errorf(http.StatusNotFound, "no episode %q", id))
			return
		}
		s.writeError(w, fmt.Errorf("read episode %s: %w", id, err))
		return
	}
	if !slices.Contains(ep.Streams, stream) {
		s.writeError(w, errorf(http.StatusNotFound, "episode %q has no stream %q", id, stream))
		return
	}
	descs, err := s.src.Descriptors(stream)
	if err != nil && (s.o.ErrNotFound == nil || !errors.Is(err, s.o.ErrNotFound)) {
		s.writeError(w, fmt.Errorf("read descriptors of %s: %w", stream, err))
		return
	}
	if len(descs) == 0 {
		s.writeError(w, errorf(http.StatusNotFound, "stream %q has no stored descriptor", stream))
		return
	}
	for _, d := range descs {
		if d.Kind != sample.KindVideo {
			s.writeError(w, errorf(http.StatusBadRequest, "stream %q is %s, not video", stream, d.Kind))
			return
		}
		if d.Codec != sample.CodecH264 {
			s.writeError(w, errorf(http.StatusUnsupportedMediaType, "stream %q is %s; WHEP replay serves H.264 only (no transcoding)", stream, d.Codec))
			return
		}
	}
	from, to := ep.Window(time.Now().UnixNano())
	start := from + int64(offset)
	if start > to {
		s.writeError(w, errorf(http.StatusBadRequest, "offset %v is beyond the episode's end (%v long)", offset, time.Duration(to-from)))
		return
	}
	// Start at the last keyframe at or before the start (pre-roll), or the
	// first one after it if that keyframe is gone.
	vs, err := s.src.VideoStart(stream, start, to)
	if err != nil {
		s.writeError(w, fmt.Errorf("find the first keyframe of %s: %w", stream, err))
		return
	}
	if !vs.Found {
		s.writeError(w, errorf(http.StatusNotFound, "stream %q has no keyframe in the episode from offset %v", stream, offset))
		return
	}
	start = vs.T
	offer, err := readOffer(w, r)
	if err != nil {
		s.writeError(w, err)
		return
	}
	ss, rs, err := s.startSession(kindReplay, stream, nil)
	if err != nil {
		s.writeError(w, err)
		return
	}
	ss.episode = id
	connected := make(chan struct{})
	ans, out, err := s.newViewerPeer(ss, rs, offer, descs[len(descs)-1].Params, connected)
	if err != nil {
		s.closeSession(ss, rs)
		s.writeError(w, err)
		return
	}
	writeAnswer(w, "/whep/sessions/"+ss.id, ans)
	log := s.log.With("session", ss.id, "kind", kindReplay, "stream", stream, "episode", id)
	log.Info("replay session started", "remote", r.RemoteAddr, "offset", offset)
	go s.connectDeadline(ss, connected)
	go func() {
		defer s.closeSession(ss, rs)
		err := s.serveReplay(ss, out, connected, descs, start, to)
		log.Info("replay session ended", "sent_frames", ss.sentFrames.Load(), "err", err)
	}()
}

// paramsAt returns the parameter sets in force at t.
func paramsAt(descs []sample.Descriptor, t int64) [][]byte {
	p := descs[0].Params
	for _, d := range descs {
		if d.Since <= t {
			p = d.Params
		}
	}
	return p
}

// serveReplay reads [from, to] in chunks of ReplayChunk and sends the
// samples, from the first keyframe on, paced by T against the monotonic
// clock.
func (s *Server) serveReplay(ss *session, out *rtpOut, connected <-chan struct{}, descs []sample.Descriptor, from, to int64) error {
	select {
	case <-connected:
	case <-ss.ctx.Done():
		return nil
	}
	var (
		started bool
		t0      int64
		wall0   time.Time
		timer   = time.NewTimer(0)
		buf     []sample.Sample
	)
	<-timer.C
	defer timer.Stop()
	chunk := int64(s.o.ReplayChunk)
	for cur := from; cur <= to; {
		end := min(cur+chunk-1, to)
		buf = buf[:0]
		for smp, err := range s.src.Range(ss.stream, cur, end) {
			if err != nil {
				return fmt.Errorf("read %s [%d, %d]: %w", ss.stream, cur, end, err)
			}
			buf = append(buf, smp)
		}
		cur = end + 1
		for _, smp := range buf {
			if !started {
				// from is a keyframe's T (VideoStart); samples sharing
				// that T but decoded before it are skipped too.
				if !smp.Flags.Has(sample.Keyframe) {
					continue
				}
				started, t0, wall0 = true, smp.T, time.Now()
			}
			if wait := time.Until(wall0.Add(time.Duration(smp.T - t0))); wait > 0 {
				timer.Reset(wait)
				select {
				case <-ss.ctx.Done():
					return nil
				case <-timer.C:
				}
			} else if ss.ctx.Err() != nil {
				return nil
			}
			if err := out.send(smp, paramsAt(descs, smp.T)); err != nil {
				if errors.Is(err, io.ErrClosedPipe) {
					return nil
				}
				return err
			}
		}
	}
	timer.Reset(replayTail)
	select {
	case <-ss.ctx.Done():
	case <-timer.C:
	}
	return nil
}
