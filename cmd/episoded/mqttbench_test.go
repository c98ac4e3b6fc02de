package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/mqttload"
	"github.com/episoded/episoded/internal/procstat"
)

// BenchmarkDaemonMQTT measures the built daemon recording MQTT telemetry
// against mosquitto_sub, in one run, through one real mosquitto on
// loopback (max_inflight_messages 10000, max_queued_messages 0). The load
// is identical for every phase: EPISODED_BENCH_MSGS messages (default
// 200,000) of 200 B JSON from EPISODED_BENCH_PUBS publishers (default 3,
// internal/mqttload, in this process, so their CPU is charged to neither
// side), QoS 1, as fast as mosquitto takes them.
//
//  1. alone: the daemon (subscribed at QoS 1, acknowledging once durable in
//     its store) with nothing else subscribed; then `mosquitto_sub -q 1
//     -C N` with its output redirected to a file, nothing else subscribed.
//  2. both: the daemon and mosquitto_sub subscribed to the same messages.
//  3. latency: publishing paced at half the ceiling measured in phase 1
//     (mosquitto_sub's rate alone), the time from each message's publish
//     stamp to the daemon's PUBACK for it, which it sends only once the
//     message is durable. A proxy in this process between the daemon and
//     mosquitto reads the packets (the daemon's other broker connection
//     goes straight to mosquitto, so phases 1 and 2 carry no proxy).
//
// CPU is user+system from /proc/PID/stat (10 ms ticks) for the daemon and
// from wait4 for mosquitto_sub, between the first publish and the last
// message stored (daemon: every message counted and none left
// unacknowledged, polled on /metrics every 200 ms and every 20 ms once 95%
// have arrived, which the daemon's figure includes) or received
// (mosquitto_sub exits after N). In phase 2 each consumer's end is watched
// on its own (the daemon's poll runs while mosquitto_sub is still
// receiving), and the publishers' rate is reported beside both
// (both-stored/published, both-sub/published): at 1.0 a consumer kept up
// with what was published, and the ratio between the two consumers cannot
// rise above 1.0 by much.
//
//	go test -run '^$' -bench BenchmarkDaemonMQTT -benchtime 1x ./cmd/episoded/
func BenchmarkDaemonMQTT(b *testing.B) {
	total, pubs := 200_000, 3
	if v, err := strconv.Atoi(os.Getenv("EPISODED_BENCH_MSGS")); err == nil && v > 0 {
		total = v
	}
	if v, err := strconv.Atoi(os.Getenv("EPISODED_BENCH_PUBS")); err == nil && v > 0 {
		pubs = v
	}
	total = total / pubs * pubs
	for range b.N {
		r := runDaemonMQTTBench(b, total, pubs)
		b.ReportMetric(r.daemonAlone.cpuPerMsg(), "cpu-ns/msg")
		b.ReportMetric(r.subAlone.cpuPerMsg(), "sub-cpu-ns/msg")
		b.ReportMetric(r.daemonAlone.cpuPerMsg()/r.subAlone.cpuPerMsg(), "x-mosquitto_sub")
		b.ReportMetric(r.daemonAlone.rate/r.subAlone.rate, "stored/sub")
		b.ReportMetric(r.daemonBoth.cpuPerMsg()/r.subBoth.cpuPerMsg(), "both-x-mosquitto_sub")
		b.ReportMetric(r.daemonBoth.rate/r.subBoth.rate, "both-stored/sub")
		b.ReportMetric(r.daemonBoth.rate/r.pubBoth, "both-stored/published")
		b.ReportMetric(r.subBoth.rate/r.pubBoth, "both-sub/published")
		b.ReportMetric(r.daemonAlone.rate, "stored-msg/s")
		b.ReportMetric(r.subAlone.rate, "sub-msg/s")
		b.ReportMetric(r.latRate, "latency-at-msg/s")
		b.ReportMetric(float64(r.p50.Microseconds())/1000, "p50-durable-ms")
		b.ReportMetric(float64(r.p99.Microseconds())/1000, "p99-durable-ms")
		b.ReportMetric(float64(r.p99)/float64(r.target), "p99/target")
		b.ReportMetric(float64(r.p99in.Microseconds())/1000, "p99-in-daemon-ms")
	}
}

type consumerRun struct {
	n    int
	cpu  time.Duration
	rate float64 // msg/s from the first publish to the last stored/received
}

