package webrtc

import (
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

const (
	// pliInterval rate-limits keyframe requests to a WHIP publisher.
	pliInterval = 500 * time.Millisecond
	// reorderMaxHeld bounds the packets held after a gap (about 1 s of
	// 4 Mbit/s video).
	reorderMaxHeld = 512
)

// frame is one access unit queued for the sink.
type frame struct {
	payload     []byte
	key         bool
	srcT, recvT int64
	ptsOffset   int64
	lost        uint32
	dropped     uint32
	disc        bool
	desc        *sample.Descriptor // non-nil: Describe before writing
}

// whipSession is the ingest side of one WHIP session.
//
// Goroutines: one RTP reader and one RTCP reader per accepted track
// (started from pion's OnTrack, never blocking pion), and one writer that
// is the only caller of the sink. The reader assembles access units and
// hands them to the writer through queue; when queue is full the unit is
// dropped, and so is everything after it until the next keyframe (counted
// as dropped, the next written sample carries Discontinuity).
type whipSession struct {
	s      *Server
	ss     *session
	ws     *whipStream
	base   sample.Descriptor
	reconn bool // the stream had an earlier session: the first sample is a discontinuity
	queue  chan frame
	wdone  chan struct{}
	sr     atomic.Pointer[video.SenderReport]
	mu     struct {
		sync.Mutex
		closed bool
		track  bool // a video track is being read
	}
	readers sync.WaitGroup
}

// HandleWHIP answers a WHIP offer for the stream in the path: 201 with the
// SDP answer and the session's Location; 404 for a stream that is not a
// configured WHIP stream; 409 if the stream already has a publisher; 400
// for a malformed offer or one without H.264 video; 415 for a body that is
// not application/sdp; 503 before Run or beyond MaxSessions.
//
// Bearer-token auth is enforced by the API server in front of this
// handler when a token is configured; without a token, WHIP is open to
// whoever can reach the API port (loopback by default).
func (s *Server) HandleWHIP(w http.ResponseWriter, r *http.Request) {
	stream := r.PathValue("stream")
	s.mu.Lock()
	ws := s.mu.whip[stream]
	s.mu.Unlock()
	if ws == nil {
		s.writeError(w, errorf(http.StatusNotFound, "stream %q is not a WHIP stream", stream))
		return
	}
	offer, err := readOffer(w, r)
	if err != nil {
		s.writeError(w, err)
		return
	}
	ss, rs, err := s.startSession(kindWHIP, stream, ws)
	if err != nil {
		s.writeError(w, err)
		return
	}
	s.mu.Lock()
	base, reconn := ws.base, ws.sessions > 1
	s.mu.Unlock()
	wh := &whipSession{s: s, ss: ss, ws: ws, base: base, reconn: reconn,
		queue: make(chan frame, s.o.QueueSize), wdone: make(chan struct{})}
	ss.whip = wh
	go func() {
		defer close(wh.wdone)
		wh.writeLoop(rs.sink)
	}()
	log := s.log.With("session", ss.id, "kind", kindWHIP, "stream", stream)

	pc, err := rs.whipAPI.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		wh.teardown(rs)
		s.writeError(w, err)
		return
	}
	ss.pc = pc
	ss.state.Store(int32(webrtc.PeerConnectionStateNew))
	connected := make(chan struct{})
	s.watchState(ss, connected)
	pc.OnTrack(func(track *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
		if track.Kind() != webrtc.RTPCodecTypeVideo {
			return
		}
		wh.mu.Lock()
		defer wh.mu.Unlock()
		if wh.mu.closed || wh.mu.track {
			return // one video track per session
		}
		wh.mu.track = true
		wh.readers.Add(2)
		go wh.readRTCP(recv)
		go wh.readRTP(track)
	})
	ans, err := answer(ss.ctx, pc, offer)
	if err != nil {
		wh.teardown(rs)
		s.writeError(w, err)
		return
	}
	writeAnswer(w, "/whip/sessions/"+ss.id, ans)
	log.Info("whip session started", "remote", r.RemoteAddr)
	go s.connectDeadline(ss, connected)
	go func() {
		<-ss.ctx.Done()
		wh.teardown(rs)
		log.Info("whip session ended", "frames", ws.frames.Load(), "dropped", ws.cnt.Dropped.Load(),
			"lost_packets", ws.cnt.Lost.Load())
	}()
}

// teardown closes the peer connection, waits for the readers, drains the
// queue into the sink and unregisters the session.
func (wh *whipSession) teardown(rs *runState) {
	wh.ss.cancel()
	wh.mu.Lock()
	wh.mu.closed = true
	wh.mu.Unlock()
	if wh.ss.pc != nil {
		_ = wh.ss.pc.Close()
	}
	wh.readers.Wait()
	close(wh.queue)
	<-wh.wdone
	wh.s.endSession(wh.ss, rs)
}

// readRTCP keeps the latest sender report of the track.
func (wh *whipSession) readRTCP(recv *webrtc.RTPReceiver) {
	defer wh.readers.Done()
	for {
		pkts, _, err := recv.ReadRTCP()
		if err != nil {
			return
		}
		for _, p := range pkts {
			if sr, ok := p.(*rtcp.SenderReport); ok {
				wh.sr.Store(&video.SenderReport{SSRC: sr.SSRC, NTP: video.NTPToUnixNano(sr.NTPTime), RTP: sr.RTPTime})
				wh.ws.srs.Add(1)
			}
		}
	}
}

