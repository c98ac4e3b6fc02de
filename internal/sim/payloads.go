package sim

import (
	"encoding/binary"
	"encoding/json"
	"math"

	"github.com/fxamacker/cbor/v2"
)

// JointState is the robot's joint_states payload (JSON), shaped like a ROS
// sensor_msgs/JointState.
type JointState struct {
	Header struct {
		Stamp int64  `json:"stamp"` // device clock, ns since the Unix epoch
		Seq   uint64 `json:"seq"`
	} `json:"header"`
	Name     []string  `json:"name"`
	Position []float64 `json:"position"` // rad
	Velocity []float64 `json:"velocity"` // rad/s
	Effort   []float64 `json:"effort"`   // N·m
}

// GripperState is the gripper's payload (CBOR map).
type GripperState struct {
	Stamp   int64   `cbor:"stamp"` // device clock, ns since the Unix epoch
	Width   float64 `cbor:"width"` // m
	Force   float64 `cbor:"force"` // N
	Grasped bool    `cbor:"grasped"`
}

var jointNames = []string{"joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6"}

// jointStatePayload moves each joint along its own sinusoid in device
// time since the first sample.
func jointStatePayload(k, D, d0 int64) []byte {
	tau := float64(D-d0) / 1e9
	js := JointState{Name: jointNames}
	js.Header.Stamp, js.Header.Seq = D, uint64(k)
	for j := range 6 {
		amp := 0.4 + 0.15*float64(j)
		w := 2 * math.Pi * (0.1 + 0.05*float64(j))
		ph := float64(j) * 0.7
		js.Position = append(js.Position, amp*math.Sin(w*tau+ph))
		js.Velocity = append(js.Velocity, amp*w*math.Cos(w*tau+ph))
		js.Effort = append(js.Effort, 8/float64(j+1)*math.Cos(w*tau+ph)+2)
	}
	b, _ := json.Marshal(js) // cannot fail: plain types, finite floats
	return b
}

// gripperPayload opens and closes the gripper every 4 s of device time.
func gripperPayload(_, D, d0 int64) []byte {
	tau := float64(D-d0) / 1e9
	width := 0.04 + 0.04*math.Cos(2*math.Pi*tau/4)
	g := GripperState{Stamp: D, Width: width, Grasped: width < 0.02}
	if g.Grasped {
		g.Force = 20 + 5*math.Sin(2*math.Pi*tau)
	}
	b, _ := cbor.Marshal(g) // cannot fail: plain types
	return b
}

// lidar renders a spinning 16-ring scan of a 8 m × 6 m × 3 m room (the
// sensor 1 m above the floor at its centre) with the robot's end effector,
// a 0.25 m sphere, circling in front of it.
type lidar struct {
	dirs [][3]float64 // unit ray directions
}

const lidarRings = 16

func newLidar(points int) *lidar {
	l := &lidar{dirs: make([][3]float64, points)}
	perRing := (points + lidarRings - 1) / lidarRings
	for i := range l.dirs {
		ring, step := i%lidarRings, i/lidarRings
		el := (-15 + 30*float64(ring)/(lidarRings-1)) * math.Pi / 180
		az := 2 * math.Pi * float64(step) / float64(perRing)
		l.dirs[i] = [3]float64{math.Cos(el) * math.Cos(az), math.Cos(el) * math.Sin(az), math.Sin(el)}
	}
	return l
}

// Room bounds relative to the sensor, metres.
var roomMin, roomMax = [3]float64{-4, -3, -1}, [3]float64{4, 3, 2}

func (l *lidar) payload(_, D, d0 int64) []byte {
	tau := float64(D-d0) / 1e9
	// End effector: circles (1.5, 0.5) at 0.6 m radius, once every 5 s.
	a := 2 * math.Pi * tau / 5
	c := [3]float64{1.5 + 0.6*math.Cos(a), 0.5 + 0.6*math.Sin(a), -0.2 + 0.2*math.Sin(2*a)}
	const r = 0.25
	cc := c[0]*c[0] + c[1]*c[1] + c[2]*c[2] - r*r

	buf := make([]byte, LidarHeaderSize+LidarStride*len(l.dirs))
	binary.LittleEndian.PutUint64(buf[0:], uint64(D))
	binary.LittleEndian.PutUint32(buf[8:], uint32(len(l.dirs)))
	for i, u := range l.dirs {
		dist, intensity := math.Inf(1), 0.0
		for ax := range 3 {
			switch {
			case u[ax] > 1e-9:
				dist = min(dist, roomMax[ax]/u[ax])
			case u[ax] < -1e-9:
				dist = min(dist, roomMin[ax]/u[ax])
			}
		}
		intensity = 40 + 20*math.Abs(u[2])
		b := u[0]*c[0] + u[1]*c[1] + u[2]*c[2]
		if disc := b*b - cc; disc >= 0 {
			if h := b - math.Sqrt(disc); h > 0 && h < dist {
				dist, intensity = h, 200
			}
		}
		p := buf[LidarHeaderSize+i*LidarStride:]
		binary.LittleEndian.PutUint32(p[0:], math.Float32bits(float32(u[0]*dist)))
		binary.LittleEndian.PutUint32(p[4:], math.Float32bits(float32(u[1]*dist)))
		binary.LittleEndian.PutUint32(p[8:], math.Float32bits(float32(u[2]*dist)))
		binary.LittleEndian.PutUint32(p[12:], math.Float32bits(float32(intensity)))
	}
	return buf
}