func (c consumerRun) cpuPerMsg() float64 { return float64(c.cpu.Nanoseconds()) / float64(c.n) }

// consumerEnd is when the daemon was seen done, and its CPU time then.
type consumerEnd struct {
	at  time.Time
	cpu time.Duration
	err error
}

type pubResult struct {
	err error
	at  time.Time
}

type daemonMQTTResult struct {
	daemonAlone, subAlone, daemonBoth, subBoth consumerRun
	// pubAlone, pubSubAlone, pubBoth: the publishers' rate in phases 1a,
	// 1b and 2 (until mosquitto acknowledged their last message). A
	// consumer cannot store faster than this; when both consumers reach
	// it, the ratio between them says only that neither fell behind.
	pubAlone, pubSubAlone, pubBoth float64
	latRate                        float64
	p50, p99, target               time.Duration
	p99in                          time.Duration // the daemon's part: proxy -> PUBACK
}

const benchSyncInterval = 100 * time.Millisecond

func runDaemonMQTTBench(b *testing.B, total, pubs int) daemonMQTTResult {
	window := 10000
	if v, err := strconv.Atoi(os.Getenv("EPISODED_BENCH_WINDOW")); err == nil && v > 0 {
		window = v
	}
	brokerURL := startBrokerConf(b, fmt.Sprintf("max_queued_messages 0\nmax_inflight_messages %d\n", window))
	brokerAddr := strings.TrimPrefix(brokerURL, "tcp://")
	proxy := newAckProxy(b, brokerAddr)

	dir := b.TempDir()
	addr := freeAddr(b)
	cfg := writeFile(b, filepath.Join(dir, "episoded.yaml"), fmt.Sprintf(`
gateway: {id: gw-bench, site: lab}
api: {listen: "%s"}
storage: {dir: "%s", sync_interval: %s, min_free: 0}
brokers:
  - {id: b1, url: "%s"}
  - {id: b2, url: "tcp://%s"}
devices:
  - {id: a, type: mqtt, broker: b1, topics: ["a/+"], time_field: header.stamp}
  - {id: c, type: mqtt, broker: b1, topics: ["c/+"], time_field: header.stamp}
  - {id: d, type: mqtt, broker: b2, topics: ["d/+"], time_field: header.stamp}
`, addr, filepath.Join(dir, "data"), benchSyncInterval, brokerURL, proxy.addr()))
	cmd := exec.Command(bin, "run", "--config", cfg)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	base := "http://" + addr
	pid := cmd.Process.Pid
	benchWait(b, 60*time.Second, "the daemon connected to mosquitto", func() bool {
		return metric(base, `episoded_mqtt_connected{broker="b1"}`) == 1 && metric(base, `episoded_mqtt_connected{broker="b2"}`) == 1
	}, stderr)

	// publish starts the publishers; the channel gives the first error and
	// when the last publisher had every message acknowledged by mosquitto.
	publish := func(prefix string, n, rate int) <-chan pubResult {
		errc := make(chan error, pubs)
		for i := range pubs {
			go func() {
				errc <- mqttload.Publish(brokerAddr, fmt.Sprintf("%s/robot%d", prefix, i), n/pubs, rate/pubs)
			}()
		}
		out := make(chan pubResult, 1)
		go func() {
			var first error
			for range pubs {
				if err := <-errc; err != nil && first == nil {
					first = err
				}
			}
			out <- pubResult{first, time.Now()}
		}()
		return out
	}
	pubDone := func(c <-chan pubResult) time.Time {
		r := <-c
		if r.err != nil {
			b.Fatal(r.err)
		}
		return r.at
	}
	messagesSeries := func(dev string) string {
		return fmt.Sprintf(`episoded_mqtt_messages_total{broker="b1",device="%s"}`, dev)
	}
	messages := func(dev string) float64 { return metric(base, messagesSeries(dev)) }
	// daemonStored watches, from its own goroutine, until the daemon has
	// received n more messages on device dev than before and acknowledged
	// every one (acks follow durability). It sends when that was seen and
	// the daemon's CPU time then. One scrape per poll: every benchPoll,
	// then every benchPollNear once 95% have arrived, so that the end is
	// seen at most benchPollNear late (the scrapes are in the daemon's CPU
	// figure, about as many as a 200 ms poll took before). It runs
	// concurrently with mosquitto_sub, so neither consumer's end waits for
	// the other's.
	daemonStored := func(dev string, before float64, n int) <-chan consumerEnd {
		out := make(chan consumerEnd, 1)
		go func() {
			deadline := time.Now().Add(5 * time.Minute)
			for {
				v := metrics(base, messagesSeries(dev), `episoded_mqtt_acks_pending{broker="b1"}`)
				got := v[0] - before
				if got >= float64(n) && v[1] == 0 {
					out <- consumerEnd{at: time.Now(), cpu: procCPU(pid)}
					return
				}
				if time.Now().After(deadline) {
					out <- consumerEnd{err: fmt.Errorf("timed out waiting for the daemon to store every message on %s (%.0f of %d)\n%s",
						dev, got, n, tail(stderr.String(), 4000))}
					return
				}
				if got >= 0.95*float64(n) {
					time.Sleep(benchPollNear)
				} else {
					time.Sleep(benchPoll)
				}
			}
		}()
		return out
	}
	daemonEnd := func(c <-chan consumerEnd) consumerEnd {
		e := <-c
		if e.err != nil {
			b.Fatal(e.err)
		}
		return e
	}
	warmDaemon := func(dev string) float64 {
		if err := mqttload.Publish(brokerAddr, dev+"/warm", 1, 0); err != nil {
			b.Fatal(err)
		}
		daemonEnd(daemonStored(dev, 0, 1))
		return messages(dev)
	}
	// mosquittoSub starts `mosquitto_sub -C n+1` on filter (output to a
	// file) and returns once it is subscribed, shown by a warm-up
	// message in its output.
	mosquittoSub := func(prefix string, n int) (*exec.Cmd, chan time.Time) {
		out, err := os.Create(filepath.Join(dir, prefix+".out"))
		if err != nil {
			b.Fatal(err)
		}
		sub := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", brokerAddr[strings.LastIndexByte(brokerAddr, ':')+1:],
			"-q", "1", "-t", prefix+"/+", "-C", strconv.Itoa(n+1), "-i", "bench-sub-"+prefix)
		sub.Stdout = out
		if err := sub.Start(); err != nil {
			b.Fatal(err)
		}
		exited := make(chan time.Time, 1)
		go func() { _ = sub.Wait(); exited <- time.Now(); out.Close() }()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if err := mqttload.Publish(brokerAddr, prefix+"/warm", 1, 0); err != nil {
				b.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			if fi, err := os.Stat(out.Name()); err == nil && fi.Size() > 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("mosquitto_sub did not subscribe")
			}
		}
		// -C counts one warm-up line.
		data, _ := os.ReadFile(out.Name())
		if extra := bytes.Count(data, []byte{'\n'}) - 1; extra > 0 {
			b.Fatalf("mosquitto_sub received %d warm-up messages; the run would end early", extra+1)
		}
		return sub, exited
	}
	subCPU := func(sub *exec.Cmd) time.Duration {
		return sub.ProcessState.UserTime() + sub.ProcessState.SystemTime()
	}

	var r daemonMQTTResult
	// 1a. The daemon alone.
	before := warmDaemon("a")
	stopPerf := perfRecord(b, pid)
	cpu0, t0 := procCPU(pid), time.Now()
	pubc := publish("a", total, 0)
	end := daemonEnd(daemonStored("a", before, total))
	r.daemonAlone = consumerRun{n: total, cpu: end.cpu - cpu0, rate: float64(total) / end.at.Sub(t0).Seconds()}
	stopPerf()
	r.pubAlone = float64(total) / pubDone(pubc).Sub(t0).Seconds()

	// 1b. mosquitto_sub alone.
	sub, exited := mosquittoSub("b", total)
	t0 = time.Now()
	pubc = publish("b", total, 0)
	tEnd := <-exited
	r.subAlone = consumerRun{n: total, cpu: subCPU(sub), rate: float64(total) / tEnd.Sub(t0).Seconds()}
	r.pubSubAlone = float64(total) / pubDone(pubc).Sub(t0).Seconds()

	// 2. Both subscribed to the same messages.
	warmDaemon("c")
	sub, exited = mosquittoSub("c", total)
	// mosquitto_sub's warm-up reached the daemon too.
	benchWait(b, time.Minute, "the daemon idle", func() bool {
		return metric(base, `episoded_mqtt_acks_pending{broker="b1"}`) == 0
	}, stderr)
	before = messages("c")
	cpu0, t0 = procCPU(pid), time.Now()
	pubc = publish("c", total, 0)
	stored := daemonStored("c", before, total)
	tSub := <-exited
	end = daemonEnd(stored)
	r.daemonBoth = consumerRun{n: total, cpu: end.cpu - cpu0, rate: float64(total) / end.at.Sub(t0).Seconds()}
	r.subBoth = consumerRun{n: total, cpu: subCPU(sub), rate: float64(total) / tSub.Sub(t0).Seconds()}
	r.pubBoth = float64(total) / pubDone(pubc).Sub(t0).Seconds()

	// 3. Publish -> durable at half the ceiling, for about 10 s.
	r.latRate = r.subAlone.rate / 2
	n := max(int(r.latRate*10)/pubs*pubs, 10*pubs)
	proxy.reset()
	commits0 := histogram(base, "episoded_storage_commit_seconds")
	pubDone(publish("d", n, int(r.latRate)))
	benchWait(b, 5*time.Minute, "every paced message acknowledged by the daemon", func() bool { return proxy.count() >= n }, stderr)
	commits := histogram(base, "episoded_storage_commit_seconds").sub(commits0)
	lat, inLat := proxy.latencies()
	slices.Sort(lat)
	slices.Sort(inLat)
	r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	r.p99in = inLat[len(inLat)*99/100]
	r.target = benchSyncInterval + 50*time.Millisecond

	b.Logf("%d msgs, %d publishers. alone: daemon stored %.0f msg/s (published %.0f), %.0f ns CPU/msg; mosquitto_sub %.0f msg/s (published %.0f), %.0f ns CPU/msg. "+
		"both: daemon %.0f msg/s, %.0f ns/msg; mosquitto_sub %.0f msg/s, %.0f ns/msg; published %.0f msg/s. "+
		"publish->durable at %.0f msg/s (%d msgs): p50 %s, p99 %s (target %s), p99 in the daemon (proxy->PUBACK) %s; meanwhile %.0f commits, p50 <= %gs, p99 <= %gs",
		total, pubs, r.daemonAlone.rate, r.pubAlone, r.daemonAlone.cpuPerMsg(), r.subAlone.rate, r.pubSubAlone, r.subAlone.cpuPerMsg(),
		r.daemonBoth.rate, r.daemonBoth.cpuPerMsg(), r.subBoth.rate, r.subBoth.cpuPerMsg(), r.pubBoth,
		r.latRate, len(lat), r.p50, r.p99, r.target, r.p99in, commits.count(), commits.quantile(0.5), commits.quantile(0.99))
	return r
}

