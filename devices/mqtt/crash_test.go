package mqtt

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// storeSink is the minimal pipeline between a Client and a real
// storage.Store, for the crash test and the benchmark: it assigns Seq per
// stream, continuing after the highest stored one, and T = SrcT, or RecvT
// for samples without device time, then appends. The real pipeline (ingest)
// does clock alignment here.
type storeSink struct {
	st      *storage.Store
	mu      sync.Mutex
	seq     map[string]uint64
	durable atomic.Uint64
	// onDurableSample, if set, is called with each sample once durable,
	// from the store's commit goroutine.
	onDurableSample func(x sample.Sample)
}

func newStoreSink(st *storage.Store) *storeSink {
	return &storeSink{st: st, seq: map[string]uint64{}}
}

func (s *storeSink) Describe(d sample.Descriptor) error {
	_, err := s.st.PutDescriptor(d)
	return err
}

// nextSeq returns the seq after the highest stored in stream. LastSample
// gives the highest (T, Seq), and a redelivered duplicate can carry an
// earlier T with a later Seq, so scan (test-sized data only).
func (s *storeSink) nextSeq(stream string) (uint64, error) {
	var hi uint64
	for x, err := range s.st.Range(stream, math.MinInt64, math.MaxInt64) {
		if err != nil {
			return 0, err
		}
		hi = max(hi, x.Seq)
	}
	return hi + 1, nil
}

