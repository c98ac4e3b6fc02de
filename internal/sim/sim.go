package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/episoded/episoded/assets"
)

// The simulated cell's names.
const (
	Cell          = "cell1"
	DeviceRobot   = "robot1"
	DeviceGripper = "gripper"
	DeviceLidar   = "lidar"

	TopicJointStates = "cell1/robot1/joint_states"
	TopicGripper     = "cell1/gripper/state"
	TopicLidar       = "cell1/lidar/points"
	TopicTrigger     = "cell1/episode/trigger"

	// StreamLidar is the lidar's stream id in Config (the other MQTT
	// streams are named after their topics, cameras "cell1/camN").
	StreamLidar = "cell1/lidar"
)

// LidarHeaderSize is the size of a lidar frame's header: little-endian
// int64 capture time (ns, lidar clock) at 0, uint32 point count at 8, 4
// reserved zero bytes. Each point that follows is LidarStride bytes:
// float32 x, y, z, intensity (little-endian, metres).
const (
	LidarHeaderSize = 16
	LidarStride     = 16
)

// TruthTolerance is how far a video SrcT may be from a frame's exact
// device time for Truth to find the frame (sender-report arithmetic
// rounds to the nanosecond; frames are 33 ms apart).
const TruthTolerance = time.Millisecond

// ErrRunning is returned by a second call to Run.
var ErrRunning = errors.New("sim: already run")

// Sim is a simulated factory cell. Create it with New.
type Sim struct {
	o     Options
	log   *slog.Logger
	aus   [][][]byte
	cams  []*camera
	pubs  []*publisher
	trig  *trigger
	ready chan struct{}
	ran   atomic.Bool
	// queueDrops counts RTP packets gortsplib did not send to a client
	// whose write queue was full (see QueueDrops).
	queueDrops atomic.Uint64

	// set before ready is closed, read-only afterwards
	t0       int64
	rtspAddr string
	mqttAddr string
	broker   *Broker
}

// New checks o and prepares a Sim; it starts nothing.
func New(o Options) (*Sim, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("sim options: %w", err)
	}
	aus := o.Clip
	if aus == nil {
		var err error
		if aus, err = assets.H264AccessUnits(); err != nil {
			return nil, fmt.Errorf("load clip: %w", err)
		}
	}
	s := &Sim{o: o, log: o.Logger.With("component", "sim"), aus: aus, ready: make(chan struct{})}
	for i := 1; i <= o.Cameras; i++ {
		c, err := newCamera(s, "cam"+strconv.Itoa(i))
		if err != nil {
			return nil, err
		}
		s.cams = append(s.cams, c)
	}
	s.pubs = []*publisher{
		newPublisher(s, DeviceRobot, TopicJointStates, TopicJointStates, o.JointRate, jointStatePayload),
		newPublisher(s, DeviceGripper, TopicGripper, TopicGripper, o.GripperRate, gripperPayload),
		newPublisher(s, DeviceLidar, StreamLidar, TopicLidar, o.LidarRate, newLidar(o.LidarPoints).payload),
	}
	s.trig = &trigger{s: s}
	if o.Registerer != nil {
		if err := s.register(o.Registerer); err != nil {
			return nil, fmt.Errorf("register sim metrics: %w", err)
		}
	}
	return s, nil
}

// Ready is closed once Run has bound both listeners and the devices run.
func (s *Sim) Ready() <-chan struct{} { return s.ready }