// promHistogram is a Prometheus histogram's cumulative buckets, by upper
// bound.
type promHistogram map[float64]float64

// histogram reads histogram name from /metrics (no labels).
func histogram(base, name string) promHistogram {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	h := promHistogram{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	prefix := name + `_bucket{le="`
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		le, v, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		bound, err1 := strconv.ParseFloat(le, 64)
		n, err2 := strconv.ParseFloat(v, 64)
		if err1 == nil && err2 == nil {
			h[bound] = n
		}
	}
	return h
}

func (h promHistogram) sub(o promHistogram) promHistogram {
	d := promHistogram{}
	for k, v := range h {
		d[k] = v - o[k]
	}
	return d
}

func (h promHistogram) count() float64 { return h[math.Inf(1)] }

// quantile returns the smallest bucket bound holding at least q of the
// observations.
func (h promHistogram) quantile(q float64) float64 {
	bounds := slices.Sorted(maps.Keys(h))
	for _, b := range bounds {
		if h[b] >= q*h.count() {
			return b
		}
	}
	return math.Inf(1)
}

// perfRecord profiles process pid with `perf record -g` into the file
// named by EPISODED_BENCH_PERF (if set; the daemon's binary is copied
// beside it as FILE.bin for `perf report -i FILE`), until the returned
// function is called.
func perfRecord(b *testing.B, pid int) func() {
	out := os.Getenv("EPISODED_BENCH_PERF")
	if out == "" {
		return func() {}
	}
	if data, err := os.ReadFile(bin); err == nil {
		_ = os.WriteFile(out+".bin", data, 0o755)
	}
	cmd := exec.Command("perf", "record", "-F", "999", "-g", "-p", strconv.Itoa(pid), "-o", out)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("perf: %v", err)
	}
	return func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
}

