package sim

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/fxamacker/cbor/v2"
)

type gotMsg struct {
	topic   string
	payload []byte
	qos     byte
	recvT   int64
}

// subscribe collects every message on filter for d.
func subscribe(t *testing.T, addr, filter string, d time.Duration) []gotMsg {
	t.Helper()
	var mu sync.Mutex
	var msgs []gotMsg
	opts := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("sim-test").
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", addr, tok.Error())
	}
	defer c.Disconnect(100)
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		now := time.Now().UnixNano()
		mu.Lock()
		msgs = append(msgs, gotMsg{topic: m.Topic(), payload: bytes.Clone(m.Payload()), qos: m.Qos(), recvT: now})
		mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	time.Sleep(d) // the observation window: what arrives in it is the input under test
	c.Unsubscribe(filter).WaitTimeout(time.Second)
	mu.Lock()
	defer mu.Unlock()
	return append([]gotMsg(nil), msgs...)
}

func TestMQTTDevices(t *testing.T) {
	clocks := map[string]Clock{
		DeviceRobot:   {Offset: -2 * time.Second, DriftPPB: PPM(30)},
		DeviceGripper: {Offset: 700 * time.Millisecond, DriftPPB: PPM(-20)},
		DeviceLidar:   {Offset: 3 * time.Second, DriftPPB: PPM(100)},
	}
	s := startSim(t, Options{
		Cameras: 1, Clocks: clocks, Jitter: time.Millisecond, Seed: 11,
		TriggerFirst: 500 * time.Millisecond, TriggerPeriod: time.Second, TriggerOn: 400 * time.Millisecond,
	})
	const window = 2300 * time.Millisecond
	msgs := subscribe(t, s.MQTTAddr(), "cell1/#", window)
	t0 := s.T0()

	by := map[string][]gotMsg{}
	for _, m := range msgs {
		by[m.topic] = append(by[m.topic], m)
	}
	// stampCheck: Truth knows the stamp, and the true time maps back to it
	// through the device's configured clock; the message left after it.
	stampCheck := func(stream, device string, i int, stamp, recvT int64) {
		t.Helper()
		trueT, ok := s.Truth(stream, stamp)
		if !ok {
			t.Fatalf("%s #%d: no truth for stamp %d", stream, i, stamp)
		}
		c := clocks[device]
		if d := bigAt(trueT, t0, int64(c.Offset), c.DriftPPB) - stamp; d < -1 || d > 0 {
			t.Fatalf("%s #%d: d(trueT) − stamp = %d ns", stream, i, d)
		}
		if trueT > recvT {
			t.Fatalf("%s #%d: received %v before capture", stream, i, time.Duration(trueT-recvT))
		}
		if _, ok := s.Truth(stream, stamp+1); ok {
			t.Fatalf("%s: Truth accepted stamp+1", stream)
		}
	}
	// rate checks the device-time spacing exactly and the count loosely
	// (the machine may be loaded; the sim sends late rather than skip).
	rate := func(topic string, hz int, stamps []int64) {
		t.Helper()
		period := int64(time.Second) / int64(hz)
		for i := 1; i < len(stamps); i++ {
			if d := stamps[i] - stamps[i-1]; d != period {
				t.Fatalf("%s: stamps %d and %d are %d ns apart, want %d (a gap or reorder)", topic, i-1, i, d, period)
			}
		}
		want := float64(hz) * window.Seconds()
		if n := float64(len(stamps)); n < 0.5*want || n > 1.2*want+2 {
			t.Errorf("%s: %d messages in %v, want about %.0f", topic, len(stamps), window, want)
		}
	}

	// Robot joint states: JSON at 200 Hz.
	var stamps []int64
	var seq0 uint64
	for i, m := range by[TopicJointStates] {
		dec := json.NewDecoder(bytes.NewReader(m.payload))
		dec.UseNumber()
		var js struct {
			Header struct {
				Stamp json.Number `json:"stamp"`
				Seq   uint64      `json:"seq"`
			} `json:"header"`
			Name                       []string
			Position, Velocity, Effort []float64
		}
		if err := dec.Decode(&js); err != nil {
			t.Fatalf("joint_states #%d: %v: %s", i, err, m.payload)
		}
		stamp, err := js.Header.Stamp.Int64()
		if err != nil {
			t.Fatalf("joint_states #%d: stamp %q: %v", i, js.Header.Stamp, err)
		}
		if len(js.Name) != 6 || len(js.Position) != 6 || len(js.Velocity) != 6 || len(js.Effort) != 6 {
			t.Fatalf("joint_states #%d: not 6 joints: %s", i, m.payload)
		}
		if i == 0 {
			seq0 = js.Header.Seq
		} else if js.Header.Seq != seq0+uint64(i) {
			t.Fatalf("joint_states #%d: seq %d, want %d", i, js.Header.Seq, seq0+uint64(i))
		}
		stampCheck(TopicJointStates, DeviceRobot, i, stamp, m.recvT)
		stamps = append(stamps, stamp)
	}
	rate(TopicJointStates, 200, stamps)

	// Gripper: a CBOR map with exactly these keys, at 50 Hz.
	stamps = nil
	for i, m := range by[TopicGripper] {
		var raw map[string]any
		if err := cbor.Unmarshal(m.payload, &raw); err != nil {
			t.Fatalf("gripper #%d: %v", i, err)
		}
		if len(raw) != 4 || raw["stamp"] == nil || raw["width"] == nil || raw["force"] == nil || raw["grasped"] == nil {
			t.Fatalf("gripper #%d: keys %v", i, raw)
		}
		var g GripperState
		if err := cbor.Unmarshal(m.payload, &g); err != nil {
			t.Fatalf("gripper #%d: %v", i, err)
		}
		if g.Width < 0 || g.Width > 0.08 {
			t.Fatalf("gripper #%d: width %g", i, g.Width)
		}
		stampCheck(TopicGripper, DeviceGripper, i, g.Stamp, m.recvT)
		stamps = append(stamps, g.Stamp)
	}
	rate(TopicGripper, 50, stamps)

	// Lidar: ~100 KB frames with the documented header, at 10 Hz.
	stamps = nil
	for i, m := range by[TopicLidar] {
		if len(m.payload) != LidarHeaderSize+6400*LidarStride {
			t.Fatalf("lidar #%d: %d bytes", i, len(m.payload))
		}
		stamp := int64(binary.LittleEndian.Uint64(m.payload[0:]))
		if n := binary.LittleEndian.Uint32(m.payload[8:]); n != 6400 {
			t.Fatalf("lidar #%d: point count %d", i, n)
		}
		if r := binary.LittleEndian.Uint32(m.payload[12:]); r != 0 {
			t.Fatalf("lidar #%d: reserved bytes %x", i, r)
		}
		arm := 0
		for p := LidarHeaderSize; p < len(m.payload); p += LidarStride {
			var v [4]float64
			for j := range v {
				v[j] = float64(math.Float32frombits(binary.LittleEndian.Uint32(m.payload[p+4*j:])))
			}
			if v[0] < -4.001 || v[0] > 4.001 || v[1] < -3.001 || v[1] > 3.001 || v[2] < -1.001 || v[2] > 2.001 {
				t.Fatalf("lidar #%d: point %v outside the room", i, v)
			}
			if v[3] == 200 {
				arm++
			}
		}
		if arm == 0 {
			t.Fatalf("lidar #%d: the robot arm is not in the scan", i)
		}
		stampCheck(StreamLidar, DeviceLidar, i, stamp, m.recvT)
		if _, ok := s.Truth(TopicLidar, stamp); !ok {
			t.Fatal("Truth by lidar topic failed")
		}
		stamps = append(stamps, stamp)
	}
	rate(TopicLidar, 10, stamps)

	// Triggers: start, stop, start, stop... with the exact bodies.
	trig := by[TopicTrigger]
	if len(trig) < 3 {
		t.Fatalf("%d trigger messages in %v, want at least 3", len(trig), window)
	}
	for i, m := range trig {
		want := TriggerStart
		if i%2 == 1 {
			want = TriggerStop
		}
		if string(m.payload) != want {
			t.Fatalf("trigger #%d: %s, want %s", i, m.payload, want)
		}
	}
	var start struct {
		Action, Task, Operator, Robot string
		Labels                        map[string]string
	}
	if err := json.Unmarshal(trig[0].payload, &start); err != nil || start.Action != "start" ||
		start.Task != "pick-and-place" || start.Operator != "sim" || start.Robot != "robot1" || start.Labels["sim"] != "true" {
		t.Fatalf("start trigger %+v, %v", start, err)
	}
	events := s.Triggers()
	if len(events) < len(trig) || events[0].Action != "start" || events[1].Action != "stop" {
		t.Fatalf("Triggers() = %+v", events)
	}
	if d := events[1].T - events[0].T; d != int64(400*time.Millisecond) {
		t.Errorf("episode lasted %v, want 400ms", time.Duration(d))
	}
	if events[0].T != t0+int64(500*time.Millisecond) || events[2].T != t0+int64(1500*time.Millisecond) {
		t.Errorf("episodes start at t0%+d and t0%+d, want +500ms and +1.5s", events[0].T-t0, events[2].T-t0)
	}
	for _, e := range events {
		if e.SentT < e.T {
			t.Errorf("trigger %+v sent before it was due", e)
		}
	}

	for _, m := range msgs {
		if m.qos != 1 {
			t.Fatalf("%s delivered at QoS %d, want 1", m.topic, m.qos)
		}
	}
	for _, id := range []string{TopicJointStates, TopicGripper, StreamLidar, TopicTrigger} {
		st, ok := s.Stats(id)
		if !ok || st.Sent == 0 || st.Failed != 0 {
			t.Errorf("stats %s: %+v", id, st)
		}
	}
}