func (s *Sim) isReady() bool {
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

// RTSPAddr is the bound RTSP address (host:port) once Ready, else the
// configured one.
func (s *Sim) RTSPAddr() string {
	if s.isReady() {
		return s.rtspAddr
	}
	return s.o.RTSPAddr
}

// MQTTAddr is the bound MQTT address (host:port) once Ready, else the
// configured one.
func (s *Sim) MQTTAddr() string {
	if s.isReady() {
		return s.mqttAddr
	}
	return s.o.MQTTAddr
}

// CameraURLs returns rtsp://ADDR/cam1 ... in order.
func (s *Sim) CameraURLs() []string {
	var urls []string
	for _, c := range s.cams {
		urls = append(urls, "rtsp://"+s.RTSPAddr()+c.path)
	}
	return urls
}

// Topics returns the MQTT topics the simulator publishes.
func (s *Sim) Topics() []string {
	return []string{TopicJointStates, TopicGripper, TopicLidar, TopicTrigger}
}

// Devices returns the device ids: cam1..camN, robot1, gripper, lidar.
func (s *Sim) Devices() []string {
	var ids []string
	for _, c := range s.cams {
		ids = append(ids, c.id)
	}
	return append(ids, DeviceRobot, DeviceGripper, DeviceLidar)
}

// Clock returns device id's clock (see Options.ClockOffset).
func (s *Sim) Clock(device string) (Clock, bool) {
	if !s.o.isDevice(device) {
		return Clock{}, false
	}
	return s.o.clockFor(device), true
}

// T0 is the true time (ns since the Unix epoch) at which Run started: the
// anchor of every device clock's drift. It is 0 before Ready.
func (s *Sim) T0() int64 {
	if !s.isReady() {
		return 0
	}
	return s.t0
}

// DeviceTime returns what device's clock reads at true time t (0, false
// before Ready or for an unknown device).
func (s *Sim) DeviceTime(device string, t int64) (int64, bool) {
	c, ok := s.Clock(device)
	if !ok || !s.isReady() {
		return 0, false
	}
	return newDeviceClock(c, s.t0).at(t), true
}

// streamSource is one stream's ground truth and counters.
type streamSource interface {
	truth(deviceT int64) (int64, bool)
	stats() StreamStats
}

func (s *Sim) source(stream string) streamSource {
	for _, c := range s.cams {
		if stream == c.stream || stream == c.id {
			return c
		}
	}
	for _, p := range s.pubs {
		if stream == p.stream || stream == p.topic || stream == p.device {
			return p
		}
	}
	if stream == TopicTrigger {
		return s.trig
	}
	return nil
}

// Streams returns the stream ids, as Config names them.
func (s *Sim) Streams() []string {
	var ids []string
	for _, c := range s.cams {
		ids = append(ids, c.stream)
	}
	for _, p := range s.pubs {
		ids = append(ids, p.stream)
	}
	return append(ids, TopicTrigger)
}

// Truth returns the true capture time (ns since the Unix epoch) of the
// sample that a recorder sees on stream with device timestamp deviceT:
//   - video ("cell1/cam1" or "cam1"): deviceT is the NTP time, in ns, that
//     the camera's sender reports give the frame's RTP timestamp; it must
//     be within TruthTolerance of a frame's device time;
//   - MQTT ("cell1/robot1/joint_states", "cell1/gripper/state",
//     "cell1/lidar" or its topic): deviceT is the payload's stamp.
//
// ok is false for an unknown stream, a time that is no sample's, a sample
// not captured yet, or a video frame withheld by an outage. Trigger
// messages carry no device time and have no Truth.
func (s *Sim) Truth(stream string, deviceT int64) (trueT int64, ok bool) {
	src := s.source(stream)
	if src == nil || !s.isReady() {
		return 0, false
	}
	return src.truth(deviceT)
}

// StreamStats counts what one stream sent.
type StreamStats struct {
	Stream string `json:"stream"`
	Device string `json:"device"`
	// Sent counts frames (video; a frame with dropped packets counts) or
	// messages (MQTT) handed to the server.
	Sent uint64 `json:"sent"`
	// Video only.
	PacketsSent    uint64 `json:"packets_sent,omitempty"`
	PacketsDropped uint64 `json:"packets_dropped,omitempty"`
	// FramesAffected counts frames with at least one dropped packet.
	FramesAffected uint64 `json:"frames_affected,omitempty"`
	// OutageFrames counts frames captured during an outage and not sent.
	OutageFrames uint64 `json:"outage_frames,omitempty"`
	// Outages counts outages begun.
	Outages uint64 `json:"outages,omitempty"`
	// SenderReports counts RTCP sender reports sent.
	SenderReports uint64 `json:"sender_reports,omitempty"`
	// Failed counts sends the server refused (MQTT publish errors).
	Failed uint64 `json:"failed,omitempty"`
}

// Stats returns stream's counters.
func (s *Sim) Stats(stream string) (StreamStats, bool) {
	src := s.source(stream)
	if src == nil {
		return StreamStats{}, false
	}
	return src.stats(), true
}

// Run binds the RTSP server and MQTT broker, closes Ready, runs the
// devices and blocks until ctx is cancelled. It then stops the devices,
// closes every session and the listeners, and returns nil. It returns an
// error at once if a listener cannot bind.
func (s *Sim) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return ErrRunning
	}
	rtspSrv, rtspAddr, err := s.startRTSP()
	if err != nil {
		return err
	}
	defer rtspSrv.Close()
	broker, err := NewMQTTBroker(s.o.MQTTAddr, s.o.Logger.With("component", "sim.mqtt"))
	if err != nil {
		return err
	}
	mqttAddr := broker.Addr()
	defer broker.Close()

	s.t0 = time.Now().UnixNano()
	s.rtspAddr, s.mqttAddr, s.broker = rtspAddr, mqttAddr, broker
	for _, c := range s.cams {
		if err := c.start(rtspSrv); err != nil {
			for _, c := range s.cams {
				c.stop()
			}
			return err
		}
	}
	for _, p := range s.pubs {
		p.start()
	}
	close(s.ready)
	s.log.Info("simulated cell running", "rtsp", rtspAddr, "mqtt", mqttAddr, "cameras", len(s.cams))

	devCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, c := range s.cams {
		wg.Go(func() { c.run(devCtx) })
	}
	for _, p := range s.pubs {
		wg.Go(func() { p.run(devCtx) })
	}
	if s.o.TriggerPeriod > 0 {
		wg.Go(func() { s.trig.run(devCtx) })
	}
	wg.Go(func() { s.logCounts(devCtx) })

	<-ctx.Done()
	cancel()
	wg.Wait()
	for _, c := range s.cams {
		c.stop()
	}
	s.log.Info("simulated cell stopped")
	return nil
}