// benchWait polls cond every benchPoll until it holds or within passes.
func benchWait(b *testing.B, within time.Duration, what string, cond func() bool, log fmt.Stringer) {
	b.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %s waiting for %s\n%s", within, what, tail(log.String(), 4000))
		}
		time.Sleep(benchPoll)
	}
}

// benchPoll is how often the benchmark reads the daemon's /metrics: each
// read costs the daemon about a millisecond of CPU (counted in its
// figure), and the end of a phase is seen up to this late (which lowers
// its rate by up to 200 ms / phase length, about 3%).
const benchPoll = 200 * time.Millisecond

// benchPollNear is the poll once a phase is nearly done (see daemonStored).
const benchPollNear = 20 * time.Millisecond

// procCPU is process pid's user+system CPU time (procstat.CPU: /proc,
// 10 ms resolution); 0 if unreadable, as it always has been here.
func procCPU(pid int) time.Duration {
	d, _ := procstat.CPU(pid)
	return d
}

// ackProxy forwards one MQTT connection between the daemon and mosquitto
// and reads the packets on the way: a QoS 1 PUBLISH from the broker notes
// its packet id and its payload's publish stamp; the daemon's PUBACK for
// that id (sent only once the sample is durable) records now - stamp.
type ackProxy struct {
	b      *testing.B
	ln     net.Listener
	target string
	mu     struct {
		sync.Mutex
		stamps map[uint16]proxySeen
		lat    []time.Duration // publish stamp -> PUBACK
		inLat  []time.Duration // PUBLISH read by the proxy -> PUBACK: the daemon's part
	}
}

