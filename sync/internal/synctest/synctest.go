// Package synctest builds real fixtures for the sync packages' tests: a
// Pebble-backed storage.Store on a temp dir filled with episodes, and a
// versitygw S3 server on loopback that a test can kill and restart over the
// same data directory. It is imported only by tests.
package synctest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// OpenStore opens a real store in a temp dir and runs it until the test
// ends.
func OpenStore(t testing.TB) *storage.Store {
	t.Helper()
	return OpenStoreAt(t, t.TempDir())
}

// OpenStoreAt opens (or reopens) the store in dir and runs it until the
// test ends or the returned store is closed by the test.
func OpenStoreAt(t testing.TB, dir string) *storage.Store {
	t.Helper()
	st, err := storage.Open(storage.Options{Dir: dir, MinFree: 64 << 20, SyncInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = st.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = st.Close()
	})
	return st
}

// Append appends samples in batches and waits until all are durable.
func Append(t testing.TB, st *storage.Store, samples []sample.Sample) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	const batch = 64
	for i := 0; i < len(samples); i += batch {
		j := min(i+batch, len(samples))
		wg.Add(1)
		for {
			err := st.Append(samples[i:j], func(err error) {
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
				}
				wg.Done()
			})
			if errors.Is(err, storage.ErrOverloaded) {
				continue
			}
			if err != nil {
				t.Fatalf("append: %v", err)
			}
			break
		}
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("append not durable: %v", firstErr)
	}
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// Spec describes a synthetic episode.
type Spec struct {
	ID    string
	Cell  string
	Start time.Time
	// Duration of the episode window (no pre/post roll).
	Duration time.Duration
	// Video adds an H.264 camera at 30 fps (the embedded clip, looped),
	// with SPS/PPS only in the descriptor, and an H.265 camera.
	Video bool
	// Lidar adds a 10 Hz point cloud with a 16-byte header and xyz+intensity points.
	Lidar bool
	// Telemetry adds a 100 Hz JSON stream, a 50 Hz CBOR stream and a few
	// undecodable samples.
	Telemetry bool
	// RawBytes adds a raw-codec stream of random payloads of this total size.
	RawBytes int64
	// RawChunk is the payload size of the raw stream (default 256 KiB).
	RawChunk int
	Labels   map[string]string
	Priority bool
	State    episode.State
}

// Fixture is what Build stored.
type Fixture struct {
	Episode episode.Episode
	// Counts is the number of samples per stream.
	Counts map[string]uint64
	// Keyframes per video stream.
	Keyframes map[string]int
	Params    map[string][][]byte
}

// H264Params returns the SPS and PPS of the embedded clip.
func H264Params(aus [][][]byte) [][]byte {
	var ps [][]byte
	for _, n := range aus[0] {
		if t := n[0] & 0x1f; t == 7 || t == 8 {
			ps = append(ps, n)
		}
	}
	return ps
}

func h265Params(aus [][][]byte) [][]byte {
	var ps [][]byte
	for _, n := range aus[0] {
		if t := (n[0] >> 1) & 0x3f; t >= 32 && t <= 34 {
			ps = append(ps, n)
		}
	}
	return ps
}

func annexB(nalus [][]byte, skipParams func([]byte) bool) []byte {
	var b []byte
	for _, n := range nalus {
		if skipParams(n) {
			continue
		}
		b = append(b, 0, 0, 0, 1)
		b = append(b, n...)
	}
	return b
}

