package rtsp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/bluenviron/gortsplib/v4/pkg/headers"
	"github.com/bluenviron/gortsplib/v4/pkg/liberrors"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// Sentinel errors, found with errors.Is on the errors in Status and logs.
var (
	// ErrUnauthorized: the camera answered 401 or 403.
	ErrUnauthorized = errors.New("rtsp: unauthorized (check username and password)")
	// ErrNoSupportedCodec: the SDP offers no H.264 or H.265 video that can be
	// depacketized (H.264 packetization-mode 2 and H.265 DONL are not).
	ErrNoSupportedCodec = errors.New("rtsp: no supported H.264 or H.265 video in the session description")
	// ErrNoFrames: no RTP packet arrived within ReadTimeout.
	ErrNoFrames = errors.New("rtsp: no RTP packets within read timeout")
	// ErrRunning: Run was called twice.
	ErrRunning = errors.New("rtsp: already running")
)

// Error is a session failure. Its text has the URL redacted and any
// credential scrubbed. It deliberately does not wrap the library's error,
// whose text may carry a credential; Unwrap yields one of the sentinels, or
// nil.
type Error struct {
	Op   string // "connect", "describe", "setup", "play", "read"
	Msg  string // scrubbed
	kind error
}

func (e *Error) Error() string { return "rtsp " + e.Op + ": " + e.Msg }

// Unwrap returns the sentinel that classifies e, if any.
func (e *Error) Unwrap() error { return e.kind }

// Stats is a counters snapshot, for /v1/status.
type Stats struct {
	Codec         string  `json:"codec,omitempty"`
	Frames        uint64  `json:"frames"`
	Bytes         uint64  `json:"bytes"`
	Keyframes     uint64  `json:"keyframes"`
	DroppedFrames uint64  `json:"dropped_frames"`
	QueueFull     uint64  `json:"queue_full"`
	LostPackets   uint64  `json:"lost_packets"`
	DecodeErrors  uint64  `json:"decode_errors"`
	Reconnects    uint64  `json:"reconnects"`
	FPS           float64 `json:"fps"`
	Bitrate       float64 `json:"bitrate_bps"`
}

// counters are updated lock-free from the reader and writer goroutines.
type counters struct {
	frames, bytes, keyframes atomic.Uint64
	// asm: lost packets, dropped frames, decode errors, queue full.
	asm                  video.Counters
	fpsBits, bitrateBits atomic.Uint64 // math.Float64bits
	codec                atomic.Value  // string
	lastPacket           atomic.Int64  // unix ns of the last RTP packet
	// tapped counts RTP packets read by the tap (bufferedConn) rather
	// than through gortsplib (for tests).
	tapped           atomic.Uint64
	sessionsWithData atomic.Uint64
}

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

// Camera records one RTSP camera. Create it with New and start it with Run.
type Camera struct {
	o       Options
	u       *base.URL // with credentials, for the client only
	source  string    // redacted
	secrets []string
	log     *slog.Logger
	tracker *devices.Tracker
	cnt     counters
	running atomic.Bool
	reg     prometheus.Registerer
	metrics []prometheus.Collector
}

