package mqtt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/sample"
)

type telem struct {
	Header struct {
		Stamp int64 `json:"stamp"`
		Seq   int   `json:"seq"`
	} `json:"header"`
	Topic    string    `json:"topic"`
	Position []float64 `json:"position"`
}

func telemLine(topic string, seq int, stamp int64) string {
	var m telem
	m.Header.Stamp, m.Header.Seq, m.Topic = stamp, seq, topic
	m.Position = []float64{0.1, 0.2, 0.3, 1.5, -2.25, 3.125}
	b, _ := json.Marshal(m)
	return string(b)
}

// seqsByTopic checks per-topic order and returns the seqs seen per topic,
// counting duplicates.
func seqsByTopic(t *testing.T, samples []sample.Sample) (map[string][]int, int) {
	t.Helper()
	seen := map[string]map[int]bool{}
	byTopic := map[string][]int{}
	dups := 0
	for _, s := range samples {
		var m telem
		if err := json.Unmarshal(s.Payload, &m); err != nil {
			t.Fatalf("stored payload is not the JSON sent: %v", err)
		}
		if s.SrcT != m.Header.Stamp {
			t.Fatalf("SrcT %d, payload stamp %d", s.SrcT, m.Header.Stamp)
		}
		if seen[m.Topic] == nil {
			seen[m.Topic] = map[int]bool{}
		}
		if seen[m.Topic][m.Header.Seq] {
			dups++
			continue
		}
		seen[m.Topic][m.Header.Seq] = true
		byTopic[m.Topic] = append(byTopic[m.Topic], m.Header.Seq)
	}
	return byTopic, dups
}