func (s *storeSink) Write(x sample.Sample, done func(error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next, ok := s.seq[x.Stream]
	if !ok {
		n, err := s.nextSeq(x.Stream)
		if err != nil {
			return err
		}
		next = n
	}
	x.Seq = next
	x.T = x.SrcT
	if x.T == 0 {
		x.T = x.RecvT
	}
	err := s.st.Append([]sample.Sample{x}, func(err error) {
		if err == nil {
			s.durable.Add(1)
			if s.onDurableSample != nil {
				s.onDurableSample(x)
			}
		}
		if done != nil {
			done(err)
		}
	})
	if err != nil {
		return err // seq not consumed: no hole
	}
	s.seq[x.Stream] = next + 1
	return nil
}

const crashChildEnv = "EPISODED_MQTT_CRASH_CHILD"

func openTestStore(dir string) (*storage.Store, error) {
	return storage.Open(storage.Options{Dir: dir, TimelineRetention: 24 * time.Hour, MinFree: -1})
}

// TestCrashChild is the daemon of TestDaemonCrash: a Client recording into a
// real storage.Store. It runs only when re-executed with crashChildEnv set.
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) == "" {
		t.Skip("helper process for TestDaemonCrash")
	}
	url, dir := os.Getenv("MQTT_URL"), os.Getenv("STORE_DIR")
	st, err := openTestStore(dir)
	if err != nil {
		fmt.Println("ERROR open store:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	storeCtx, storeCancel := context.WithCancel(context.Background())
	storeDone := make(chan error, 1)
	go func() { storeDone <- st.Run(storeCtx) }()

	// The log goes to stdout: the parent shows the last lines
	// when a child fails to start.
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := NewClient(ClientOptions{ID: "crash", URL: url, ClientID: "episoded-crash", Logger: log,
		Backoff: devices.BackoffPolicy{Min: 100 * time.Millisecond, Max: 500 * time.Millisecond}})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	if err := b.AddDevice(DeviceOptions{Device: "robot", Topics: []string{"crash/+"}, TimeField: "header.stamp"}); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	sink := newStoreSink(st)
	tail, err := newDurableTail(st)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	sink.onDurableSample = tail.add
	go func() {
		ready := false
		for ctx.Err() == nil {
			s := b.Stats()
			if s.Connected && !ready {
				fmt.Println("READY")
				ready = true
			}
			fmt.Printf("STATS durable=%d pending=%d queued=%d redelivered=%d%s\n", sink.durable.Load(), s.AcksPending, s.Queued, s.Redelivered, tail.fields())
			time.Sleep(100 * time.Millisecond) // pacing: a progress report every 100 ms
		}
	}()
	if err := b.Run(ctx, sink); err != nil {
		fmt.Println("ERROR run:", err)
	}
	storeCancel()
	<-storeDone
	if err := st.Close(); err != nil {
		fmt.Println("ERROR close:", err)
		os.Exit(2)
	}
	fmt.Println("CLEAN EXIT")
	os.Exit(0)
}

// durableTail is the crash child's report of how far each topic is
// durable: the highest message seq (the publisher's header.seq) stored,
// seeded at start from the newest sample of each stream already in the
// store, then raised by every sample made durable. The parent reads it
// from the STATS line ("max:<topic>=<seq>") to know when the last daemon
// holds the tail of every topic, since it cannot open the store while the
// child has it open.
type durableTail struct {
	mu  sync.Mutex
	max map[string]int
}

func newDurableTail(st *storage.Store) (*durableTail, error) {
	d := &durableTail{max: map[string]int{}}
	streams, err := st.Streams()
	if err != nil {
		return nil, err
	}
	for _, stream := range streams {
		x, err := st.LastSample(stream)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		d.add(x)
	}
	return d, nil
}

func (d *durableTail) add(x sample.Sample) {
	var m telem
	if json.Unmarshal(x.Payload, &m) != nil || m.Topic == "" {
		return // not a test message: the verification reports it
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if seq, ok := d.max[m.Topic]; !ok || m.Header.Seq > seq {
		d.max[m.Topic] = m.Header.Seq
	}
}

// fields returns " max:<topic>=<seq>" for each topic, in no fixed order.
func (d *durableTail) fields() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	for topic, seq := range d.max {
		fmt.Fprintf(&b, " max:%s=%d", topic, seq)
	}
	return b.String()
}

type child struct {
	cmd     *exec.Cmd
	ready   chan struct{}
	mu      sync.Mutex
	last    string
	exited  chan struct{}
	outTail []string
}

func startChild(t *testing.T, url, dir string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v=false")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1", "MQTT_URL="+url, "STORE_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, ready: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			if strings.HasPrefix(line, "STATS") {
				c.last = line
			} else {
				c.outTail = append(c.outTail, line)
				if len(c.outTail) > 40 {
					c.outTail = c.outTail[1:]
				}
			}
			c.mu.Unlock()
			if line == "READY" {
				once.Do(func() { close(c.ready) })
			}
		}
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
		close(c.exited)
	}()
	select {
	case <-c.ready:
	case <-c.exited:
		t.Fatalf("child exited before READY: %v", c.outTail)
	case <-time.After(120 * time.Second):
		c.mu.Lock()
		defer c.mu.Unlock()
		t.Fatalf("child not ready in 120s: %s; output:\n%s", c.last, strings.Join(c.outTail, "\n"))
	}
	return c
}

func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

func (c *child) stats() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// parsedStats returns the child's last STATS line as name -> value.
func (c *child) parsedStats() map[string]int64 {
	m := map[string]int64{}
	for _, f := range strings.Fields(strings.TrimPrefix(c.stats(), "STATS")) {
		k, v, ok := strings.Cut(f, "=")
		if n, err := strconv.ParseInt(v, 10, 64); ok && err == nil {
			m[k] = n
		}
	}
	return m
}

// ratePublisher feeds mosquitto_pub -l (an independent QoS 1 publisher)
// with JSON lines at a steady rate, one process per topic.
type ratePublisher struct {
	sent     atomic.Int64
	perTopic map[string]*atomic.Int64 // lines written per topic (seq 0..n-1)
	stop     chan struct{}
	wg       sync.WaitGroup
	errs     chan error
}