// New validates o and returns a Camera. It starts nothing; it registers the
// camera's metrics on o.Registerer.
func New(o Options) (*Camera, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("rtsp options: %w", err)
	}
	u, err := base.ParseURL(o.URL)
	if err != nil { // validated above
		return nil, fmt.Errorf("rtsp options: url %q: %w", redact.URL(o.URL), errors.New("invalid"))
	}
	var secrets []string
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			secrets = append(secrets, p)
		}
	}
	if o.Username != "" {
		if o.Password != "" {
			u.User = url.UserPassword(o.Username, o.Password)
		} else {
			u.User = url.User(o.Username)
		}
	} else if o.Password != "" {
		if u.User == nil {
			return nil, errors.New("rtsp options: password: set without username")
		}
		u.User = url.UserPassword(u.User.Username(), o.Password)
	}
	if o.Password != "" {
		secrets = append(secrets, o.Password)
	}
	for _, s := range append([]string(nil), secrets...) {
		secrets = append(secrets, url.PathEscape(s), url.QueryEscape(s))
	}
	// The credential-free form of the URL, for descriptors, logs and errors.
	clean := *(*url.URL)(u)
	clean.User = nil
	source := clean.String()
	if u.User != nil {
		source = redact.URL((*url.URL)(u).String())
	}
	c := &Camera{
		o:       o,
		u:       u,
		source:  source,
		secrets: secrets,
		log:     o.Logger.With("component", "devices.rtsp", "device", o.Device, "stream", o.Stream),
		tracker: devices.NewTracker(o.Device, "rtsp", nil),
	}
	c.cnt.codec.Store("")
	if err := c.register(o.Registerer); err != nil {
		return nil, err
	}
	return c, nil
}

// Status returns the connection state. LastError never carries a credential.
func (c *Camera) Status() devices.Status { return c.tracker.Status() }

// Stats returns a snapshot of the camera's counters.
func (c *Camera) Stats() Stats {
	return Stats{
		Codec:         c.cnt.codec.Load().(string),
		Frames:        c.cnt.frames.Load(),
		Bytes:         c.cnt.bytes.Load(),
		Keyframes:     c.cnt.keyframes.Load(),
		DroppedFrames: c.cnt.asm.Dropped.Load(),
		QueueFull:     c.cnt.asm.QueueFull.Load(),
		LostPackets:   c.cnt.asm.Lost.Load(),
		DecodeErrors:  c.cnt.asm.DecodeErrors.Load(),
		Reconnects:    c.tracker.Status().Reconnects,
		FPS:           math.Float64frombits(c.cnt.fpsBits.Load()),
		Bitrate:       math.Float64frombits(c.cnt.bitrateBits.Load()),
	}
}

// Run records the camera into sink until ctx is cancelled, reconnecting
// with backoff after every failure. It returns nil when ctx is cancelled,
// after the queued frames have been written.
func (c *Camera) Run(ctx context.Context, sink devices.Sink) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	queue := make(chan frame, c.o.QueueSize)
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		c.writeLoop(sink, queue)
	}()
	c.log.Info("camera starting", "url", c.source, "transport", c.o.Transport, "clock", c.o.Clock)
	var lastErr string
	repeats := 0
	err := devices.Supervise(ctx, c.tracker, c.o.Backoff, func(ctx context.Context, streaming func()) error {
		err := c.session(ctx, queue, func() {
			lastErr, repeats = "", 0 // a session that streamed: log its end
			streaming()
		})
		if err == nil || ctx.Err() != nil {
			return err
		}
		// A camera that stays down logs its error once at Warn, then
		// at Debug, with a Warn reminder every 100 attempts.
		if msg := err.Error(); msg != lastErr || repeats%100 == 99 {
			c.log.Warn("camera session ended", "err", err, "repeats", repeats)
			lastErr, repeats = msg, 0
		} else {
			repeats++
			c.log.Debug("camera session ended", "err", err, "repeats", repeats)
		}
		return err
	})
	// Every session has returned, so its client is closed and no reader
	// callback can send on queue any more.
	close(queue)
	<-wdone
	c.log.Info("camera stopped", "frames", c.cnt.frames.Load(), "dropped", c.cnt.asm.Dropped.Load(),
		"lost_packets", c.cnt.asm.Lost.Load())
	return err
}

// scrub turns a library error into an *Error with no credential in it.
func (c *Camera) scrub(op string, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	kind := error(nil)
	var bad liberrors.ErrClientBadStatusCode
	if errors.As(err, &bad) && (bad.Code == base.StatusUnauthorized || bad.Code == base.StatusForbidden) {
		kind = ErrUnauthorized
	}
	msg := err.Error()
	if full := (*url.URL)(c.u).String(); full != "" {
		msg = strings.ReplaceAll(msg, full, c.source)
	}
	msg = redact.String(msg, c.secrets...)
	if kind != nil {
		msg = kind.Error() + ": " + msg
	}
	return &Error{Op: op, Msg: c.source + ": " + msg, kind: kind}
}