// startRTSP starts the RTSP server, capturing its listener so that port 0
// resolves to the bound address.
func (s *Sim) startRTSP() (*gortsplib.Server, string, error) {
	var bound net.Addr
	srv := &gortsplib.Server{
		Handler:     &rtspHandler{s: s},
		RTSPAddress: s.o.RTSPAddr,
		// The cameras send their own reports, on their own clocks.
		DisableRTCPSenderReports: true,
		Listen: func(network, address string) (net.Listener, error) {
			l, err := net.Listen(network, address)
			if err == nil {
				bound = l.Addr()
			}
			return l, err
		},
	}
	if err := srv.Start(); err != nil {
		return nil, "", fmt.Errorf("listen rtsp %s: %w", s.o.RTSPAddr, err)
	}
	return srv, bound.String(), nil
}

// logCounts logs every stream's counters every 30 s (not one line per
// sample).
func (s *Sim) logCounts(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, id := range s.Streams() {
				st, _ := s.Stats(id)
				s.log.Debug("sim counts", "stream", id, "sent", st.Sent, "packets_dropped", st.PacketsDropped,
					"frames_affected", st.FramesAffected, "outage_frames", st.OutageFrames)
			}
		}
	}
}

// sleepUntil waits until the wall clock reaches t (ns); false if ctx ended.
func sleepUntil(ctx context.Context, timer *time.Timer, t int64) bool {
	d := time.Duration(t - time.Now().UnixNano())
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer.Reset(d)
	select {
	case <-ctx.Done():
		timer.Stop()
		return false
	case <-timer.C:
		return true
	}
}

// minLevel drops records below min (mochi logs every connection at info).
type minLevel struct {
	h   slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}
func (m minLevel) Handle(ctx context.Context, r slog.Record) error { return m.h.Handle(ctx, r) }
func (m minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h: m.h.WithAttrs(a), min: m.min}
}
func (m minLevel) WithGroup(g string) slog.Handler { return minLevel{h: m.h.WithGroup(g), min: m.min} }

// ring keeps the last cap items.
type ring[T any] struct {
	items []T
	next  int
	full  bool
}

func (r *ring[T]) add(v T, capacity int) {
	if len(r.items) < capacity {
		r.items = append(r.items, v)
		return
	}
	r.items[r.next] = v
	r.next = (r.next + 1) % capacity
	r.full = true
}

func (r *ring[T]) list() []T {
	if !r.full {
		return slices.Clone(r.items)
	}
	return append(slices.Clone(r.items[r.next:]), r.items[:r.next]...)
}

// allowHook lets every client connect and use every topic: mochi denies
// all clients without an auth hook. It is mochi's hooks/auth.AllowHook,
// restated because importing hooks/auth pulls gopkg.in/yaml.v3 (its
// ledger), a module the repository does not otherwise need.
type allowHook struct{ mqtt.HookBase }

func (h *allowHook) ID() string { return "sim-allow-all" }

func (h *allowHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *allowHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *allowHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }
