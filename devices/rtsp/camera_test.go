package rtsp

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/sample"
)

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 123456789, time.UTC)

const tsBase = uint32(0xFFFF0000) // close to wrap-around on purpose

// frameTS is the RTP timestamp of frame i at 90 kHz and 30 fps.
func frameTS(i int) uint32 { return tsBase + uint32(i)*3000 }

// frameNTP is the wall time a sender report mapping frameTS(0) to t0 gives
// frame i (truncated like gortsplib does).
func frameNTP(i int) int64 {
	return t0.UnixNano() + int64(time.Duration(uint32(i)*3000)*time.Second/90000)
}

func TestRecordsEveryAccessUnit(t *testing.T) {
	for _, c := range []sample.Codec{sample.CodecH264, sample.CodecH265} {
		t.Run(string(c), func(t *testing.T) { testRecordClip(t, c, "tcp") })
	}
	t.Run("h264-udp", func(t *testing.T) { testRecordClip(t, sample.CodecH264, "udp") })
}

func testRecordClip(t *testing.T, codec sample.Codec, transport string) {
	cl := loadClip(t, codec)
	srv := startServer(t, "", cl.desc, "", "")
	if transport == "udp" {
		srv.close()
		srv = startUDPServer(t, cl)
	}
	sink := newMemSink()
	reg := prometheus.NewRegistry()
	cam, err := New(Options{
		Device: "cam1", Stream: "cell1/cam1", URL: srv.url("cam"), Transport: transport,
		Latency: 50 * time.Millisecond, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	stop, done := runCamera(t, cam, sink)
	srv.waitPlay(t)

	var wantBytes int
	for i := range cl.aus {
		for _, p := range cl.packets(t, i, frameTS(i)) {
			if err := srv.str().WritePacketRTP(cl.medi, p); err != nil {
				t.Fatal(err)
			}
		}
		wantBytes += len(annexBOf(cl.aus[i]))
		if i == 0 {
			// The client matches a sender report to the SSRC it has seen,
			// so the report follows the first sample.
			waitFor(t, 15*time.Second, "the first sample", func() bool { return sink.count() >= 1 })
			senderReport(t, srv.str(), cl, frameTS(0), t0)
			// Over UDP the report and the packets travel on separate
			// sockets: give the report a head start (pacing). Samples
			// before it are allowed no src_t; see below.
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(2 * time.Millisecond) // pacing, like a camera
	}
	waitFor(t, 15*time.Second, "all access units", func() bool { return sink.count() >= len(cl.aus) })
	if s := cam.Status(); s.State != devices.Streaming || s.Device != "cam1" || s.Protocol != "rtsp" {
		t.Errorf("status: %+v", s)
	}
	select {
	case <-done:
		t.Fatal("Run returned before cancel")
	default:
	}
	// Once Run has returned the camera adds nothing more: the counts below
	// are final (no sleep-and-hope that nothing else arrives).
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	descs, samples := sink.snapshot()
	if len(samples) != len(cl.aus) {
		t.Fatalf("got %d samples, want %d", len(samples), len(cl.aus))
	}
	// Over TCP, H.264 packets are read by the tap (conn.go), the rest
	// through gortsplib; the payloads below must be the same either way.
	if tapped := cam.cnt.tapped.Load(); (codec == sample.CodecH264 && transport == "tcp") != (tapped > 0) {
		t.Errorf("%s over %s: %d RTP packets read by the tap", codec, transport, tapped)
	}
	for i, s := range samples {
		if !bytes.Equal(s.Payload, annexBOf(cl.aus[i])) {
			t.Fatalf("sample %d: payload differs (%d bytes, want %d)", i, len(s.Payload), len(annexBOf(cl.aus[i])))
		}
		if got, want := s.Flags.Has(sample.Keyframe), i%30 == 0; got != want {
			t.Errorf("sample %d: keyframe %v, want %v", i, got, want)
		}
		if s.Flags.Has(sample.Discontinuity) || s.Lost != 0 || s.Dropped != 0 {
			t.Errorf("sample %d: flags %b lost %d dropped %d on a clean stream", i, s.Flags, s.Lost, s.Dropped)
		}
		if s.Stream != "cell1/cam1" || s.RecvT == 0 || (i > 0 && s.RecvT < samples[i-1].RecvT) {
			t.Errorf("sample %d: stream %q recv_t %d", i, s.Stream, s.RecvT)
		}
		if i == 0 || i < 10 && s.SrcT == 0 && transport == "udp" {
			if s.SrcT != 0 {
				t.Errorf("sample 0 arrived before any sender report but has src_t %d", s.SrcT)
			}
			continue
		}
		if d := time.Duration(s.SrcT - frameNTP(i)); d < -time.Millisecond || d > time.Millisecond {
			t.Errorf("sample %d: src_t off by %v (got %d want %d)", i, d, s.SrcT, frameNTP(i))
		}
	}
	if len(descs) != 1 {
		t.Fatalf("got %d descriptors, want 1: %+v", len(descs), descs)
	}
	d := descs[0]
	if d.Stream != "cell1/cam1" || d.Kind != sample.KindVideo || d.Codec != codec || d.Device != "cam1" ||
		d.Source != srv.url("cam") || d.Clock != sample.ClockDevice || d.Latency != int64(50*time.Millisecond) {
		t.Errorf("descriptor: %+v", d)
	}
	if len(d.Params) != len(cl.params) {
		t.Fatalf("descriptor has %d parameter sets, want %d", len(d.Params), len(cl.params))
	}
	for i := range d.Params {
		if !bytes.Equal(d.Params[i], cl.params[i]) {
			t.Errorf("parameter set %d differs", i)
		}
	}
	st := cam.Stats()
	if st.Frames != uint64(len(cl.aus)) || st.Keyframes != 4 || st.Bytes != uint64(wantBytes) ||
		st.DroppedFrames != 0 || st.LostPackets != 0 || st.Codec != string(codec) {
		t.Errorf("stats: %+v (want bytes %d)", st, wantBytes)
	}
	if got := metricValue(t, reg, "episoded_rtsp_frames_total"); got != float64(len(cl.aus)) {
		t.Errorf("episoded_rtsp_frames_total = %v", got)
	}
	if s := cam.Status(); s.State != devices.Stopped {
		t.Errorf("state after stop: %s", s.State)
	}
}

// metricValue gathers reg and returns the value of the single counter or
// gauge series called name.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func TestArrivalClock(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	srv := startServer(t, "", cl.desc, "", "")
	sink := newMemSink()
	cam, err := New(Options{Device: "cam2", URL: srv.url("cam"), Clock: "arrival", Latency: 80 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCamera(t, cam, sink)
	srv.waitPlay(t)
	for i := range 40 {
		for _, p := range cl.packets(t, i, frameTS(i)) {
			srv.str().WritePacketRTP(cl.medi, p) //nolint:errcheck
		}
		if i == 0 {
			waitFor(t, 15*time.Second, "the first sample", func() bool { return sink.count() >= 1 })
			senderReport(t, srv.str(), cl, frameTS(0), t0)
		}
		time.Sleep(2 * time.Millisecond) // pacing, like a camera
	}
	waitFor(t, 10*time.Second, "40 samples", func() bool { return sink.count() >= 40 })
	descs, samples := sink.snapshot()
	for i, s := range samples {
		if s.SrcT != 0 {
			t.Fatalf("sample %d: src_t %d with clock arrival", i, s.SrcT)
		}
	}
	if descs[0].Clock != sample.ClockArrival || descs[0].Latency != int64(80*time.Millisecond) || descs[0].Stream != "cam2" {
		t.Fatalf("descriptor %+v", descs[0])
	}
}

func TestLossResumesAtKeyframe(t *testing.T) {
	for _, tc := range []struct {
		name         string
		au, pkt      int // drop packet pkt of access unit au (-1: last); au is moved to the next multi-packet unit
		resume       int // first access unit stored after the loss
		wantDropped  uint32
		wantLostPkts uint32
	}{
		{name: "p-frame-last-packet", au: 40, pkt: -1, resume: 60},
		{name: "p-frame-first-packet", au: 45, pkt: 0, resume: 60},
		{name: "keyframe-middle", au: 60, pkt: 2, resume: 90},
		{name: "keyframe-first-packet", au: 60, pkt: 0, resume: 90},
	} {
		for _, codec := range []sample.Codec{sample.CodecH264, sample.CodecH265} {
			t.Run(string(codec)+"/"+tc.name, func(t *testing.T) {
				cl := loadClip(t, codec)
				tc.au = cl.multiPacketAU(t, tc.au)
				tc.wantDropped, tc.wantLostPkts = uint32(tc.resume-tc.au), 1
				srv := startServer(t, "", cl.desc, "", "")
				sink := newMemSink()
				cam, err := New(Options{Device: "cam3", URL: srv.url("cam")})
				if err != nil {
					t.Fatal(err)
				}
				stop, _ := runCamera(t, cam, sink)
				srv.waitPlay(t)
				for i := range cl.aus {
					pkts := cl.packets(t, i, frameTS(i))
					drop := -2
					if i == tc.au {
						if len(pkts) < 2 {
							t.Fatalf("access unit %d has %d packets; the test needs a multi-packet unit", i, len(pkts))
						}
						drop = tc.pkt
						if drop == -1 {
							drop = len(pkts) - 1
						}
					}
					for j, p := range pkts {
						if j != drop {
							srv.str().WritePacketRTP(cl.medi, p) //nolint:errcheck
						}
					}
					time.Sleep(2 * time.Millisecond) // pacing, like a camera
				}
				want := tc.au + (len(cl.aus) - tc.resume)
				waitFor(t, 15*time.Second, "samples", func() bool { return sink.count() >= want })
				if err := stop(); err != nil { // the counts below are final
					t.Fatal(err)
				}
				_, samples := sink.snapshot()
				if len(samples) != want {
					t.Fatalf("got %d samples, want %d", len(samples), want)
				}
				for k, s := range samples {
					i := k
					if k >= tc.au {
						i = k - tc.au + tc.resume
					}
					if !bytes.Equal(s.Payload, annexBOf(cl.aus[i])) {
						t.Fatalf("sample %d is not access unit %d", k, i)
					}
					gap := k == tc.au
					if s.Flags.Has(sample.Discontinuity) != gap {
						t.Errorf("sample %d (au %d): discontinuity %v", k, i, !gap)
					}
					if gap {
						if !s.Flags.Has(sample.Keyframe) {
							t.Errorf("first sample after the loss is not a keyframe")
						}
						if s.Lost != tc.wantLostPkts || s.Dropped != tc.wantDropped {
							t.Errorf("first sample after the loss: lost %d dropped %d, want %d and %d",
								s.Lost, s.Dropped, tc.wantLostPkts, tc.wantDropped)
						}
					}
				}
				st := cam.Stats()
				if st.LostPackets != uint64(tc.wantLostPkts) || st.DroppedFrames != uint64(tc.wantDropped) {
					t.Errorf("stats: %+v", st)
				}
			})
		}
	}
}

// slowSink is a sink whose writes take a while, like storage under
// backpressure.
type slowSink struct {
	*memSink
	delay time.Duration
}

func (s slowSink) Write(x sample.Sample, done func(error)) error {
	time.Sleep(s.delay) // the slowness under test
	return s.memSink.Write(x, done)
}

// TestSlowSinkAccountsForEveryFrame: with a tiny queue and a slow sink,
// frames are dropped, but every published frame is either stored whole or
// counted, and every stored run starts at a keyframe.
func TestSlowSinkAccountsForEveryFrame(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	srv := startServer(t, "", cl.desc, "", "")
	sink := newMemSink()
	cam, err := New(Options{Device: "slow", URL: srv.url("cam"), QueueSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	stop, _ := runCamera(t, cam, slowSink{sink, 20 * time.Millisecond})
	srv.waitPlay(t)
	for i := range cl.aus {
		for _, p := range cl.packets(t, i, frameTS(i)) {
			srv.str().WritePacketRTP(cl.medi, p) //nolint:errcheck
		}
		time.Sleep(time.Millisecond) // pacing, faster than the sink
	}
	waitFor(t, 15*time.Second, "every frame accounted for", func() bool {
		st := cam.Stats()
		return st.Frames+st.DroppedFrames >= uint64(len(cl.aus))
	})
	if err := stop(); err != nil { // the counts below are final
		t.Fatal(err)
	}
	_, samples := sink.snapshot()
	st := cam.Stats()
	if st.Frames+st.DroppedFrames != uint64(len(cl.aus)) || st.QueueFull == 0 || st.LostPackets != 0 {
		t.Fatalf("stats %+v: stored+dropped should be %d with some queue-full drops", st, len(cl.aus))
	}
	next, sumDropped := 0, uint64(0)
	for k, s := range samples {
		// Find which access unit this is; they must come in order.
		i := next
		for i < len(cl.aus) && !bytes.Equal(s.Payload, annexBOf(cl.aus[i])) {
			i++
		}
		if i == len(cl.aus) {
			t.Fatalf("sample %d is not a whole access unit after %d", k, next)
		}
		skipped := i - next
		if skipped > 0 && (!s.Flags.Has(sample.Discontinuity) || !s.Flags.Has(sample.Keyframe) || int(s.Dropped) != skipped) {
			t.Errorf("sample %d (au %d) after %d dropped frames: flags %b dropped %d", k, i, skipped, s.Flags, s.Dropped)
		}
		if skipped == 0 && s.Flags.Has(sample.Discontinuity) {
			t.Errorf("sample %d (au %d): discontinuity without a gap", k, i)
		}
		sumDropped += uint64(s.Dropped)
		next = i + 1
	}
	if sumDropped+uint64(len(cl.aus)-next) != st.DroppedFrames {
		t.Errorf("dropped in samples %d + after the last %d != counted %d", sumDropped, len(cl.aus)-next, st.DroppedFrames)
	}
}

func TestServerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("server restart takes ~6s; skipped with -short")
	}
	cl := loadClip(t, sample.CodecH264)
	addr := freeAddr(t)
	srv := startServer(t, addr, cl.desc, "", "")
	sink := newMemSink()
	cam, err := New(Options{Device: "cam4", URL: srv.url("cam"), ReadTimeout: 2 * time.Second,
		Backoff: devices.BackoffPolicy{Min: 200 * time.Millisecond, Max: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	stop, done := runCamera(t, cam, sink)
	srv.waitPlay(t)
	for i := range 60 {
		for _, p := range cl.packets(t, i, frameTS(i)) {
			srv.str().WritePacketRTP(cl.medi, p) //nolint:errcheck
		}
		time.Sleep(3 * time.Millisecond) // pacing, like a camera
	}
	waitFor(t, 10*time.Second, "60 samples", func() bool { return sink.count() >= 60 })

	srv.close()
	// Down: the camera notices and keeps trying (two more reconnects).
	reconnects := cam.Status().Reconnects
	waitFor(t, 30*time.Second, "reconnect attempts while the server is down", func() bool {
		st := cam.Status()
		return st.State != devices.Streaming && st.Reconnects >= reconnects+2
	})
	st := cam.Status()
	if st.State == devices.Streaming || st.LastError == "" {
		t.Errorf("status while the server is down: %+v", st)
	}
	select {
	case <-done:
		t.Fatal("Run returned while the server was down")
	default:
	}

	cl.newEncoder(t) // a restarted camera: new SSRC and sequence numbers
	srv2 := startServer(t, addr, cl.desc, "", "")
	srv2.waitPlay(t)
	for i := range 90 {
		for _, p := range cl.packets(t, i, frameTS(i)+12345) {
			srv2.str().WritePacketRTP(cl.medi, p) //nolint:errcheck
		}
		time.Sleep(3 * time.Millisecond) // pacing, like a camera
	}
	waitFor(t, 10*time.Second, "150 samples", func() bool { return sink.count() >= 150 })
	_, samples := sink.snapshot()
	var gaps []int
	for k, s := range samples {
		if s.Flags.Has(sample.Discontinuity) {
			gaps = append(gaps, k)
		}
		if !bytes.Equal(s.Payload, annexBOf(cl.aus[k%60])) && k < 60 || k >= 60 && !bytes.Equal(s.Payload, annexBOf(cl.aus[k-60])) {
			t.Fatalf("sample %d has unexpected payload", k)
		}
	}
	if len(gaps) != 1 || gaps[0] != 60 || !samples[60].Flags.Has(sample.Keyframe) {
		t.Fatalf("discontinuities at %v, want exactly one at 60 (a keyframe)", gaps)
	}
	st = cam.Status()
	if st.Reconnects < 1 || st.State != devices.Streaming {
		t.Errorf("status after restart: %+v", st)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestOptionsValidate(t *testing.T) {
	_, err := New(Options{URL: "http://u:topsecret@h/x", Transport: "quic", Clock: "gps", Latency: -1})
	if err == nil {
		t.Fatal("no error for bad options")
	}
	for _, want := range []string{"id: is required", "url", "transport", "clock", "latency"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "topsecret") {
		t.Errorf("error leaks the password: %v", err)
	}
	if _, err := New(Options{Device: "d", URL: "rtsp://h/x", Password: "pw1234"}); err == nil {
		t.Error("password without a username accepted")
	}
	c, err := New(Options{Device: "d", URL: "rtsp://h:8554/x"})
	if err != nil {
		t.Fatal(err)
	}
	if c.o.Stream != "d" || c.o.Transport != "tcp" || c.o.Clock != "rtcp" || c.o.QueueSize != DefaultQueueSize {
		t.Errorf("defaults: %+v", c.o)
	}
	reg := prometheus.NewRegistry()
	first, err := New(Options{Device: "d", URL: "rtsp://h/x", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Device: "d", URL: "rtsp://h/x", Registerer: reg}); err == nil {
		t.Error("a second camera with the same device and stream registered its metrics")
	}
	first.Unregister()
	first.Unregister()
	if _, err := New(Options{Device: "d", URL: "rtsp://h/x", Registerer: reg}); err != nil {
		t.Errorf("after Unregister: %v", err)
	}
	if _, err := New(Options{Device: "e", URL: "rtsp://h/x", Registerer: reg}); err != nil {
		t.Errorf("second device on the same registry: %v", err)
	}
}

// TestReadTimeoutReconnects: a server that keeps the connection alive with
// RTCP but sends no RTP is a stalled camera; the session is restarted, for
// that reason. Under a CPU hog the test's own RTCP can stall past the read
// timeout too, and then gortsplib's TCP timeout ends a session first; the
// next session is stalled the same way, so the test waits until a restart
// names the missing RTP.
func TestReadTimeoutReconnects(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	srv := startServer(t, "", cl.desc, "", "")
	cam, err := New(Options{Device: "stall", URL: srv.url("cam"), ReadTimeout: 2 * time.Second,
		Backoff: devices.BackoffPolicy{Min: 50 * time.Millisecond, Max: 100 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	stop, done := runCamera(t, cam, newMemSink())
	srv.waitPlay(t)
	const why = "no RTP packets within read timeout"
	deadline := time.Now().Add(60 * time.Second)
	for st := cam.Status(); st.Reconnects < 1 || !strings.Contains(st.LastError, why); st = cam.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("no restart for %q after a stall: %+v", why, st)
		}
		senderReport(t, srv.str(), cl, 0, t0) // RTCP only
		time.Sleep(100 * time.Millisecond)    // pacing: a report every 100 ms keeps the connection alive
	}
	select {
	case <-done:
		t.Fatal("Run returned")
	default:
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestParameterSetChangeRedescribes: new in-band parameter sets are a new
// descriptor version, declared before the first sample that uses them.
func TestParameterSetChangeRedescribes(t *testing.T) {
	cl := loadClip(t, sample.CodecH264)
	srv := startServer(t, "", cl.desc, "", "")
	sink := newMemSink()
	cam, err := New(Options{Device: "cam5", URL: srv.url("cam")})
	if err != nil {
		t.Fatal(err)
	}
	runCamera(t, cam, sink)
	srv.waitPlay(t)
	newPPS := append(append([]byte(nil), cl.params[1]...), 0x80)
	for i := range 45 {
		if i == 30 {
			au := append([][]byte(nil), cl.aus[30]...)
			for k, n := range au {
				if n[0]&0x1f == 8 {
					au[k] = newPPS
				}
			}
			cl.aus[30] = au
		}
		for _, p := range cl.packets(t, i, frameTS(i)) {
			srv.str().WritePacketRTP(cl.medi, p) //nolint:errcheck
		}
		time.Sleep(2 * time.Millisecond) // pacing, like a camera
	}
	waitFor(t, 10*time.Second, "45 samples", func() bool { return sink.count() >= 45 })
	sink.mu.Lock()
	descs, at := append([]sample.Descriptor(nil), sink.descs...), append([]int(nil), sink.descAt...)
	sink.mu.Unlock()
	if len(descs) != 2 || at[0] != 0 || at[1] != 30 {
		t.Fatalf("%d descriptors before samples %v, want 2 before samples 0 and 30", len(descs), at)
	}
	if !bytes.Equal(descs[0].Params[1], cl.params[1]) || !bytes.Equal(descs[1].Params[1], newPPS) ||
		!bytes.Equal(descs[1].Params[0], cl.params[0]) {
		t.Errorf("parameter sets not versioned: %x / %x", descs[0].Params, descs[1].Params)
	}
}