func (c *Camera) transport() *gortsplib.Transport {
	var t gortsplib.Transport
	switch c.o.Transport {
	case "udp":
		t = gortsplib.TransportUDP
	case "auto":
		return nil
	default:
		t = gortsplib.TransportTCP
	}
	return &t
}

// session is one connection: connect, describe, set up the video media,
// play, and pump packets until an error, a read timeout or ctx.
func (c *Camera) session(ctx context.Context, queue chan<- frame, streaming func()) error {
	var dial dialer
	client := &gortsplib.Client{
		Scheme:      c.u.Scheme,
		Host:        c.u.Host,
		ReadTimeout: c.o.ReadTimeout,
		Transport:   c.transport(),
		DialContext: dial.dial,
		// Losses are counted from sequence gaps by the assembler, which
		// sees the same packets; this only silences the default logger.
		OnPacketsLost: func(uint64) {},
		OnDecodeError: func(error) { c.cnt.asm.DecodeErrors.Add(1) },
	}
	if err := client.Start2(); err != nil {
		return c.scrub("connect", err)
	}
	defer client.Close()
	stop := context.AfterFunc(ctx, client.Close)
	defer stop()

	desc, _, err := client.Describe(c.u)
	if err != nil {
		return c.scrub("describe", err)
	}
	var (
		h264f *format.H264
		h265f *format.H265
		cd    *video.Codec
		medi  *description.Media
		forma format.Format
		sdp   [][]byte
		dec   func() (video.Depacketizer, error)
	)
	if m := desc.FindFormat(&h264f); m != nil {
		medi, forma, cd = m, h264f, video.H264
		sps, pps := h264f.SafeParams()
		sdp = [][]byte{sps, pps}
		// Frames are built in Annex-B as their packets arrive (no
		// join-then-copy); see video.H264Depacketizer.
		dec = func() (video.Depacketizer, error) { return video.NewH264Depacketizer(h264f.PacketizationMode) }
	} else if m := desc.FindFormat(&h265f); m != nil {
		medi, forma, cd = m, h265f, video.H265
		vps, sps, pps := h265f.SafeParams()
		sdp = [][]byte{vps, sps, pps}
		dec = func() (video.Depacketizer, error) { return h265f.CreateDecoder() }
	} else {
		var codecs []string
		for _, m := range desc.Medias {
			for _, f := range m.Formats {
				codecs = append(codecs, f.Codec())
			}
		}
		return &Error{Op: "describe", Msg: fmt.Sprintf("%s: %s (offered: %s)", c.source, ErrNoSupportedCodec.Error(),
			strings.Join(codecs, ", ")), kind: ErrNoSupportedCodec}
	}
	c.cnt.codec.Store(string(cd.Name))
	if _, err := dec(); err != nil {
		// For example H.264 packetization-mode 2 or H.265 with DONL.
		return &Error{Op: "describe", Msg: fmt.Sprintf("%s: %s: %s", c.source, ErrNoSupportedCodec.Error(),
			redact.String(err.Error(), c.secrets...)), kind: ErrNoSupportedCodec}
	}
	setupRes, err := client.Setup(desc.BaseURL, medi, 0, 0)
	if err != nil {
		return c.scrub("setup", err)
	}

	reconnected := c.cnt.sessionsWithData.Load() > 0
	firstData := make(chan struct{})
	var gotData bool
	// Sender reports are decoded here rather than with client.PacketNTP:
	// gortsplib v4.16.2 reads the NTP fraction as nanoseconds instead of
	// 1/2^32 s (RFC 3550 4), which is off by up to 3.3 s with real cameras.
	var srMap atomic.Pointer[video.SenderReport]
	clockRate := int64(forma.ClockRate())
	client.OnPacketRTCP(medi, func(p rtcp.Packet) {
		if sr, ok := p.(*rtcp.SenderReport); ok {
			srMap.Store(&video.SenderReport{SSRC: sr.SSRC, NTP: video.NTPToUnixNano(sr.NTPTime), RTP: sr.RTPTime})
		}
	})
	rtcpClock := c.o.Clock == "rtcp"
	tmpl := sample.Descriptor{
		Stream:  c.o.Stream,
		Kind:    sample.KindVideo,
		Codec:   cd.Name,
		Device:  c.o.Device,
		Source:  c.source,
		Clock:   sample.ClockDevice,
		Latency: int64(c.o.Latency),
	}
	if !rtcpClock {
		tmpl.Clock = sample.ClockArrival
	}
	var recvT int64
	asm := video.NewAssembler(cd, sdp, dec, &c.cnt.asm, func(u video.Unit) bool {
		f := frame{payload: u.Payload(), key: u.Key, recvT: recvT, ptsOffset: u.PTSOffset,
			lost: u.Lost, dropped: u.Dropped, disc: u.Disc}
		if rtcpClock {
			if m := srMap.Load(); m != nil && m.SSRC == u.SSRC {
				f.srcT = m.At(u.TS, clockRate)
			}
		}
		if u.Params != nil {
			d := tmpl
			d.Params = u.Params
			f.desc = &d
		}
		select {
		case queue <- f:
		default:
			return false
		}
		if !gotData {
			gotData = true
			c.cnt.sessionsWithData.Add(1)
			close(firstData)
		}
		return true
	})
	if reconnected {
		asm.MarkDiscontinuity() // the outage is one gap
	}
	onRTP := func(pkt *rtp.Packet, now int64) {
		recvT = now
		c.cnt.lastPacket.Store(recvT)
		asm.Push(pkt)
	}
	client.OnPacketRTP(medi, forma, func(pkt *rtp.Packet) { onRTP(pkt, time.Now().UnixNano()) })

	if _, err := client.Play(nil); err != nil {
		return c.scrub("play", err)
	}
	if h264f != nil && c.u.Scheme == "rtsp" && len(medi.Formats) == 1 {
		c.tapRTP(&dial, setupRes, forma.PayloadType(), onRTP)
	}
	c.log.Info("camera playing", "codec", cd.Name, "transport", c.o.Transport)
	started := time.Now()
	c.cnt.lastPacket.Store(started.UnixNano())

	waitErr := make(chan error, 1)
	go func() { waitErr <- client.Wait() }()
	tick := time.NewTicker(min(time.Second, c.o.ReadTimeout/4))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-waitErr:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return c.scrub("read", err)
		case <-firstData:
			firstData = nil
			streaming()
		case now := <-tick.C:
			if idle := now.Sub(time.Unix(0, c.cnt.lastPacket.Load())); idle > c.o.ReadTimeout {
				return &Error{Op: "read", Msg: fmt.Sprintf("%s: %s (%v)", c.source, ErrNoFrames.Error(),
					idle.Round(time.Millisecond)), kind: ErrNoFrames}
			}
		}
	}
}