// readRTP assembles the track's packets into access units and queues
// them for the writer. It asks the publisher for a keyframe (PLI) while
// frames are being discarded for want of one.
func (wh *whipSession) readRTP(track *webrtc.TrackRemote) {
	defer wh.readers.Done()
	s, ws := wh.s, wh.ws
	stream := wh.base.Stream
	recvBytes := s.met.recvBytes.WithLabelValues(stream)
	lostM := s.met.whipLost.WithLabelValues(stream)
	droppedM := s.met.whipDropped.WithLabelValues(stream)
	deviceClock := wh.base.Clock == sample.ClockDevice
	var recvT int64
	asm := video.NewAssembler(video.H264, nil, nil, &ws.cnt, func(u video.Unit) bool {
		f := frame{payload: u.Payload(), key: u.Key, recvT: recvT, ptsOffset: u.PTSOffset,
			lost: u.Lost, dropped: u.Dropped, disc: u.Disc}
		if deviceClock {
			if sr := wh.sr.Load(); sr != nil {
				f.srcT = sr.At(u.TS, video.ClockRate)
			}
		}
		if u.Params != nil {
			d := wh.base
			d.Params = u.Params
			f.desc = &d
		}
		select {
		case wh.queue <- f:
			return true
		default:
			return false
		}
	})
	if wh.reconn {
		asm.MarkDiscontinuity() // the time between sessions is one gap
	}
	var lastPLI time.Time
	handle := func(pkt *rtp.Packet) {
		n := len(pkt.Payload)
		ws.rtpBytes.Add(uint64(n))
		recvBytes.Add(float64(n))
		lost, dropped := ws.cnt.Lost.Load(), ws.cnt.Dropped.Load()
		asm.Push(pkt)
		if d := ws.cnt.Lost.Load() - lost; d > 0 {
			lostM.Add(float64(d))
		}
		if d := ws.cnt.Dropped.Load() - dropped; d > 0 {
			droppedM.Add(float64(d))
			if asm.WaitingForKey() && time.Since(lastPLI) >= pliInterval {
				lastPLI = time.Now()
				_ = wh.ss.pc.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: pkt.SSRC}})
			}
		}
	}
	ro := newReorderer(s.o.ReorderWait, reorderMaxHeld, &ws.filledGaps)
	var deadline time.Time
	for {
		if dl := ro.deadline(); !dl.Equal(deadline) {
			deadline = dl
			_ = track.SetReadDeadline(dl)
		}
		pkt, _, err := track.ReadRTP()
		now := time.Now()
		recvT = now.UnixNano()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				ro.expire(now, handle)
				continue
			}
			return
		}
		ro.push(pkt, now, handle)
		ro.expire(now, handle)
	}
}

// writeLoop is the only goroutine that calls the sink. It drains queue
// until it is closed.
//
// A frame the sink refuses (Describe or Write error) is dropped, and
// frames are then dropped until the next keyframe; the next written sample
// carries Discontinuity and the counts.
func (wh *whipSession) writeLoop(sink devices.Sink) {
	s, ws := wh.s, wh.ws
	stream := wh.base.Stream
	framesM := s.met.whipFrames.WithLabelValues(stream)
	droppedM := s.met.whipDropped.WithLabelValues(stream)
	var (
		pendDesc              *sample.Descriptor
		waitKey, disc         bool
		pendLost, pendDropped uint32
		sinkErrs              uint64
		lastErrLog            time.Time
	)
	// drop discards f and everything up to the next keyframe; the next
	// written sample carries Discontinuity and the counts.
	drop := func(f frame) {
		waitKey, disc = true, true
		pendLost += f.lost
		pendDropped += f.dropped + 1
		ws.cnt.Dropped.Add(1)
		droppedM.Inc()
	}
	refuse := func(f frame, err error) {
		drop(f)
		sinkErrs++
		if time.Since(lastErrLog) >= 10*time.Second {
			lastErrLog = time.Now()
			wh.s.log.Warn("sink refused whip frames; dropping until the next keyframe", "stream", stream,
				"err", err, "refused", sinkErrs)
		}
	}
	for f := range wh.queue {
		if f.desc != nil {
			pendDesc = f.desc
		}
		if waitKey && !f.key {
			drop(f)
			continue
		}
		if sink == nil {
			refuse(f, errors.New("no sink"))
			continue
		}
		if pendDesc != nil {
			if err := sink.Describe(*pendDesc); err != nil {
				refuse(f, err)
				continue
			}
			pendDesc = nil
		}
		smp := sample.Sample{
			Stream:    stream,
			SrcT:      f.srcT,
			RecvT:     f.recvT,
			PTSOffset: f.ptsOffset,
			Lost:      f.lost + pendLost,
			Dropped:   f.dropped + pendDropped,
			Payload:   f.payload,
		}
		if f.key {
			smp.Flags |= sample.Keyframe
		}
		if f.disc || disc || smp.Lost > 0 || smp.Dropped > 0 {
			smp.Flags |= sample.Discontinuity
		}
		if err := sink.Write(smp, nil); err != nil {
			refuse(f, err)
			continue
		}
		waitKey, disc, pendLost, pendDropped = false, false, 0, 0
		ws.frames.Add(1)
		ws.bytes.Add(uint64(len(f.payload)))
		if f.key {
			ws.keyframes.Add(1)
		}
		framesM.Inc()
	}
}
