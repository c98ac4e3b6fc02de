package sim

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for Options.
const (
	DefaultRTSPAddr      = "127.0.0.1:8554"
	DefaultMQTTAddr      = "127.0.0.1:1883"
	DefaultCameras       = 2
	DefaultSRPeriod      = time.Second
	DefaultJointRate     = 200
	DefaultGripperRate   = 50
	DefaultLidarRate     = 10
	DefaultLidarPoints   = 6400
	DefaultTriggerFirst  = 3 * time.Second
	DefaultTriggerPeriod = 15 * time.Second
	DefaultTriggerOn     = 10 * time.Second
	DefaultQoS           = 1
)

// Options configure a Sim. The zero value is usable: every zero field takes
// the default documented on it.
type Options struct {
	// RTSPAddr is the RTSP listen address (TCP). Port 0 picks a free port;
	// RTSPAddr() reports it once Ready. Default 127.0.0.1:8554.
	RTSPAddr string
	// MQTTAddr is the embedded broker's listen address (TCP). Default
	// 127.0.0.1:1883.
	MQTTAddr string
	// Cameras is the number of cameras, served at /cam1 ... /camN.
	// Default 2.
	Cameras int
	// Clip is the H.264 clip every camera loops at 30 fps: access units
	// (NAL units without start codes) in decode order, no B-frames, with
	// an SPS and a PPS (sent out of band in the SDP). Default: the 320x240
	// assets.H264AccessUnits(). Benchmarks pass a 1080p clip (see
	// internal/testclip).
	Clip [][][]byte

	// ClockOffset and ClockDriftPPM bound the device clocks: each device
	// (cam1..camN, robot1, gripper, lidar) draws its offset uniformly from
	// [−ClockOffset, +ClockOffset] and its drift from [−ClockDriftPPM,
	// +ClockDriftPPM], deterministically from Seed and the device id.
	// Default 0 (devices agree with true time).
	ClockOffset   time.Duration
	ClockDriftPPM float64
	// Clocks sets exact clocks for some devices (by device id), overriding
	// the draw above.
	Clocks map[string]Clock

	// Jitter is the mean of the exponential one-way delay between a
	// sample's capture and its send. Samples of one device stay in order
	// (FIFO): a sample is sent at max(capture + delay, previous send).
	// Default 0.
	Jitter time.Duration
	// Loss is the probability that the camera drops each RTP packet before
	// the server sends it. Default 0.
	Loss float64
	// Outages stop cameras for a while.
	Outages []Outage
	// Seed makes clocks, delays and losses reproducible. Default 0.
	Seed uint64

	// SRPeriod is the interval between RTCP sender reports. A burst of
	// reports also follows the first frames after every PLAY. Default 1s.
	SRPeriod time.Duration

	// Rates of the MQTT devices, in samples per second of device time (the
	// device period is floor(1e9/rate) ns). Defaults 200, 50 and 10.
	JointRate, GripperRate, LidarRate int
	// LidarPoints is the number of points per lidar frame. Default 6400
	// (102,416-byte frames).
	LidarPoints int
	// QoS is the MQTT QoS of published messages (0 or 1). Default 1.
	QoS *byte

	// TriggerFirst is when, after start, the first episode starts.
	// Default 3s. TriggerPeriod is the start-to-start interval (default
	// 15s; negative disables triggers) and TriggerOn how long each
	// episode lasts before its stop (default 10s, less than the period).
	TriggerFirst, TriggerPeriod, TriggerOn time.Duration
	// TriggerCount, if positive, is how many episodes the triggers start:
	// after the last one's stop no trigger is published, so a test can
	// record exactly that many episodes however slow the machine is.
	// Default 0: no limit.
	TriggerCount int

	// Logger receives the simulator's logs (nil: discard).
	Logger *slog.Logger
	// Registerer, if not nil, receives the simulator's metrics.
	Registerer prometheus.Registerer
}

// Outage stops Camera's stream at At (after the simulator starts) for For:
// its sessions are closed, new clients are refused and frames captured in
// [At, At+For) are not sent. Then the camera comes back.
type Outage struct {
	Camera string // "cam1"
	At     time.Duration
	For    time.Duration
}

// String formats o as ParseOutage reads it.
func (o Outage) String() string { return fmt.Sprintf("%s@%s+%s", o.Camera, o.At, o.For) }

