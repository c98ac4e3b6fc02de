package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/episoded/episoded/internal/testwait"
	"github.com/episoded/episoded/sample"
)

const mosquittoBin = "/usr/sbin/mosquitto"

// needBin skips under -short and fails otherwise when a binary is missing
// (CI installs mosquitto and mosquitto-clients).
func needBin(t testing.TB, bins ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real mosquitto broker; skipped under -short")
	}
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (apt-get install -y --no-install-recommends mosquitto mosquitto-clients): %v", b, err)
		}
	}
}

// mosquitto is a real broker on a free loopback port, started per test.
type mosquitto struct {
	t    testing.TB
	port int
	dir  string
	conf string
	mu   sync.Mutex
	cmd  *exec.Cmd
	log  *os.File
}

type mosqConfig struct {
	persistence bool
	inflight    int    // max_inflight_messages; 0 = unlimited
	extra       string // more config lines
}

func startMosquitto(t testing.TB, c mosqConfig) *mosquitto {
	t.Helper()
	needBin(t, mosquittoBin, "mosquitto_pub")
	m := &mosquitto{t: t, port: freePort(t), dir: t.TempDir()}
	m.conf = filepath.Join(m.dir, "mosquitto.conf")
	var b strings.Builder
	fmt.Fprintf(&b, "listener %d 127.0.0.1\nallow_anonymous true\nuser root\n", m.port)
	if c.persistence {
		fmt.Fprintf(&b, "persistence true\npersistence_location %s/\nautosave_interval 1\n", m.dir)
	} else {
		b.WriteString("persistence false\n")
	}
	fmt.Fprintf(&b, "max_queued_messages 0\nmax_inflight_messages %d\n", c.inflight)
	b.WriteString(c.extra)
	if err := os.WriteFile(m.conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	m.start()
	t.Cleanup(m.stop)
	return m
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

func (m *mosquitto) url() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.port) }

func (m *mosquitto) start() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	logf, err := os.OpenFile(filepath.Join(m.dir, "mosquitto.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		m.t.Fatal(err)
	}
	cmd := exec.Command(mosquittoBin, "-c", m.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		m.t.Fatalf("start mosquitto: %v", err)
	}
	m.cmd, m.log = cmd, logf
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", m.port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("mosquitto did not listen on %d: %v\n%s", m.port, err, m.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop terminates mosquitto with SIGTERM (it saves its persistence file)
// and waits for it.
func (m *mosquitto) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-done
	}
	m.log.Close()
	m.cmd = nil
}

func (m *mosquitto) logTail() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "mosquitto.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// pubLines publishes each line as one QoS 1 message with mosquitto_pub -l,
// an independent publisher. mosquitto_pub drops messages still queued when
// stdin reaches EOF, so stdin stays open until its debug output (-d) shows
// a PUBACK for every line.
func (m *mosquitto) pubLines(topic string, lines []string) error {
	// stdbuf: line-buffer the debug output, which goes to a pipe.
	cmd := exec.Command("stdbuf", "-oL", "mosquitto_pub", "-d", "-h", "127.0.0.1", "-p", fmt.Sprint(m.port), "-q", "1", "-t", topic, "-l")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("mosquitto_pub: %w", err)
	}
	go func() {
		_, _ = io.WriteString(stdin, strings.Join(lines, "\n")+"\n")
	}()
	acked := waitPubacks(out, len(lines), 60*time.Second)
	stdin.Close()
	go func() { _, _ = io.Copy(io.Discard, out) }()
	werr := cmd.Wait()
	if acked < len(lines) {
		return fmt.Errorf("mosquitto_pub -t %s: %d of %d messages acknowledged (exit: %v)", topic, acked, len(lines), werr)
	}
	return nil
}

// waitPubacks counts "received PUBACK" lines of mosquitto_pub -d output
// until want are seen, the output ends, or timeout passes.
func waitPubacks(out io.Reader, want int, timeout time.Duration) int {
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "received PUBACK") && int(n.Add(1)) >= want {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
	return int(n.Load())
}

// pubFile publishes one message with the bytes of payload (mosquitto_pub -f).
func (m *mosquitto) pubBytes(topic string, payload []byte) error {
	f := filepath.Join(m.dir, "payload.bin")
	if err := os.WriteFile(f, payload, 0o644); err != nil {
		return err
	}
	out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(m.port), "-q", "1", "-t", topic, "-f", f).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mosquitto_pub -t %s -f: %v: %s", topic, err, out)
	}
	return nil
}

// memSink stands in for storage in tests that are about the MQTT side: it
// keeps samples in memory and reports them durable in batches every
// interval from its own goroutine, like storage's commit loop. (A fake
// only where the real store would add nothing; the crash test and the
// benchmark use the real storage.Store.)
type memSink struct {
	interval time.Duration
	// gate, if set, is called at the start of every Write (outside the
	// lock) and may block: a test holds the consumer back with it until
	// a condition it needs (a full queue) holds.
	gate func()
	mu   struct {
		sync.Mutex
		samples []sample.Sample
		descs   map[string]sample.Descriptor
		pending []func(error)
		// failWrites makes the next n Write calls return an error, and
		// failDone the next n batches' done callbacks report failure.
		failWrites, failDone int
		durable              int
	}
}

func newMemSink(interval time.Duration) *memSink {
	s := &memSink{interval: interval}
	s.mu.descs = map[string]sample.Descriptor{}
	return s
}

func (s *memSink) Describe(d sample.Descriptor) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.descs[d.Stream] = d
	return nil
}

func (s *memSink) Write(x sample.Sample, done func(error)) error {
	if s.gate != nil {
		s.gate()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.failWrites > 0 {
		s.mu.failWrites--
		return fmt.Errorf("memsink: refused")
	}
	s.mu.samples = append(s.mu.samples, x)
	if done != nil {
		s.mu.pending = append(s.mu.pending, done)
	}
	return nil
}

// run reports pending writes durable every interval until ctx ends.
func (s *memSink) run(ctx context.Context) {
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		batch := s.mu.pending
		s.mu.pending = nil
		var err error
		if s.mu.failDone > 0 && len(batch) > 0 {
			s.mu.failDone--
			err = fmt.Errorf("memsink: batch failed")
			// A failed batch is not durable: drop its samples.
			s.mu.samples = s.mu.samples[:len(s.mu.samples)-len(batch)]
		} else {
			s.mu.durable += len(batch)
		}
		s.mu.Unlock()
		for _, d := range batch {
			d(err)
		}
	}
}

func (s *memSink) snapshot() ([]sample.Sample, map[string]sample.Descriptor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	descs := map[string]sample.Descriptor{}
	for k, v := range s.mu.descs {
		descs[k] = v
	}
	return append([]sample.Sample(nil), s.mu.samples...), descs
}

func (s *memSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.samples)
}

// waitFor polls cond until it holds (testwait.For).
var waitFor = testwait.For

// runClient runs b against sink until the test ends; it returns a stop
// function that cancels and waits.
func runClient(t testing.TB, b *Client, sink interface {
	Describe(sample.Descriptor) error
	Write(sample.Sample, func(error)) error
}) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- b.Run(ctx, sink) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// testLogger logs to a buffer that the test can search.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestLogger() (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// testPublisher is a minimal QoS 1 publisher written with paho's packet
// codec, for brokers where mosquitto_pub cannot be pointed (in-process).
type testPublisher struct {
	conn net.Conn
	br   *bufio.Reader
	id   uint16
}

func newTestPublisher(addr string) (*testPublisher, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	p := &testPublisher{conn: conn, br: bufio.NewReader(conn)}
	cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion, cp.CleanSession, cp.Keepalive = "MQTT", 4, true, 30
	cp.ClientIdentifier = fmt.Sprintf("test-pub-%d", time.Now().UnixNano())
	if err := cp.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	pk, err := packets.ReadPacket(p.br)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if ca, ok := pk.(*packets.ConnackPacket); !ok || ca.ReturnCode != 0 {
		conn.Close()
		return nil, fmt.Errorf("connect refused: %v", pk)
	}
	return p, nil
}

// publish sends one QoS 1 message and waits for its PUBACK.
func (p *testPublisher) publish(topic string, payload []byte) error {
	p.id = p.id%65535 + 1
	pp := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pp.Qos, pp.TopicName, pp.MessageID, pp.Payload = 1, topic, p.id, payload
	if err := pp.Write(p.conn); err != nil {
		return err
	}
	for {
		pk, err := packets.ReadPacket(p.br)
		if err != nil {
			return err
		}
		if pa, ok := pk.(*packets.PubackPacket); ok && pa.MessageID == p.id {
			return nil
		}
	}
}

func (p *testPublisher) close() {
	_ = packets.NewControlPacket(packets.Disconnect).Write(p.conn)
	p.conn.Close()
}

// gate is a TCP forwarder on loopback between the daemon and a broker.
// While it is shut, it cuts every connection and closes new ones at once,
// so a test decides exactly when the daemon can reach the broker again
// instead of racing its backoff timer.
type gate struct {
	ln     net.Listener
	target string
	mu     struct {
		sync.Mutex
		shut  bool
		conns []net.Conn
	}
}

func startGate(t testing.TB, target string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); g.shut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go g.serve(c)
		}
	}()
	return g
}

func (g *gate) url() string { return "tcp://" + g.ln.Addr().String() }

func (g *gate) serve(c net.Conn) {
	g.mu.Lock()
	if g.mu.shut {
		g.mu.Unlock()
		c.Close()
		return
	}
	g.mu.Unlock()
	up, err := net.Dial("tcp", g.target)
	if err != nil {
		c.Close()
		return
	}
	g.mu.Lock()
	if g.mu.shut {
		g.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	g.mu.conns = append(g.mu.conns, c, up)
	g.mu.Unlock()
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
	c.Close()
}

// shut cuts every connection through the gate and refuses new ones.
func (g *gate) shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.mu.shut = true
	for _, c := range g.mu.conns {
		c.Close()
	}
	g.mu.conns = nil
}

// open lets connections through again.
func (g *gate) open() {
	g.mu.Lock()
	g.mu.shut = false
	g.mu.Unlock()
}