// TestTelemetry10k: 10,000 QoS 1 messages across 20 topics, published by
// mosquitto_pub, are all stored, in per-topic order, with time from the
// payload field.
func TestTelemetry10k(t *testing.T) {
	m := startMosquitto(t, mosqConfig{inflight: 2000})
	b, _ := newTestClient(t, m.url(), "episoded-10k", nil, DeviceOptions{Device: "robot", Topics: []string{"factory/+/state"},
		Stream: "cell1/{2}/state", TimeField: "header.stamp", TimeUnit: "ns"})
	sink := startSink(t, newMemSink(100*time.Millisecond))
	runConnected(t, b, sink)

	const topics, per = 20, 500
	base := time.Now().UnixNano()
	var wg sync.WaitGroup
	errs := make(chan error, topics)
	for i := range topics {
		topic := fmt.Sprintf("factory/robot%02d/state", i)
		lines := make([]string, per)
		for j := range per {
			lines[j] = telemLine(topic, j, base+int64(j)*1e6+int64(i))
		}
		wg.Go(func() { errs <- m.pubLines(topic, lines) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "10,000 samples", func() bool { return sink.count() >= topics*per })
	waitFor(t, 5*time.Second, "all acks", func() bool { return b.Stats().AcksPending == 0 })

	samples, descs := sink.snapshot()
	byTopic, dups := seqsByTopic(t, samples)
	if dups != 0 || len(samples) != topics*per {
		t.Fatalf("%d samples with %d duplicates, want exactly %d", len(samples), dups, topics*per)
	}
	for topic, seqs := range byTopic {
		if len(seqs) != per {
			t.Fatalf("%s: %d messages, want %d", topic, len(seqs), per)
		}
		for j, s := range seqs {
			if s != j {
				t.Fatalf("%s: message %d has seq %d: order not kept", topic, j, s)
			}
		}
	}
	for _, s := range samples {
		want := "cell1/" + strings.Split(string(s.Payload[strings.Index(string(s.Payload), `"topic":"`)+9:]), "/")[1] + "/state"
		if s.Stream != want {
			t.Fatalf("stream %q, want %q", s.Stream, want)
		}
		d, ok := descs[s.Stream]
		if !ok || d.Clock != sample.ClockDevice || d.Codec != sample.CodecJSON || d.Kind != sample.KindTelemetry || d.Device != "robot" {
			t.Fatalf("descriptor for %s: %+v", s.Stream, d)
		}
	}
	if len(descs) != topics {
		t.Fatalf("%d descriptors, want %d", len(descs), topics)
	}
	st := b.Stats()
	if st.Devices["robot"].Messages != topics*per || st.Devices["robot"].DecodeErrors != 0 || st.Overflow != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestBrokerRestart: mosquitto (persistence on) is stopped and started
// again; 500 messages are published while the daemon cannot reach it (a
// gate between them is shut, so the daemon keeps failing and backing off);
// once the gate opens, all arrive, and so do messages published before the
// restart. The gate, not a long backoff, keeps the daemon away, so nothing
// here races a timer (the backoff itself is tested in devices, on synctest).
func TestBrokerRestart(t *testing.T) {
	m := startMosquitto(t, mosqConfig{persistence: true, inflight: 1000})
	g := startGate(t, fmt.Sprintf("127.0.0.1:%d", m.port))
	b, lb := newTestClient(t, g.url(), "episoded-restart", func(o *ClientOptions) {
		o.Backoff = devices.BackoffPolicy{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond}
	}, DeviceOptions{Device: "robot", Topics: []string{"r/+/state"}, TimeField: "header.stamp"})
	sink := startSink(t, newMemSink(100*time.Millisecond))
	runConnected(t, b, sink)

	base := time.Now().UnixNano()
	before := make([]string, 200)
	for j := range before {
		before[j] = telemLine("r/a/state", j, base+int64(j))
	}
	if err := m.pubLines("r/a/state", before); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "200 samples before the restart", func() bool { return sink.count() >= 200 })

	g.shut()
	m.stop()
	waitFor(t, 10*time.Second, "the daemon to notice", func() bool { return b.Status().State == devices.Backoff })
	m.start()
	after := make([]string, 500)
	for j := range after {
		after[j] = telemLine("r/b/state", j, base+1e9+int64(j))
	}
	if err := m.pubLines("r/b/state", after); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Connected || sink.count() != 200 {
		t.Fatalf("connected %v with %d samples while the gate was shut", st.Connected, sink.count())
	}
	g.open()
	waitFor(t, 30*time.Second, "700 distinct samples", func() bool {
		s, _ := sink.snapshot()
		by, _ := seqsByTopic(t, s)
		return len(by["r/a/state"]) == 200 && len(by["r/b/state"]) == 500
	})
	samples, _ := sink.snapshot()
	by, dups := seqsByTopic(t, samples)
	for topic, seqs := range by {
		for j, s := range seqs {
			if s != j {
				t.Fatalf("%s: position %d has seq %d", topic, j, s)
			}
		}
	}
	st := b.Stats()
	t.Logf("restart: %d samples, %d duplicates, %d redelivered, %d reconnects", len(samples), dups, st.Redelivered, st.Reconnects)
	if st.Reconnects < 1 {
		t.Fatalf("reconnects = %d", st.Reconnects)
	}
	if !strings.Contains(lb.String(), "session_present=true") {
		t.Fatalf("the broker did not keep the persistent session:\n%s", lb.String())
	}
}

// TestLidarFrames: 200 KB frames at 10 Hz are stored whole, with the layout
// in the descriptor and the capture time from the header.
func TestLidarFrames(t *testing.T) {
	m := startMosquitto(t, mosqConfig{inflight: 100})
	lo := lidarDev(8)
	lo.Stream = "cell1/lidar"
	b, _ := newTestClient(t, m.url(), "episoded-lidar", nil, lo)
	sink := startSink(t, newMemSink(100*time.Millisecond))
	runConnected(t, b, sink)

	const frames = 20
	const points = (200_000 - 16) / 16
	sums := map[[32]byte]int64{}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := range frames {
		<-tick.C
		ts := time.Now().UnixNano()
		f := lidarFrame(points, ts)
		for j := 16; j < len(f); j += 997 {
			f[j] = byte(i + j)
		}
		sums[sha256.Sum256(f)] = ts
		if err := m.pubBytes("cell1/lidar", f); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "all frames", func() bool { return sink.count() >= frames })
	samples, descs := sink.snapshot()
	if len(samples) != frames {
		t.Fatalf("%d frames stored, want %d", len(samples), frames)
	}
	for _, s := range samples {
		ts, ok := sums[sha256.Sum256(s.Payload)]
		if !ok || len(s.Payload) != 16+points*16 {
			t.Fatalf("frame of %d bytes is not one that was sent", len(s.Payload))
		}
		if s.SrcT != ts || s.Flags != 0 || s.Stream != "cell1/lidar" {
			t.Fatalf("frame SrcT %d want %d, flags %v, stream %s", s.SrcT, ts, s.Flags, s.Stream)
		}
	}
	d := descs["cell1/lidar"]
	if d.Kind != sample.KindPointCloud || d.Codec != sample.CodecRaw || d.Layout == nil || !d.Layout.Equal(*lo.Layout) || d.Clock != sample.ClockDevice {
		t.Fatalf("descriptor %+v", d)
	}
}

// TestBadPayloads sends every kind of bad input through a real broker: it
// is kept flagged DecodeError or rejected (oversize) as specified, nothing
// panics, and rejected messages are acknowledged (not redelivered to the
// next session).
func TestBadPayloads(t *testing.T) {
	m := startMosquitto(t, mosqConfig{persistence: true, inflight: 100})
	const clientID = "episoded-bad"
	mk := func() (*Client, *logBuf) {
		return newTestClient(t, m.url(), clientID, nil,
			DeviceOptions{Device: "json", Topics: []string{"bad/json"}, TimeField: "header.stamp", MaxPayload: 4096},
			DeviceOptions{Device: "cbor", Topics: []string{"bad/cbor"}, Format: FormatCBOR, TimeField: "t", TimeUnit: "ms"},
			lidarDev(8))
	}
	b, lb := mk()
	sink := startSink(t, newMemSink(50*time.Millisecond))
	stop := runConnected(t, b, sink)

	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 300)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	good := []byte(`{"header":{"stamp":1732650000123456789}}`)
	jsonBad := [][]byte{
		[]byte(`{"header":{"stamp":17326`), // truncated
		[]byte(`{"header":{"stamp":"soon"}}`),
		[]byte(`{"header":{"stamp":[1]}}`),
		[]byte(`{"header":{}}`), // missing time
		random,
	}
	oversize := append(append([]byte(`{"header":{"stamp":1732650000123456789},"pad":"`), bytes.Repeat([]byte("x"), 5000)...), '"', '}')
	cborBad := [][]byte{
		append(bytes.Repeat([]byte{0x81}, 200), 0x01), // deep nesting
		cborHead(4, 1<<62),                            // huge declared array
		cborHead(5, 1<<40),                            // huge declared map
		append(cborHead(4, 100000), bytes.Repeat([]byte{0}, 100000)...), // array over the limit
		{0xa1, 0x61, 't', 0x40}, // time field of the wrong type
	}
	frame := lidarFrame(10, 1732650000000000000)
	ragged := frame[:len(frame)-7]

	for _, p := range append([][]byte{good}, append(jsonBad, oversize)...) {
		if err := m.pubBytes("bad/json", p); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range cborBad {
		if err := m.pubBytes("bad/cbor", p); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.pubBytes("cell1/lidar", ragged); err != nil {
		t.Fatal(err)
	}
	kept := 1 + len(jsonBad) + len(cborBad) + 1
	waitFor(t, 10*time.Second, "all kept samples", func() bool { return sink.count() >= kept })
	waitFor(t, 5*time.Second, "oversize counted", func() bool { return b.Stats().Devices["json"].Oversize == 1 })
	waitFor(t, 5*time.Second, "all acks", func() bool { return b.Stats().AcksPending == 0 })
	samples, _ := sink.snapshot()
	if len(samples) != kept {
		t.Fatalf("%d samples kept, want %d", len(samples), kept)
	}
	bad := 0
	for _, s := range samples {
		if bytes.Equal(s.Payload, good) {
			if s.Flags != 0 || s.SrcT != 1732650000123456789 {
				t.Fatalf("good sample %+v", s)
			}
			continue
		}
		if bytes.Equal(s.Payload, oversize) {
			t.Fatal("oversize payload was stored")
		}
		if !s.Flags.Has(sample.DecodeError) || s.SrcT != 0 {
			t.Fatalf("bad payload %q stored with flags %v SrcT %d", s.Payload[:min(len(s.Payload), 20)], s.Flags, s.SrcT)
		}
		bad++
	}
	st := b.Stats()
	if bad != kept-1 || st.Devices["json"].DecodeErrors != uint64(len(jsonBad)) ||
		st.Devices["cbor"].DecodeErrors != uint64(len(cborBad)) || st.Devices["lidar"].DecodeErrors != 1 {
		t.Fatalf("%d bad samples; stats %+v", bad, st.Devices)
	}
	if !strings.Contains(lb.String(), "over max_payload rejected") || !strings.Contains(lb.String(), "kept raw with decode_error") {
		t.Fatalf("missing log lines:\n%s", lb.String())
	}
	stop()

	// A new daemon with the same client id gets nothing redelivered: every
	// message, kept or rejected, was acknowledged.
	b2, _ := mk()
	sink2 := startSink(t, newMemSink(50*time.Millisecond))
	runConnected(t, b2, sink2)
	// A marker published now reaches the sink after anything the broker
	// resends: it resends a session's unacknowledged messages first, and
	// one router and one worker keep the order. So once the marker is
	// stored, nothing else may be.
	marker := []byte(`{"header":{"stamp":1732650000999999999},"marker":1}`)
	if err := m.pubBytes("bad/json", marker); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the marker", func() bool { return sink2.count() >= 1 })
	if got, _ := sink2.snapshot(); len(got) != 1 || !bytes.Equal(got[0].Payload, marker) || b2.Stats().Redelivered != 0 {
		t.Fatalf("%d samples in the next session (want only the marker), %d redelivered", len(got), b2.Stats().Redelivered)
	}
}

// TestTrigger: trigger messages reach the callback on our goroutine with
// their payload, and are acknowledged after it returns.
func TestTrigger(t *testing.T) {
	m := startMosquitto(t, mosqConfig{persistence: true, inflight: 20})
	b, _ := newTestClient(t, m.url(), "episoded-trigger", nil)
	var mu sync.Mutex
	var got []string
	if err := b.AddTrigger("cell1/trigger", func(p []byte, recvT int64) {
		if recvT <= 0 {
			t.Errorf("recvT %d", recvT)
		}
		mu.Lock()
		got = append(got, string(p))
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddDevice(DeviceOptions{Device: "robot", Topics: []string{"cell1/robot"}}); err != nil {
		t.Fatal(err)
	}
	sink := startSink(t, newMemSink(50*time.Millisecond))
	stop := runConnected(t, b, sink)
	if err := m.pubLines("cell1/trigger", []string{`{"action":"start","task":"pick"}`, `{"action":"stop"}`}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "two triggers", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 })
	if got[0] != `{"action":"start","task":"pick"}` || got[1] != `{"action":"stop"}` {
		t.Fatalf("triggers %q", got)
	}
	if sink.count() != 0 {
		t.Fatal("trigger message stored as a sample")
	}
	waitFor(t, 5*time.Second, "acks", func() bool { return b.Stats().AcksPending == 0 })
	stop()
	b2, _ := newTestClient(t, m.url(), "episoded-trigger", nil)
	var got2 []string
	if err := b2.AddTrigger("cell1/trigger", func(p []byte, _ int64) {
		mu.Lock()
		got2 = append(got2, string(p))
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	runConnected(t, b2, sink)
	// The marker arrives after anything the broker resends (see
	// TestBadPayloads): once it is here, nothing else may be.
	if err := m.pubLines("cell1/trigger", []string{`{"action":"marker"}`}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the marker", func() bool { mu.Lock(); defer mu.Unlock(); return len(got2) >= 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(got2) != 1 || got2[0] != `{"action":"marker"}` {
		t.Fatalf("trigger messages redelivered (they were not acknowledged): %q", got2)
	}
}

// TestQueueOverflowRedelivers: with an unlimited broker window and a tiny
// queue, messages that find the queue full are not acknowledged; the
// broker redelivers them after the reconnect, and nothing is lost.
//
// The overflow is forced, not hoped for: the sink's first Write blocks
// until the client has counted an overflow (the consumer is held, so the
// 16-slot queue fills from the 2,000 messages the broker sends at once).
// On a loaded machine the publisher can otherwise be slower than the
// consumer, and the queue never fills.
func TestQueueOverflowRedelivers(t *testing.T) {
	m := startMosquitto(t, mosqConfig{inflight: 0})
	b, _ := newTestClient(t, m.url(), "episoded-overflow", func(o *ClientOptions) {
		o.QueueSize = 16
		o.Backoff = devices.BackoffPolicy{Min: 100 * time.Millisecond, Max: 200 * time.Millisecond}
	}, DeviceOptions{Device: "robot", Topics: []string{"r/#"}, TimeField: "header.stamp"})
	ms := newMemSink(20 * time.Millisecond)
	var overflowed atomic.Bool
	ms.gate = func() {
		// Runs on the client's worker goroutine, so it cannot fail the
		// test: after a bound it lets the consumer go, and the overflow
		// check below reports what did not happen.
		for deadline := time.Now().Add(30 * time.Second); !overflowed.Load() && time.Now().Before(deadline); {
			if b.Stats().Overflow > 0 {
				overflowed.Store(true)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	sink := startSink(t, ms)
	runConnected(t, b, sink)
	const n = 2000
	lines := make([]string, n)
	base := time.Now().UnixNano()
	for j := range lines {
		lines[j] = telemLine("r/x", j, base+int64(j))
	}
	if err := m.pubLines("r/x", lines); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "every message", func() bool {
		s, _ := sink.snapshot()
		by, _ := seqsByTopic(t, s)
		return len(by["r/x"]) == n
	})
	samples, _ := sink.snapshot()
	by, dups := seqsByTopic(t, samples)
	for j, s := range by["r/x"] {
		if s != j {
			t.Fatalf("position %d has seq %d: order lost", j, s)
		}
	}
	st := b.Stats()
	t.Logf("overflow %d, refused %d, reconnects %d, duplicates %d", st.Overflow, st.Refused, st.Reconnects, dups)
	if st.Overflow == 0 || st.Reconnects == 0 {
		t.Fatalf("the queue never overflowed (stats %+v): the test did not test the full-rule", st)
	}
	// A planned reconnect drains and waits for the broker to have applied
	// every PUBACK (the unsubscribe barrier), so it stores nothing twice.
	if dups != 0 {
		t.Fatalf("%d duplicates after planned reconnects", dups)
	}
}

// TestWriteFailureRedelivers: samples the sink refuses, or reports not
// durable, are not acknowledged and come back after a reconnect.
func TestWriteFailureRedelivers(t *testing.T) {
	m := startMosquitto(t, mosqConfig{inflight: 100})
	b, _ := newTestClient(t, m.url(), "episoded-wfail", func(o *ClientOptions) {
		o.Backoff = devices.BackoffPolicy{Min: 100 * time.Millisecond, Max: 200 * time.Millisecond}
	}, DeviceOptions{Device: "robot", Topics: []string{"r/#"}, TimeField: "header.stamp"})
	sink := newMemSink(50 * time.Millisecond)
	sink.mu.failWrites = 3
	sink.mu.failDone = 2
	runConnected(t, b, startSink(t, sink))
	lines := make([]string, 300)
	for j := range lines {
		lines[j] = telemLine("r/y", j, 1732650000000000000+int64(j))
	}
	if err := m.pubLines("r/y", lines); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "every message", func() bool {
		s, _ := sink.snapshot()
		by, _ := seqsByTopic(t, s)
		return len(by["r/y"]) == len(lines)
	})
	if st := b.Stats(); st.Devices["robot"].WriteErrors == 0 || st.Reconnects == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestSecretsStayOut: a wrong password is rejected by the broker, and the
// password reaches neither the log, nor the status, nor an error.
func TestSecretsStayOut(t *testing.T) {
	needBin(t, "mosquitto_passwd")
	dir := t.TempDir()
	pwfile := dir + "/passwd"
	if out, err := exec.Command("mosquitto_passwd", "-b", "-c", pwfile, "robot", "right-horse-battery").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v %s", err, out)
	}
	m := startMosquitto(t, mosqConfig{inflight: 20, extra: "password_file " + pwfile + "\n"})
	// allow_anonymous true comes first in the file; an explicit false wins.
	const secret = "wrong-staple-secret"
	reg := prometheus.NewRegistry()
	b, lb := newTestClient(t, m.url(), "episoded-secret", func(o *ClientOptions) {
		o.Username, o.Password, o.Registerer = "robot", secret, reg
	}, DeviceOptions{Device: "robot", Topics: []string{"r"}})
	runClient(t, b, newMemSink(time.Second))
	waitFor(t, 10*time.Second, "a failed attempt", func() bool { return b.Status().LastError != "" })
	st := b.Status()
	if st.State == devices.Streaming || !strings.Contains(st.LastError, "connect") {
		t.Fatalf("status %+v", st)
	}
	if strings.Contains(st.LastError, secret) || strings.Contains(lb.String(), secret) {
		t.Fatalf("password leaked: status %q\nlog:\n%s", st.LastError, lb.String())
	}
	if v := metricValue(t, reg, "episoded_mqtt_connected"); v != 0 {
		t.Fatalf("connected = %v", v)
	}

	// The right password connects.
	b2, _ := newTestClient(t, m.url(), "episoded-secret2", func(o *ClientOptions) {
		o.ID, o.Username, o.Password, o.Registerer = "good", "robot", "right-horse-battery", reg
	}, DeviceOptions{Device: "robot", Topics: []string{"r"}})
	runClient(t, b2, newMemSink(time.Second))
	waitFor(t, 10*time.Second, "authenticated session", func() bool { return b2.Status().State == devices.Streaming })
}

// metricValue gathers reg and returns the value of the first metric named
// name.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// TestMetricsAndStatus: metrics are registered per broker and move.
func TestMetricsAndStatus(t *testing.T) {
	m := startMosquitto(t, mosqConfig{inflight: 20})
	reg := prometheus.NewRegistry()
	b, _ := newTestClient(t, m.url(), "episoded-metrics", func(o *ClientOptions) { o.Registerer = reg },
		DeviceOptions{Device: "robot", Topics: []string{"r/#"}, TimeField: "t"})
	if _, err := NewClient(ClientOptions{ID: "test", URL: m.url(), Registerer: reg}); err == nil {
		t.Fatal("a second broker with the same id registered its metrics")
	}
	sink := startSink(t, newMemSink(20*time.Millisecond))
	runConnected(t, b, sink)
	if err := m.pubLines("r/a", []string{`{"t":1732650000000000000}`, `{"t":`, `{"t":1732650000000000001}`}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "3 samples", func() bool { return sink.count() == 3 })
	waitFor(t, 5*time.Second, "acks", func() bool { return b.Stats().AcksPending == 0 })
	for name, want := range map[string]float64{
		"episoded_mqtt_messages_total":      3,
		"episoded_mqtt_decode_errors_total": 1,
		"episoded_mqtt_connected":           1,
		"episoded_mqtt_acks_pending":        0,
	} {
		if v := metricValue(t, reg, name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 19 { // 16 + rejected_total, device_streams, pending_bytes
		t.Fatalf("%d metric families, err %v", len(mfs), err)
	}
	st := b.Status()
	if st.Device != "test" || st.Protocol != "mqtt" || st.State != devices.Streaming {
		t.Fatalf("status %+v", st)
	}
}

func TestClientOptions(t *testing.T) {
	for _, tc := range []struct {
		o    ClientOptions
		want string
	}{
		{ClientOptions{}, "id: is required"},
		{ClientOptions{ID: "b", URL: "http://x:1"}, `scheme "http"`},
		{ClientOptions{ID: "b", URL: "tcp://user:hunter22@"}, "redacted"},
		{ClientOptions{ID: "b", URL: "tcp://h:1", KeepAlive: time.Millisecond}, "keepalive"},
		{ClientOptions{ID: "b", URL: "tcp://h:1", TLS: TLSOptions{CertFile: "c"}}, "go together"},
		{ClientOptions{ID: "b", URL: "ssl://h:1", TLS: TLSOptions{CAFile: "/nonexistent/ca.pem"}}, "read ca file"},
	} {
		_, err := NewClient(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewClient(%+v) = %v, want error containing %q", tc.o, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter22") {
			t.Errorf("password in error: %v", err)
		}
	}
	b, err := NewClient(ClientOptions{ID: "gw", URL: "tcp://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if b.o.ClientID != "episoded-gw" || b.o.KeepAlive != DefaultKeepAlive || b.o.QueueSize != DefaultQueueSize {
		t.Fatalf("defaults %+v", b.o)
	}
	if err := b.AddDevice(DeviceOptions{Device: "d", Topics: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddDevice(DeviceOptions{Device: "d", Topics: []string{"b"}}); err == nil {
		t.Fatal("duplicate device accepted")
	}
	if err := b.AddTrigger("a/#/b", func([]byte, int64) {}); err == nil {
		t.Fatal("bad trigger topic accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Run(ctx, newMemSink(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := b.AddDevice(DeviceOptions{Device: "e", Topics: []string{"b"}}); !errors.Is(err, ErrRunning) {
		t.Fatalf("AddDevice after Run: %v", err)
	}
}

// TestFanOut: a topic wanted by a device and a trigger reaches both, and the
// message is acknowledged once, after both are done (nothing is redelivered
// to the next session).
func TestFanOut(t *testing.T) {
	m := startMosquitto(t, mosqConfig{persistence: true, inflight: 20})
	mk := func() (*Client, *memSink, *atomic.Int64) {
		b, _ := newTestClient(t, m.url(), "episoded-fanout", nil,
			DeviceOptions{Device: "events", Topics: []string{"cell1/events"}, Stream: "cell1/events"})
		var trig atomic.Int64
		if err := b.AddTrigger("cell1/events", func([]byte, int64) { trig.Add(1) }); err != nil {
			t.Fatal(err)
		}
		return b, startSink(t, newMemSink(50*time.Millisecond)), &trig
	}
	b, sink, trig := mk()
	stop := runConnected(t, b, sink)
	if err := m.pubLines("cell1/events", []string{`{"action":"start"}`, `{"action":"stop"}`}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "both consumers", func() bool { return sink.count() == 2 && trig.Load() == 2 })
	waitFor(t, 5*time.Second, "acks", func() bool { return b.Stats().AcksPending == 0 })
	stop()

	b2, sink2, trig2 := mk()
	runConnected(t, b2, sink2)
	// The marker arrives after anything the broker resends (see
	// TestBadPayloads): once both consumers have it, nothing else may be.
	if err := m.pubLines("cell1/events", []string{`{"action":"marker"}`}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the marker", func() bool { return sink2.count() >= 1 && trig2.Load() >= 1 })
	if got, _ := sink2.snapshot(); len(got) != 1 || string(got[0].Payload) != `{"action":"marker"}` || trig2.Load() != 1 {
		t.Fatalf("redelivered: %d samples, %d triggers (want only the marker)", len(got), trig2.Load())
	}
}
