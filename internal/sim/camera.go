package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/pion/rtcp"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/internal/video"
)

const (
	videoClockRate = 90000
	ticksPerFrame  = videoClockRate / assets.FrameRate // 3000
	// srBurst is how many frames after a PLAY are each followed by a
	// sender report: gortsplib clients ignore reports that arrive before
	// their first RTP packet, and the new reader becomes active only after
	// OnPlay returns.
	srBurst = 3
	// maxLosses bounds the list Losses returns per camera.
	maxLosses = 1 << 16
)

// Loss is one RTP packet a camera dropped.
type Loss struct {
	Seq     uint16 `json:"seq"`
	RTPTime uint32 `json:"rtp_time"`
}

// camera is one simulated RTSP camera. run is its only goroutine; the
// RTSP handler reads its current stream under mu.
type camera struct {
	s      *Sim
	id     string
	stream string
	path   string
	clock  Clock
	forma  *format.H264
	medi   *description.Media
	desc   *description.Session
	rtp0   uint32
	seq0   uint16
	loss   *rand.Rand // run goroutine only
	delay  *rand.Rand // run goroutine only
	outs   []Outage

	// set by start, read-only afterwards
	clk    deviceClock
	d0     int64 // device time of frame 0
	server *gortsplib.Server

	frames   atomic.Int64 // frames captured so far
	burst    atomic.Int32 // sender reports still owed after a PLAY
	sent     atomic.Uint64
	pkts     atomic.Uint64
	dropped  atomic.Uint64
	affected atomic.Uint64
	outFr    atomic.Uint64
	outages  atomic.Uint64
	srs      atomic.Uint64
	forced   atomic.Bool // down by SetCameraDown

	mu struct {
		sync.Mutex
		st     *gortsplib.ServerStream // nil while down
		ssrc   uint32
		losses ring[Loss]
	}
}

func newCamera(s *Sim, id string) (*camera, error) {
	sps, pps := paramSets(s.aus)
	if sps == nil || pps == nil {
		return nil, fmt.Errorf("clip: no SPS/PPS in the first access units")
	}
	forma := &format.H264{PayloadTyp: 96, PacketizationMode: 1, SPS: sps, PPS: pps}
	medi := &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{forma}}
	c := &camera{
		s: s, id: id, stream: Cell + "/" + id, path: "/" + id,
		clock: s.o.clockFor(id),
		forma: forma, medi: medi,
		desc:  &description.Session{Medias: []*description.Media{medi}},
		loss:  s.o.newRand("loss", id),
		delay: s.o.newRand("delay", id),
	}
	init := s.o.newRand("rtp", id)
	c.rtp0, c.seq0 = init.Uint32(), uint16(init.Uint32())
	for _, o := range s.o.Outages {
		if o.Camera == id {
			c.outs = append(c.outs, o)
		}
	}
	return c, nil
}

// paramSets finds the first SPS and PPS in the clip.
func paramSets(aus [][][]byte) (sps, pps []byte) {
	var p [2][]byte
	for _, au := range aus {
		for _, n := range au {
			if i := video.H264.ParamSlot(n); i >= 0 && p[i] == nil {
				p[i] = n
			}
		}
	}
	return p[0], p[1]
}

func (c *camera) start(srv *gortsplib.Server) error {
	c.server = srv
	c.clk = newDeviceClock(c.clock, c.s.t0)
	c.d0 = c.clk.at(c.s.t0)
	return c.up()
}

// up creates the camera's stream: at start and after an outage.
func (c *camera) up() error {
	st := &gortsplib.ServerStream{Server: c.server, Desc: c.desc}
	if err := st.Initialize(); err != nil {
		return fmt.Errorf("camera %s: create stream: %w", c.id, err)
	}
	ssrc := st.Stats().Medias[c.medi].Formats[c.forma].LocalSSRC
	c.mu.Lock()
	c.mu.st, c.mu.ssrc = st, ssrc
	c.mu.Unlock()
	return nil
}

// down closes the stream and with it every session reading it.
func (c *camera) down() {
	c.mu.Lock()
	st := c.mu.st
	c.mu.st = nil
	c.mu.Unlock()
	if st != nil {
		st.Close()
	}
}

func (c *camera) stop() { c.down() }

func (c *camera) current() (*gortsplib.ServerStream, uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.st, c.mu.ssrc
}

// frameDeviceTime is D_k = D_0 + floor(k·1e9/30).
func (c *camera) frameDeviceTime(k int64) int64 {
	return c.d0 + mulDivFloor(k, 1e9, assets.FrameRate)
}