// ParseOutage parses "cam1@20s+3s": camera cam1 stops 20 s after start, for
// 3 s.
func ParseOutage(s string) (Outage, error) {
	cam, rest, ok1 := strings.Cut(s, "@")
	at, dur, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 || cam == "" {
		return Outage{}, fmt.Errorf("outage %q: want CAMERA@START+DURATION, e.g. cam1@20s+3s", s)
	}
	a, err1 := time.ParseDuration(at)
	d, err2 := time.ParseDuration(dur)
	if err := errors.Join(err1, err2); err != nil {
		return Outage{}, fmt.Errorf("outage %q: %w", s, err)
	}
	return Outage{Camera: cam, At: a, For: d}, nil
}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
func (o *Options) EnsureDefaults() {
	if o.RTSPAddr == "" {
		o.RTSPAddr = DefaultRTSPAddr
	}
	if o.MQTTAddr == "" {
		o.MQTTAddr = DefaultMQTTAddr
	}
	if o.Cameras == 0 {
		o.Cameras = DefaultCameras
	}
	if o.SRPeriod == 0 {
		o.SRPeriod = DefaultSRPeriod
	}
	if o.JointRate == 0 {
		o.JointRate = DefaultJointRate
	}
	if o.GripperRate == 0 {
		o.GripperRate = DefaultGripperRate
	}
	if o.LidarRate == 0 {
		o.LidarRate = DefaultLidarRate
	}
	if o.LidarPoints == 0 {
		o.LidarPoints = DefaultLidarPoints
	}
	if o.QoS == nil {
		q := byte(DefaultQoS)
		o.QoS = &q
	}
	if o.TriggerFirst == 0 {
		o.TriggerFirst = DefaultTriggerFirst
	}
	if o.TriggerPeriod == 0 {
		o.TriggerPeriod = DefaultTriggerPeriod
	}
	if o.TriggerOn == 0 {
		o.TriggerOn = DefaultTriggerOn
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with o (after defaults) in one error.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.Cameras < 0 || o.Cameras > 64 {
		bad("cameras: %d is not between 0 and 64", o.Cameras)
	}
	if o.Clip != nil {
		if sps, pps := paramSets(o.Clip); sps == nil || pps == nil {
			bad("clip: %d access units without an SPS and a PPS", len(o.Clip))
		}
	}
	if o.ClockOffset < 0 {
		bad("clock offset: %s must not be negative (it bounds offsets of either sign)", o.ClockOffset)
	}
	if o.ClockDriftPPM < 0 || o.ClockDriftPPM > 1000 {
		bad("clock drift: %g ppm is not between 0 and 1000", o.ClockDriftPPM)
	}
	for id, c := range o.Clocks {
		if !o.isDevice(id) {
			bad("clocks: %q is not a device (cam1..cam%d, robot1, gripper, lidar)", id, o.Cameras)
		}
		if c.DriftPPB < -maxDriftPPB || c.DriftPPB > maxDriftPPB {
			bad("clocks[%s]: drift %g ppm is beyond ±1000 ppm", id, c.DriftPPM())
		}
	}
	if o.Jitter < 0 {
		bad("jitter: %s must not be negative", o.Jitter)
	}
	if !(o.Loss >= 0 && o.Loss < 1) {
		bad("loss: %g is not in [0, 1)", o.Loss)
	}
	for _, out := range o.Outages {
		if !o.isCamera(out.Camera) {
			bad("outage %s: no camera %q (cam1..cam%d)", out, out.Camera, o.Cameras)
		}
		if out.At < 0 || out.For <= 0 {
			bad("outage %s: start must not be negative and duration must be positive", out)
		}
	}
	if o.SRPeriod < 0 {
		bad("sender report period: %s must be positive", o.SRPeriod)
	}
	for name, r := range map[string]int{"joint rate": o.JointRate, "gripper rate": o.GripperRate, "lidar rate": o.LidarRate} {
		if r < 0 || r > 10000 {
			bad("%s: %d Hz is not between 1 and 10000", name, r)
		}
	}
	if o.LidarPoints < 0 || o.LidarPoints > 1<<20 {
		bad("lidar points: %d is not between 1 and %d", o.LidarPoints, 1<<20)
	}
	if *o.QoS > 1 {
		bad("qos: %d is not 0 or 1", *o.QoS)
	}
	if o.TriggerPeriod > 0 {
		if o.TriggerFirst < 0 {
			bad("trigger first: %s must not be negative", o.TriggerFirst)
		}
		if o.TriggerOn <= 0 || o.TriggerOn >= o.TriggerPeriod {
			bad("trigger on: %s must be positive and shorter than the period %s", o.TriggerOn, o.TriggerPeriod)
		}
		if o.TriggerCount < 0 {
			bad("trigger count: %d must not be negative (0: no limit)", o.TriggerCount)
		}
	}
	return errors.Join(errs...)
}

func (o *Options) isCamera(id string) bool {
	n, err := strconv.Atoi(strings.TrimPrefix(id, "cam"))
	return strings.HasPrefix(id, "cam") && err == nil && n >= 1 && n <= o.Cameras && id == "cam"+strconv.Itoa(n)
}

func (o *Options) isDevice(id string) bool {
	return o.isCamera(id) || id == DeviceRobot || id == DeviceGripper || id == DeviceLidar
}

// clockFor returns device id's clock: the override in Clocks, or a
// deterministic draw from Seed and id within the configured bounds.
func (o *Options) clockFor(id string) Clock {
	if c, ok := o.Clocks[id]; ok {
		return c
	}
	rng := rand.New(rand.NewPCG(o.Seed, hashID("clock/"+id)))
	u1, u2 := 2*rng.Float64()-1, 2*rng.Float64()-1
	return Clock{
		Offset:   time.Duration(u1 * float64(o.ClockOffset)),
		DriftPPB: PPM(u2 * o.ClockDriftPPM),
	}
}

func hashID(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// newRand returns the reproducible random source for one purpose of one
// device, so that e.g. changing the jitter leaves the loss pattern alone.
func (o *Options) newRand(purpose, id string) *rand.Rand {
	return rand.New(rand.NewPCG(o.Seed, hashID(purpose+"/"+id)))
}
