package sim

import (
	"testing"
	"time"

	"github.com/episoded/episoded/assets"
)

// BenchmarkSimulatedSecond measures the CPU cost of producing one second
// of the default cell's data (200 joint states, 50 gripper states, 10
// lidar frames, 2 cameras × 30 H.264 frames packetized to RTP) without
// sockets, against a baseline measured in the same run: copying the same
// number of bytes. It reports the ratio to that copy and the share of one
// core the simulator needs to keep up in real time.
func BenchmarkSimulatedSecond(b *testing.B) {
	s, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	s.t0 = time.Now().UnixNano()
	for _, c := range s.cams {
		c.clk = newDeviceClock(c.clock, s.t0)
		c.d0 = c.clk.at(s.t0)
	}
	l := newLidar(DefaultLidarPoints)
	produce := func() (bytes int) {
		for k := range int64(200) {
			bytes += len(jointStatePayload(k, s.t0+k*5e6, s.t0))
		}
		for k := range int64(50) {
			bytes += len(gripperPayload(k, s.t0+k*20e6, s.t0))
		}
		for k := range int64(10) {
			bytes += len(l.payload(k, s.t0+k*100e6, s.t0))
		}
		for _, c := range s.cams {
			enc, _ := c.forma.CreateEncoder()
			for k := range int64(assets.FrameRate) {
				_ = c.clk.inv(c.frameDeviceTime(k))
				pkts, err := enc.Encode(s.aus[k%int64(len(s.aus))])
				if err != nil {
					b.Fatal(err)
				}
				for _, p := range pkts {
					buf, _ := p.Marshal()
					bytes += len(buf)
				}
			}
		}
		return bytes
	}
	n := produce()
	src, dst := make([]byte, n), make([]byte, n)

	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		produce()
	}
	simNS := float64(time.Since(start).Nanoseconds()) / float64(b.N)

	b.StopTimer()
	const copies = 200
	cstart := time.Now()
	for range copies {
		copy(dst, src)
	}
	copyNS := float64(time.Since(cstart).Nanoseconds()) / copies

	b.ReportMetric(float64(n), "bytes/simsec")
	b.ReportMetric(simNS/copyNS, "x_copy")
	b.ReportMetric(simNS/1e9*100, "%core")
}

// BenchmarkTruth measures a ground-truth lookup (video, nearest frame)
// against the baseline of the device clock alone (one d(t) evaluation).
func BenchmarkTruth(b *testing.B) {
	s, err := New(Options{Clocks: map[string]Clock{"cam1": {Offset: time.Second, DriftPPB: PPM(40)}}})
	if err != nil {
		b.Fatal(err)
	}
	s.t0 = time.Now().UnixNano()
	c := s.cams[0]
	c.clk = newDeviceClock(c.clock, s.t0)
	c.d0 = c.clk.at(s.t0)
	c.frames.Store(1 << 20)
	D := c.frameDeviceTime(12345) + 1
	const base = 1 << 20
	bstart := time.Now()
	var sink int64
	for i := range int64(base) {
		sink += c.clk.at(s.t0 + i)
	}
	baseNS := float64(time.Since(bstart).Nanoseconds()) / base
	b.ResetTimer()
	for b.Loop() {
		if _, ok := c.truth(D); !ok {
			b.Fatal("no truth")
		}
	}
	b.StopTimer()
	_ = sink
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/baseNS, "x_clock_eval")
}
