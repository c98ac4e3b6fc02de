package replay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/testwait"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// openStore opens and runs a real store on a temp dir.
func openStore(t testing.TB) *storage.Store {
	t.Helper()
	st, err := storage.Open(storage.Options{Dir: t.TempDir(), MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("store run: %v", err)
		}
		if err := st.Close(); err != nil && !errors.Is(err, storage.ErrClosed) {
			t.Errorf("store close: %v", err)
		}
	})
	return st
}

// Stream ids and topics of the test episode.
const (
	sJoints = "cell1/robot1/joint_states" // JSON, 200 Hz, Source is its topic
	sLidar  = "cell1/lidar"               // point cloud, 10 Hz, Source is its topic
	sDoor   = "cell1/io/door"             // CBOR, 20 Hz, templated: Source is a filter
	sCam    = "cell1/cam1"                // H.264, 30 fps

	topicJoints = "robots/r1/joint_states"
	topicLidar  = "lidar/cell1/scan"
	filterDoor  = "cell1/io/+"
)

var lidarLayout = &sample.PointLayout{HeaderSize: 16, Stride: 16, Fields: []sample.PointField{
	{Name: "x", Offset: 0, Type: "float32"}, {Name: "y", Offset: 4, Type: "float32"},
	{Name: "z", Offset: 8, Type: "float32"}, {Name: "intensity", Offset: 12, Type: "float32"},
}}

// testEpisode is what buildEpisode stored.
type testEpisode struct {
	ep      episode.Episode
	descs   map[string][]sample.Descriptor
	samples map[string][]sample.Sample // per stream, in seq order
	params  [][]byte                   // SPS, PPS
}

// h264Params returns the clip's first SPS and PPS.
func h264Params(aus [][][]byte) [][]byte {
	var sps, pps []byte
	for _, au := range aus {
		for _, n := range au {
			switch n[0] & 0x1f {
			case 7:
				if sps == nil {
					sps = n
				}
			case 8:
				if pps == nil {
					pps = n
				}
			}
		}
	}
	return [][]byte{sps, pps}
}

func annexB(nalus [][]byte) []byte {
	var b []byte
	for _, n := range nalus {
		b = append(b, 0, 0, 0, 1)
		b = append(b, n...)
	}
	return b
}

// buildEpisode stores a closed episode of dur seconds starting at t0 in
// st: 200 Hz JSON joint states, 10 Hz lidar frames (16 KB), 20 Hz CBOR
// door events on a templated stream, and 30 fps H.264 from the clip.
func buildEpisode(t testing.TB, st *storage.Store, id string, t0 int64, dur time.Duration, state episode.State) *testEpisode {
	t.Helper()
	aus, err := assets.H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	te := &testEpisode{descs: map[string][]sample.Descriptor{}, samples: map[string][]sample.Sample{}, params: h264Params(aus)}
	descs := []sample.Descriptor{
		{Stream: sJoints, Kind: sample.KindTelemetry, Codec: sample.CodecJSON, Device: "robot1", Source: topicJoints, Clock: sample.ClockDevice},
		{Stream: sLidar, Kind: sample.KindPointCloud, Codec: sample.CodecRaw, Device: "lidar1", Source: topicLidar, Clock: sample.ClockDevice, Layout: lidarLayout},
		{Stream: sDoor, Kind: sample.KindTelemetry, Codec: sample.CodecCBOR, Device: "io", Source: filterDoor, Clock: sample.ClockArrival, Latency: int64(2 * time.Millisecond)},
		{Stream: sCam, Kind: sample.KindVideo, Codec: sample.CodecH264, Device: "cam1", Source: "rtsp://10.0.0.5/stream1", Clock: sample.ClockDevice, Params: te.params},
	}
	for _, d := range descs {
		d.Since = t0
		got, err := st.PutDescriptor(d)
		if err != nil {
			t.Fatal(err)
		}
		te.descs[d.Stream] = []sample.Descriptor{got}
	}
	var all []sample.Sample
	add := func(s sample.Sample) {
		s.Seq = uint64(len(te.samples[s.Stream]) + 1)
		s.SrcT = s.T - 3_000_000
		s.RecvT = s.T + 1_000_000
		te.samples[s.Stream] = append(te.samples[s.Stream], s)
		all = append(all, s)
	}
	end := t0 + int64(dur)
	for i := 0; ; i++ {
		ts := t0 + int64(i)*int64(5*time.Millisecond)
		if ts >= end {
			break
		}
		p := fmt.Sprintf(`{"seq":%d,"stamp":%d,"position":[%.4f,%.4f,%.4f,%.4f,%.4f,%.4f],"velocity":[0,0,0,0,0,0]}`,
			i, ts, math.Sin(float64(i)/50), math.Cos(float64(i)/50), 0.5, -1.25, 0.001*float64(i), 3.14159)
		s := sample.Sample{Stream: sJoints, T: ts, Payload: []byte(p)}
		if i == 7 {
			s.Flags, s.Lost = sample.Discontinuity, 2
		}
		add(s)
	}
	for i := 0; ; i++ {
		ts := t0 + int64(i)*int64(100*time.Millisecond) + 1 // not aligned with the joints
		if ts >= end {
			break
		}
		const points = 1000
		frame := make([]byte, 16+points*16)
		binary.LittleEndian.PutUint64(frame, uint64(ts))
		binary.LittleEndian.PutUint32(frame[8:], points)
		for k := range points {
			o := 16 + k*16
			binary.LittleEndian.PutUint32(frame[o:], math.Float32bits(float32(k)*0.01))
			binary.LittleEndian.PutUint32(frame[o+4:], math.Float32bits(float32(i)))
			binary.LittleEndian.PutUint32(frame[o+8:], math.Float32bits(1.5))
			binary.LittleEndian.PutUint32(frame[o+12:], math.Float32bits(float32(k%256)))
		}
		add(sample.Sample{Stream: sLidar, T: ts, Payload: frame})
	}
	for i := 0; ; i++ {
		ts := t0 + int64(i)*int64(50*time.Millisecond) + 2
		if ts >= end {
			break
		}
		p, err := cbor.Marshal(map[string]any{"open": i%2 == 0, "count": i})
		if err != nil {
			t.Fatal(err)
		}
		add(sample.Sample{Stream: sDoor, T: ts, Payload: p})
	}
	for i := 0; ; i++ {
		ts := t0 + int64(i)*int64(time.Second)/assets.FrameRate + 3
		if ts >= end {
			break
		}
		au := aus[i%len(aus)]
		s := sample.Sample{Stream: sCam, T: ts, Payload: annexB(au)}
		for _, n := range au {
			if n[0]&0x1f == 5 {
				s.Flags |= sample.Keyframe
			}
		}
		add(s)
	}
	durable := make(chan error, 1)
	if err := st.Append(all, func(err error) { durable <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-durable; err != nil {
		t.Fatal(err)
	}
	te.ep = episode.Episode{ID: id, Cell: "cell1", Task: "pick", Trigger: "api", StopReason: "api",
		Start: t0, Stop: end, Streams: []string{sCam, sDoor, sJoints, sLidar}, State: state,
		Labels: map[string]string{"shift": "night"}, Created: t0, Updated: end}
	if state == episode.Recording {
		te.ep.Stop = 0
	}
	if err := st.PutEpisode(te.ep); err != nil {
		t.Fatal(err)
	}
	return te
}

// fail on missing binaries except under -short.
func needBin(t testing.TB, what string, bins ...string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("needs %s; skipped under -short", what)
	}
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (CI installs it, see .ci/run): %v", b, err)
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startMosquitto runs a real broker on a free loopback port until the test
// ends and returns its URL.
func startMosquitto(t testing.TB) string {
	t.Helper()
	needBin(t, "a real mosquitto broker", "/usr/sbin/mosquitto")
	port := freePort(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	cfg := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\n", port)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/sbin/mosquitto", "-c", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logf.Close()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testwait.For(t, 10*time.Second, "mosquitto to listen on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, func() string {
		b, _ := os.ReadFile(logf.Name())
		return strings.TrimSpace(string(b))
	})
	return "tcp://" + addr
}