// Build stores the streams, samples and the closed episode described by sp
// and returns what it stored.
func Build(t testing.TB, st *storage.Store, sp Spec) Fixture {
	t.Helper()
	if sp.Cell == "" {
		sp.Cell = "cell1"
	}
	if sp.Start.IsZero() {
		sp.Start = time.Date(2026, 11, 26, 21, 30, 0, 0, time.UTC)
	}
	if sp.Duration == 0 {
		sp.Duration = 4 * time.Second
	}
	if sp.State == "" {
		sp.State = episode.Closed
	}
	if sp.RawChunk == 0 {
		sp.RawChunk = 256 << 10
	}
	start := sp.Start.UnixNano()
	end := start + sp.Duration.Nanoseconds()
	fx := Fixture{Counts: map[string]uint64{}, Keyframes: map[string]int{}, Params: map[string][][]byte{}}
	var samples []sample.Sample
	var streams []string
	var quality []episode.StreamReport
	add := func(s sample.Sample) {
		s.Seq = fx.Counts[s.Stream] + 1
		fx.Counts[s.Stream]++
		if s.RecvT == 0 {
			s.RecvT = s.T
		}
		samples = append(samples, s)
	}
	putDesc := func(d sample.Descriptor) {
		if _, err := st.PutDescriptor(d); err != nil {
			t.Fatalf("put descriptor: %v", err)
		}
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	id := sp.ID
	if id == "" {
		id = fmt.Sprintf("0193a1b2-0000-7000-8000-%012d", rng.IntN(1e12))
		sp.ID = id
	}
	// The episode record goes in first, so that storage never sees its
	// samples as uncovered timeline (which it expires after a minute).
	var planned []string
	if sp.Video {
		planned = append(planned, sp.Cell+"/cam-top", sp.Cell+"/cam-side")
	}
	if sp.Lidar {
		planned = append(planned, sp.Cell+"/lidar")
	}
	if sp.Telemetry {
		planned = append(planned, sp.Cell+"/robot1/joint_states", sp.Cell+"/robot1/status")
	}
	if sp.RawBytes > 0 {
		planned = append(planned, sp.Cell+"/blob")
	}
	e := episode.Episode{
		ID: id, Cell: sp.Cell, Task: "pick", Operator: "op7", Robot: "robot1", Labels: sp.Labels, Priority: sp.Priority,
		Trigger: "api", StopReason: "api", Start: start, Stop: end, Streams: planned, State: sp.State,
		Created: start, Updated: end,
	}
	if err := st.PutEpisode(e); err != nil {
		t.Fatalf("put episode: %v", err)
	}
	if sp.Video {
		for _, cam := range []struct {
			name string
			hevc bool
		}{{sp.Cell + "/cam-top", false}, {sp.Cell + "/cam-side", true}} {
			var aus [][][]byte
			var err error
			var params [][]byte
			var isPS func([]byte) bool
			codec := sample.CodecH264
			if cam.hevc {
				aus, err = assets.H265AccessUnits()
				params = h265Params(aus)
				codec = sample.CodecH265
				isPS = func(n []byte) bool { t := (n[0] >> 1) & 0x3f; return t >= 32 && t <= 34 }
			} else {
				aus, err = assets.H264AccessUnits()
				params = H264Params(aus)
				isPS = func(n []byte) bool { t := n[0] & 0x1f; return t == 7 || t == 8 }
			}
			if err != nil {
				t.Fatal(err)
			}
			d := sample.Descriptor{Stream: cam.name, Kind: sample.KindVideo, Codec: codec, Params: params,
				Device: "cam", Source: "rtsp://cam.local/stream", Clock: sample.ClockDevice}
			putDesc(d)
			// a second version half way through (a camera reconnect with a
			// different source); parameters stay the same.
			d2 := d
			d2.Source = "rtsp://cam.local/stream2"
			d2.Since = start + sp.Duration.Nanoseconds()/2
			putDesc(d2)
			fx.Params[cam.name] = params
			streams = append(streams, cam.name)
			n := int(sp.Duration.Seconds() * 30)
			var bytes uint64
			for i := 0; i < n; i++ {
				au := aus[i%len(aus)]
				key := false
				for _, nal := range au {
					if cam.hevc {
						tt := (nal[0] >> 1) & 0x3f
						key = key || (tt >= 16 && tt <= 21)
					} else {
						key = key || nal[0]&0x1f == 5
					}
				}
				ts := start + int64(i)*int64(time.Second)/30
				s := sample.Sample{Stream: cam.name, T: ts, SrcT: ts - 3_000_000, Payload: annexB(au, isPS)}
				if key {
					s.Flags = sample.Keyframe
					fx.Keyframes[cam.name]++
				}
				bytes += uint64(len(s.Payload))
				add(s)
			}
			quality = append(quality, episode.StreamReport{Stream: cam.name, Kind: "video", Codec: string(codec), Samples: uint64(n), Bytes: bytes})
		}
	}
	if sp.Lidar {
		name := sp.Cell + "/lidar"
		layout := &sample.PointLayout{HeaderSize: 16, Stride: 16, Fields: []sample.PointField{
			{Name: "x", Offset: 0, Type: "float32"}, {Name: "y", Offset: 4, Type: "float32"},
			{Name: "z", Offset: 8, Type: "float32"}, {Name: "intensity", Offset: 12, Type: "float32"},
		}}
		putDesc(sample.Descriptor{Stream: name, Kind: sample.KindPointCloud, Codec: sample.CodecRaw, Device: "lidar",
			Source: "cell1/lidar/points", Clock: sample.ClockArrival, Layout: layout})
		streams = append(streams, name)
		n := int(sp.Duration.Seconds() * 10)
		for i := 0; i < n; i++ {
			p := make([]byte, 16+1000*16)
			binary.LittleEndian.PutUint64(p, uint64(i))
			for k := 0; k < 1000; k++ {
				off := 16 + k*16
				a := float64(k) / 1000 * 2 * math.Pi
				binary.LittleEndian.PutUint32(p[off:], math.Float32bits(float32(math.Cos(a)*5)))
				binary.LittleEndian.PutUint32(p[off+4:], math.Float32bits(float32(math.Sin(a)*5)))
				binary.LittleEndian.PutUint32(p[off+8:], math.Float32bits(float32(i)*0.01))
				binary.LittleEndian.PutUint32(p[off+12:], math.Float32bits(float32(k%256)))
			}
			add(sample.Sample{Stream: name, T: start + int64(i)*int64(100*time.Millisecond) + 1_000, Payload: p})
		}
		// one truncated frame: not a whole number of points
		add(sample.Sample{Stream: name, T: end - 1, Payload: make([]byte, 16+7)})
		quality = append(quality, episode.StreamReport{Stream: name, Kind: "pointcloud", Samples: uint64(n + 1)})
	}
	if sp.Telemetry {
		js := sp.Cell + "/robot1/joint_states"
		putDesc(sample.Descriptor{Stream: js, Kind: sample.KindTelemetry, Codec: sample.CodecJSON, Device: "robot1",
			Source: "factory/cell1/robot1/joint_states", Clock: sample.ClockDevice})
		cb := sp.Cell + "/robot1/status"
		putDesc(sample.Descriptor{Stream: cb, Kind: sample.KindTelemetry, Codec: sample.CodecCBOR, Device: "robot1",
			Source: "factory/cell1/robot1/status", Clock: sample.ClockArrival})
		streams = append(streams, js, cb)
		n := int(sp.Duration.Seconds() * 100)
		for i := 0; i < n; i++ {
			ts := start + int64(i)*int64(10*time.Millisecond) + 2_000
			p, _ := json.Marshal(map[string]any{"stamp": ts, "position": []float64{rng.Float64(), rng.Float64()}, "name": []string{"j1", "j2"}})
			s := sample.Sample{Stream: js, T: ts, SrcT: ts - 500_000, Payload: p}
			if i%97 == 13 {
				s.Payload = []byte(`{"truncated":`)
				s.Flags = sample.DecodeError
			}
			add(s)
			if i%2 == 0 {
				p, _ := cbor.Marshal(map[string]any{"mode": "auto", "temp": 41.5 + float64(i%7), "ok": true, "raw": []byte{1, 2, 3}})
				add(sample.Sample{Stream: cb, T: ts + 1, Payload: p})
			}
		}
		quality = append(quality, episode.StreamReport{Stream: js, Samples: fx.Counts[js]}, episode.StreamReport{Stream: cb, Samples: fx.Counts[cb]})
	}
	if sp.RawBytes > 0 {
		name := sp.Cell + "/blob"
		putDesc(sample.Descriptor{Stream: name, Kind: sample.KindTelemetry, Codec: sample.CodecRaw, Device: "blob", Source: "factory/blob"})
		streams = append(streams, name)
		n := int((sp.RawBytes + int64(sp.RawChunk) - 1) / int64(sp.RawChunk))
		step := sp.Duration.Nanoseconds() / int64(n+1)
		// Random bytes (incompressible, like video) from a seeded ChaCha8
		// stream: fast, and different for every episode id.
		var seed [32]byte
		copy(seed[:], sp.ID)
		_, _ = rand.Read(seed[len(sp.ID)%32:])
		cc := mrand.NewChaCha8(seed)
		for i := 0; i < n; i++ {
			p := make([]byte, sp.RawChunk)
			_, _ = cc.Read(p)
			binary.LittleEndian.PutUint64(p, uint64(i))
			add(sample.Sample{Stream: name, T: start + int64(i)*step + 3_000, Payload: p})
			if len(samples) >= 256 {
				Append(t, st, samples)
				samples = samples[:0]
			}
		}
		quality = append(quality, episode.StreamReport{Stream: name, Kind: "telemetry", Codec: "raw", Samples: uint64(n), Bytes: uint64(n * sp.RawChunk)})
	}
	Append(t, st, samples)
	e.Streams, e.Quality = streams, quality
	if err := st.PutEpisode(e); err != nil {
		t.Fatalf("put episode: %v", err)
	}
	fx.Episode = e
	return fx
}

// S3 is a versitygw server on loopback.
type S3 struct {
	Endpoint       string // host:port
	Access, Secret string
	Dir            string
	bin            string
	cmd            *exec.Cmd
	t              testing.TB
}

// Versitygw returns the path of the versitygw binary, skipping the test
// under -short if it is missing and failing it otherwise.
func Versitygw(t testing.TB) string {
	t.Helper()
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		home, _ := os.UserHomeDir()
		gopath = filepath.Join(home, "go")
	}
	bin := filepath.Join(gopath, "bin", "versitygw")
	if _, err := os.Stat(bin); err != nil {
		if p, err2 := exec.LookPath("versitygw"); err2 == nil {
			return p
		}
		if testing.Short() {
			t.Skip("versitygw not installed (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0); skipped under -short")
		}
		t.Fatalf("versitygw not found at %s: install it with go install github.com/versity/versitygw/cmd/versitygw@v1.8.0", bin)
	}
	return bin
}

// StartS3 starts versitygw on a free loopback port over a fresh directory.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	s := &S3{Access: "episodedtest", Secret: "episodedsecret123", Dir: t.TempDir(), bin: Versitygw(t), t: t}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoint = l.Addr().String()
	l.Close()
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start (re)starts the server on its port and data dir and waits until it
// accepts connections.
func (s *S3) Start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, "--port", s.Endpoint, "--access", s.Access, "--secret", s.Secret, "--quiet", "posix", s.Dir)
	// versitygw prints a banner; keep it out of go test output (it would
	// split benchmark result lines).
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start versitygw: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", s.Endpoint, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("versitygw did not come up on %s", s.Endpoint)
}

// Stop kills the server (SIGKILL, as a crash would) and waits for it.
func (s *S3) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Port returns the server's port.
func (s *S3) Port() int {
	_, p, _ := net.SplitHostPort(s.Endpoint)
	n, _ := strconv.Atoi(p)
	return n
}

// Bytes returns b's content as a reader-friendly copy (helper for tests).
func Bytes(b []byte) *bytes.Reader { return bytes.NewReader(b) }