// inOutage reports whether true time t falls in one of the camera's
// outages.
func (c *camera) inOutage(t int64) bool {
	for _, o := range c.outs {
		from := c.s.t0 + int64(o.At)
		if t >= from && t < from+int64(o.For) {
			return true
		}
	}
	return false
}

func (c *camera) run(ctx context.Context) {
	enc := &rtph264.Encoder{PayloadType: c.forma.PayloadTyp, PacketizationMode: 1, InitialSequenceNumber: &c.seq0}
	if err := enc.Init(); err != nil {
		c.s.log.Error("camera encoder", "camera", c.id, "err", err)
		return
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	period := int64(c.s.o.SRPeriod)
	nextSR := time.Now().UnixNano() + period
	var lastSend int64
	for k := int64(0); ; k++ {
		tk := c.clk.inv(c.frameDeviceTime(k))
		send := tk
		if c.s.o.Jitter > 0 {
			send += int64(c.delay.ExpFloat64() * float64(c.s.o.Jitter))
		}
		send = max(send, lastSend)
		lastSend = send
		for {
			now := time.Now().UnixNano()
			if now >= nextSR {
				c.senderReport(now)
				nextSR = max(nextSR+period, now+period/2)
				continue
			}
			if now >= send {
				break
			}
			if !sleepUntil(ctx, timer, min(send, nextSR)) {
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		c.frame(k, tk, enc)
	}
}

// frame captures and sends frame k, captured at true time tk.
func (c *camera) frame(k, tk int64, enc *rtph264.Encoder) {
	c.frames.Store(k + 1)
	st, _ := c.current()
	if c.inOutage(tk) || c.forced.Load() {
		if st != nil {
			c.outages.Add(1)
			c.s.log.Info("camera outage begins", "camera", c.id)
			c.down()
		}
		c.outFr.Add(1)
		return
	}
	if st == nil {
		if err := c.up(); err != nil {
			c.s.log.Error("camera restart failed", "camera", c.id, "err", err)
			c.outFr.Add(1)
			return
		}
		c.s.log.Info("camera back", "camera", c.id)
		st, _ = c.current()
	}
	pkts, err := enc.Encode(c.s.aus[k%int64(len(c.s.aus))])
	if err != nil {
		c.s.log.Error("camera encode", "camera", c.id, "err", err)
		return
	}
	ts := c.rtp0 + uint32(k*ticksPerFrame)
	hit := false
	for _, p := range pkts {
		p.Timestamp = ts
		if c.s.o.Loss > 0 && c.loss.Float64() < c.s.o.Loss {
			hit = true
			c.dropped.Add(1)
			c.mu.Lock()
			c.mu.losses.add(Loss{Seq: p.SequenceNumber, RTPTime: ts}, maxLosses)
			c.mu.Unlock()
			continue
		}
		// An error means the stream is closed (shutdown): nothing to do.
		if st.WritePacketRTP(c.medi, p) == nil {
			c.pkts.Add(1)
		}
	}
	if hit {
		c.affected.Add(1)
	}
	c.sent.Add(1)
	if c.burst.Load() > 0 {
		c.burst.Add(-1)
		c.senderReport(time.Now().UnixNano())
	}
}

// srAt returns the sender report for true time now: the RTP tick the
// camera's clock has reached, and the exact device time of that tick.
func (c *camera) srAt(now int64) (rtpTime uint32, ntp uint64) {
	n := mulDivFloor(c.clk.at(now)-c.d0, videoClockRate, 1e9)
	return c.rtp0 + uint32(n), ntpFromRational(c.d0, n, videoClockRate)
}

func (c *camera) senderReport(now int64) {
	st, ssrc := c.current()
	if st == nil {
		return
	}
	rtpTime, ntp := c.srAt(now)
	sr := &rtcp.SenderReport{
		SSRC:        ssrc,
		NTPTime:     ntp,
		RTPTime:     rtpTime,
		PacketCount: uint32(c.pkts.Load()),
	}
	if st.WritePacketRTCP(c.medi, sr) == nil {
		c.srs.Add(1)
	}
}

func (c *camera) truth(D int64) (int64, bool) {
	n := c.frames.Load()
	tol := int64(TruthTolerance)
	if n == 0 || D < c.d0-tol || D > c.frameDeviceTime(n)+tol {
		return 0, false
	}
	x := D - c.d0
	// nearest k: round(x·30/1e9)
	k := mulDivFloor(x, 2*assets.FrameRate, 1e9)
	k = (k + 1) / 2
	if k < 0 || k >= n {
		return 0, false
	}
	// |x − k·1e9/30| ≤ tol, exactly: |30x − k·1e9| ≤ 30·tol
	if diff := x*assets.FrameRate - k*1e9; diff > assets.FrameRate*tol || diff < -assets.FrameRate*tol {
		return 0, false
	}
	t := c.clk.inv(c.frameDeviceTime(k))
	if c.inOutage(t) {
		return 0, false
	}
	return t, true
}

func (c *camera) stats() StreamStats {
	return StreamStats{
		Stream: c.stream, Device: c.id,
		Sent: c.sent.Load(), PacketsSent: c.pkts.Load(), PacketsDropped: c.dropped.Load(),
		FramesAffected: c.affected.Load(), OutageFrames: c.outFr.Load(), Outages: c.outages.Load(),
		SenderReports: c.srs.Load(),
	}
}

func (c *camera) losses() []Loss {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.losses.list()
}

// Losses returns the RTP packets camera stream ("cell1/cam1" or "cam1")
// dropped, oldest first (the last 65536).
func (s *Sim) Losses(stream string) []Loss {
	for _, c := range s.cams {
		if stream == c.stream || stream == c.id {
			return c.losses()
		}
	}
	return nil
}

// rtspHandler serves DESCRIBE, SETUP and PLAY for the cameras.
type rtspHandler struct{ s *Sim }

func (h *rtspHandler) camera(path string) *camera {
	p := strings.Trim(path, "/")
	if i := strings.IndexByte(p, '/'); i >= 0 {
		p = p[:i]
	}
	for _, c := range h.s.cams {
		if c.id == p {
			return c
		}
	}
	return nil
}

func (h *rtspHandler) lookup(path string) (*base.Response, *gortsplib.ServerStream, error) {
	c := h.camera(path)
	if c == nil {
		return &base.Response{StatusCode: base.StatusNotFound}, nil, fmt.Errorf("no camera at %q", path)
	}
	st, _ := c.current()
	if st == nil {
		return &base.Response{StatusCode: base.StatusServiceUnavailable}, nil, fmt.Errorf("camera %s is down", c.id)
	}
	return &base.Response{StatusCode: base.StatusOK}, st, nil
}

// OnStreamWriteError: gortsplib could not queue a packet for a client
// that reads too slowly, and dropped it for that client. Counted (see
// Sim.QueueDrops) instead of gortsplib's default of one log line per
// packet on stdout.
func (h *rtspHandler) OnStreamWriteError(*gortsplib.ServerHandlerOnStreamWriteErrorCtx) {
	h.s.queueDrops.Add(1)
}

// QueueDrops returns how many RTP packets the RTSP server dropped for
// clients whose write queue was full: the client read too slowly. These
// are not camera losses (Options.Loss); the client sees them as lost
// packets.
func (s *Sim) QueueDrops() uint64 { return s.queueDrops.Load() }

func (h *rtspHandler) OnDescribe(ctx *gortsplib.ServerHandlerOnDescribeCtx) (*base.Response, *gortsplib.ServerStream, error) {
	return h.lookup(ctx.Path)
}

func (h *rtspHandler) OnSetup(ctx *gortsplib.ServerHandlerOnSetupCtx) (*base.Response, *gortsplib.ServerStream, error) {
	if ctx.Transport != gortsplib.TransportTCP {
		// Only interleaved TCP is served; clients fall back to it.
		return &base.Response{StatusCode: base.StatusUnsupportedTransport}, nil, nil
	}
	return h.lookup(ctx.Path)
}

func (h *rtspHandler) OnPlay(ctx *gortsplib.ServerHandlerOnPlayCtx) (*base.Response, error) {
	if c := h.camera(ctx.Path); c != nil {
		c.burst.Store(srBurst)
	}
	return &base.Response{StatusCode: base.StatusOK}, nil
}

// SetCameraDown takes camera id down (down true) or brings it back, now:
// an outage like a scheduled Outage (the RTSP stream is closed with every
// session on it, DESCRIBE answers 503, frames are not sent), but at a
// moment the caller chooses, e.g. once a test has seen the camera live.
// The change takes effect at the camera's next frame. Truth does not know
// about these outages: use Options.Outages where ground truth matters.
func (s *Sim) SetCameraDown(id string, down bool) error {
	for _, c := range s.cams {
		if c.id == id {
			c.forced.Store(down)
			return nil
		}
	}
	return fmt.Errorf("sim: no camera %q", id)
}