// tapRTP hands the session's RTP packets to onRTP straight from the read
// buffer (see bufferedConn) when the session runs over TCP on a plain
// connection (under TLS the buffer holds ciphertext). Only for H.264:
// video.H264Depacketizer copies what it keeps out of the packet, which is
// valid only during the call (gortsplib's H.265 decoder keeps fragments).
// Packets are checked as gortsplib checks them (a malformed packet or
// another payload type is a decode error).
func (c *Camera) tapRTP(d *dialer, setupRes *base.Response, payloadType uint8, onRTP func(*rtp.Packet, int64)) {
	conn := d.last.Load()
	if conn == nil || setupRes == nil {
		return
	}
	var th headers.Transport
	if err := th.Unmarshal(setupRes.Header["Transport"]); err != nil || th.InterleavedIDs == nil {
		return // UDP
	}
	var pkt rtp.Packet
	conn.setTap(th.InterleavedIDs[0], min(tapPassEvery, c.o.ReadTimeout/4), func(b []byte, now int64) {
		if err := pkt.Unmarshal(b); err != nil || pkt.PayloadType != payloadType {
			c.cnt.asm.DecodeErrors.Add(1)
			return
		}
		c.cnt.tapped.Add(1)
		onRTP(&pkt, now)
	})
}

// writeLoop is the only goroutine that calls the sink. It drains queue
// until it is closed.
//
// A frame the sink refuses (Describe or Write error) is dropped, and frames
// are then dropped until the next keyframe; the next written sample carries
// Discontinuity and the counts.
func (c *Camera) writeLoop(sink devices.Sink, queue <-chan frame) {
	var (
		pendDesc              *sample.Descriptor
		waitKey, disc         bool
		pendLost, pendDropped uint32
		sinkErrs              uint64
	)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := time.Now()
	lastFrames, lastBytes := c.cnt.frames.Load(), c.cnt.bytes.Load()
	logEvery := 0
	for {
		var f frame
		var ok bool
		select {
		case f, ok = <-queue:
			if !ok {
				return
			}
		case now := <-tick.C:
			dt := now.Sub(last).Seconds()
			fr, by := c.cnt.frames.Load(), c.cnt.bytes.Load()
			if dt > 0 {
				c.cnt.fpsBits.Store(math.Float64bits(float64(fr-lastFrames) / dt))
				c.cnt.bitrateBits.Store(math.Float64bits(float64(by-lastBytes) * 8 / dt))
			}
			last, lastFrames, lastBytes = now, fr, by
			if logEvery++; logEvery%60 == 0 {
				s := c.Stats()
				c.log.Debug("camera counters", "frames", s.Frames, "fps", s.FPS, "bitrate", s.Bitrate,
					"dropped", s.DroppedFrames, "lost_packets", s.LostPackets, "decode_errors", s.DecodeErrors,
					"sink_errors", sinkErrs)
			}
			continue
		}
		if f.desc != nil {
			pendDesc = f.desc
		}
		drop := func(err error) {
			pendLost += f.lost
			pendDropped += f.dropped + 1
			disc, waitKey = true, true
			c.cnt.asm.Dropped.Add(1)
			if sinkErrs++; sinkErrs == 1 || sinkErrs%100 == 0 {
				c.log.Warn("sink refused frame; dropping until next keyframe", "err", err, "sink_errors", sinkErrs)
			}
		}
		if waitKey && !f.key {
			pendLost += f.lost
			pendDropped += f.dropped + 1
			c.cnt.asm.Dropped.Add(1)
			continue
		}
		if pendDesc != nil {
			if err := sink.Describe(*pendDesc); err != nil {
				drop(fmt.Errorf("describe: %w", err))
				continue
			}
			pendDesc = nil
		}
		s := sample.Sample{
			Stream:    c.o.Stream,
			SrcT:      f.srcT,
			RecvT:     f.recvT,
			PTSOffset: f.ptsOffset,
			Lost:      f.lost + pendLost,
			Dropped:   f.dropped + pendDropped,
			Payload:   f.payload,
		}
		if f.key {
			s.Flags |= sample.Keyframe
		}
		if f.disc || disc || s.Lost > 0 || s.Dropped > 0 {
			s.Flags |= sample.Discontinuity
		}
		if err := sink.Write(s, nil); err != nil {
			drop(fmt.Errorf("write: %w", err))
			continue
		}
		waitKey, disc, pendLost, pendDropped = false, false, 0, 0
		c.cnt.frames.Add(1)
		c.cnt.bytes.Add(uint64(len(f.payload)))
		if f.key {
			c.cnt.keyframes.Add(1)
		}
	}
}