func startRatePublisher(m *mosquitto, topics []string, perSecond int) *ratePublisher {
	p := &ratePublisher{stop: make(chan struct{}), errs: make(chan error, len(topics)), perTopic: map[string]*atomic.Int64{}}
	per := perSecond / len(topics)
	for _, topic := range topics {
		p.perTopic[topic] = new(atomic.Int64)
	}
	for _, topic := range topics {
		cmd := exec.Command("stdbuf", "-oL", "mosquitto_pub", "-d", "-h", "127.0.0.1", "-p", fmt.Sprint(m.port), "-q", "1", "-t", topic, "-l")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			p.errs <- err
			continue
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			p.errs <- err
			continue
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			p.errs <- err
			continue
		}
		var acked atomic.Int64
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if strings.Contains(sc.Text(), "received PUBACK") {
					acked.Add(1)
				}
			}
		}()
		p.wg.Go(func() {
			w := bufio.NewWriter(stdin)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			start := time.Now()
			seq := 0
			for {
				select {
				case <-p.stop:
					w.Flush()
					// mosquitto_pub drops what it still queues at EOF:
					// close stdin only once every line is acknowledged.
					// (A poll in a goroutine, which cannot fail the test:
					// a shortfall is reported through p.errs below.)
					for deadline := time.Now().Add(30 * time.Second); acked.Load() < int64(seq) && time.Now().Before(deadline); {
						time.Sleep(10 * time.Millisecond)
					}
					stdin.Close()
					if err := cmd.Wait(); err != nil {
						p.errs <- fmt.Errorf("mosquitto_pub %s: %v", topic, err)
					}
					if n := acked.Load(); n < int64(seq) {
						p.errs <- fmt.Errorf("mosquitto_pub %s: %d of %d lines acknowledged by the broker", topic, n, seq)
					}
					return
				case now := <-tick.C:
					due := int(now.Sub(start).Seconds() * float64(per))
					for ; seq < due; seq++ {
						fmt.Fprintln(w, telemLine(topic, seq, time.Now().UnixNano()))
						p.sent.Add(1)
						p.perTopic[topic].Add(1)
					}
					w.Flush()
				}
			}
		})
	}
	return p
}

// published returns the number of messages sent per topic.
func (p *ratePublisher) published() map[string]int {
	return loadCounts(p.perTopic)
}

func loadCounts(m map[string]*atomic.Int64) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = int(v.Load())
	}
	return out
}

func (p *ratePublisher) finish() error {
	close(p.stop)
	p.wg.Wait()
	close(p.errs)
	var errs []error
	for err := range p.errs {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// TestDaemonCrash SIGKILLs the daemon (a child process running a Client and
// a real storage.Store) several times while mosquitto_pub sends 2,000
// msg/s, restarting it each time. Every message published ends up stored:
// those sent while the daemon was down, and those received but not yet
// durable at the kill. Duplicates are allowed, counted and reported.
func TestDaemonCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash soak with a real broker and store; skipped under -short")
	}
	m := startMosquitto(t, mosqConfig{persistence: true, inflight: 5000})
	dir := t.TempDir()
	topics := []string{"crash/0", "crash/1", "crash/2", "crash/3"}

	c := startChild(t, m.url(), dir)
	pub := startRatePublisher(m, topics, 2000)
	const kills = 4
	// The sleeps below are the kill schedule (pacing a real publisher and
	// daemon), not waits for a condition.
	for i := range kills {
		time.Sleep(time.Duration(1000+300*i) * time.Millisecond)
		before := c.stats()
		c.kill()
		t.Logf("kill %d: sent %d, child %s", i+1, pub.sent.Load(), before)
		time.Sleep(700 * time.Millisecond) // down: the broker queues
		c = startChild(t, m.url(), dir)
	}
	time.Sleep(time.Second)
	if err := pub.finish(); err != nil {
		t.Fatal(err)
	}
	verifyAfterCrashes(t, c, dir, pub.published(), kills, nil)
}