// proxySeen is a PUBLISH on its way to the daemon: its publish stamp, and
// when the proxy read it.
type proxySeen struct{ stamp, seen int64 }

func newAckProxy(b *testing.B, target string) *ackProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p := &ackProxy{b: b, ln: ln, target: target}
	p.mu.stamps = map[uint16]proxySeen{}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go p.pipe(up, c, true)
			go p.pipe(c, up, false)
		}
	}()
	return p
}

func (p *ackProxy) addr() string { return p.ln.Addr().String() }

func (p *ackProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.lat, p.mu.inLat = nil, nil
}

func (p *ackProxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mu.lat)
}

// latencies returns publish->PUBACK and, per message, the daemon's part
// of it (from the proxy reading the PUBLISH to the PUBACK).
func (p *ackProxy) latencies() (total, inDaemon []time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.mu.lat), slices.Clone(p.mu.inLat)
}

// pipe copies packets from src to dst, flushing whenever src has nothing
// more buffered. fromBroker tells the direction.
func (p *ackProxy) pipe(src, dst net.Conn, fromBroker bool) {
	defer src.Close()
	defer dst.Close()
	br := bufio.NewReaderSize(src, 64<<10)
	bw := bufio.NewWriterSize(dst, 64<<10)
	var pkt []byte
	for {
		h, err := br.ReadByte()
		if err != nil {
			return
		}
		pkt = append(pkt[:0], h)
		n, mult := 0, 1
		for {
			c, err := br.ReadByte()
			if err != nil {
				return
			}
			pkt = append(pkt, c)
			n += int(c&127) * mult
			mult *= 128
			if c&128 == 0 {
				break
			}
		}
		hdr := len(pkt)
		pkt = slices.Grow(pkt, n)[:hdr+n]
		if _, err := io.ReadFull(br, pkt[hdr:]); err != nil {
			return
		}
		body := pkt[hdr:]
		switch {
		case fromBroker && h>>4 == 3 && (h>>1)&3 == 1 && len(body) >= 2:
			tl := int(binary.BigEndian.Uint16(body))
			if len(body) >= 2+tl+2 {
				id := binary.BigEndian.Uint16(body[2+tl:])
				stamp := mqttload.Stamp(body[2+tl+2:])
				p.mu.Lock()
				p.mu.stamps[id] = proxySeen{stamp, time.Now().UnixNano()}
				p.mu.Unlock()
			}
		case !fromBroker && h>>4 == 4 && len(body) >= 2:
			now := time.Now().UnixNano()
			id := binary.BigEndian.Uint16(body)
			p.mu.Lock()
			if s, ok := p.mu.stamps[id]; ok {
				delete(p.mu.stamps, id)
				if s.stamp > 0 {
					p.mu.lat = append(p.mu.lat, time.Duration(now-s.stamp))
					p.mu.inLat = append(p.mu.inLat, time.Duration(now-s.seen))
				}
			}
			p.mu.Unlock()
		}
		if _, err := bw.Write(pkt); err != nil {
			return
		}
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return
			}
		}
	}
}