// verifyAfterCrashes lets the last daemon c catch up, stops it with
// SIGTERM, and checks the store in dir: every message published (seq
// 0..n-1 for each topic, n = published[topic]) is stored at least once,
// seq numbers have no holes, and duplicates are counted. explain, if not
// nil, describes a missing message.
//
// Catching up is a condition, not a quiet period: the child reports, for
// every topic, that the last published message is durable (and nothing is
// pending or queued). A broker still holding the tail of the persistent
// session's queue keeps the wait going; one that lost it fails the check.
func verifyAfterCrashes(t *testing.T, c *child, dir string, published map[string]int, kills int, explain func(topic string, seq int) string) {
	t.Helper()
	topics := slices.Sorted(maps.Keys(published))
	sent := 0
	for _, n := range published {
		sent += n
	}
	caughtUp := func() bool {
		st := c.parsedStats()
		if st["pending"] != 0 || st["queued"] != 0 {
			return false
		}
		for topic, n := range published {
			if n == 0 {
				continue
			}
			if seq, ok := st["max:"+topic]; !ok || seq < int64(n-1) {
				return false
			}
		}
		return true
	}
	select {
	case <-c.exited:
		t.Fatalf("the last daemon exited before verification: %v", c.outTail)
	default:
	}
	defer func() { // a failed wait must not leave the child running
		select {
		case <-c.exited:
		default:
			c.kill()
		}
	}()
	waitStart := time.Now()
	waitFor(t, 3*time.Minute, fmt.Sprintf("the last daemon to store the last of %v messages on each topic (published %v)", sent, published), caughtUp,
		func() string { return "child: " + c.stats() })
	t.Logf("the last daemon caught up %s after the publisher stopped: %s", time.Since(waitStart).Round(time.Millisecond), c.stats())
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		c.kill()
		t.Fatal("child did not exit on SIGTERM")
	}
	if !strings.Contains(strings.Join(c.outTail, "\n"), "CLEAN EXIT") {
		t.Fatalf("child did not exit cleanly: %v", c.outTail)
	}

	st, err := openTestStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	perTopic := map[string]map[int]int{}
	stored, dups := 0, 0
	streams, err := st.Streams()
	if err != nil {
		t.Fatal(err)
	}
	for _, stream := range streams {
		seqs := map[uint64]bool{}
		var maxSeq uint64
		for x, err := range st.Range(stream, math.MinInt64, math.MaxInt64) {
			if err != nil {
				t.Fatalf("range %s: %v", stream, err)
			}
			if seqs[x.Seq] {
				t.Fatalf("%s: seq %d stored twice", stream, x.Seq)
			}
			seqs[x.Seq] = true
			maxSeq = max(maxSeq, x.Seq)
			var msg telem
			if err := json.Unmarshal(x.Payload, &msg); err != nil {
				t.Fatalf("%s: payload: %v", stream, err)
			}
			if x.T != msg.Header.Stamp || x.SrcT != msg.Header.Stamp {
				t.Fatalf("%s: T %d SrcT %d, stamp %d", stream, x.T, x.SrcT, msg.Header.Stamp)
			}
			if perTopic[msg.Topic] == nil {
				perTopic[msg.Topic] = map[int]int{}
			}
			perTopic[msg.Topic][msg.Header.Seq]++
			if perTopic[msg.Topic][msg.Header.Seq] > 1 {
				dups++
			}
			stored++
		}
		if uint64(len(seqs)) != maxSeq {
			t.Fatalf("%s: %d samples but max seq %d: seq has holes", stream, len(seqs), maxSeq)
		}
	}
	missing := 0
	total := 0
	for _, topic := range topics {
		n := 0
		for seq := range perTopic[topic] {
			n = max(n, seq+1)
		}
		for seq := 0; seq < n; seq++ {
			if perTopic[topic][seq] == 0 {
				missing++
				if missing < 10 {
					why := ""
					if explain != nil {
						why = explain(topic, seq)
					}
					t.Errorf("%s: message %d published but not stored %s", topic, seq, why)
				}
			}
		}
		total += n
	}
	t.Logf("daemon crash: %d kills, %d published, %d stored, %d duplicates (%.2f%%), %d missing",
		kills, sent, stored, dups, 100*float64(dups)/float64(max(sent, 1)), missing)
	if missing > 0 || total != sent {
		t.Fatalf("%d messages lost (published %d, distinct stored %d)", missing+sent-total, sent, total)
	}
}
