package mqtt

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/mqttload"
	"github.com/episoded/episoded/internal/procstat"
	"github.com/episoded/episoded/sample"
)

// BenchmarkMQTTRecordVsMosquittoSub publishes ~200 B JSON telemetry at
// QoS 1 as fast as mosquitto takes it (several publisher processes, see
// TestBenchPublisherChild) and,
// in the same run, consumes it with `mosquitto_sub -q 1` (the baseline,
// output to a file) and with a Client recording into a real
// storage.Store (acknowledging only once durable). It reports both message
// rates, their ratio, the CPU ratio and the p99 delay to durable.
//
//	go test -run '^$' -bench BenchmarkMQTTRecordVsMosquittoSub -benchtime 1x ./devices/mqtt/
//
// EPISODED_BENCH_MSGS sets the total message count (default 300000),
// EPISODED_BENCH_PUBS the number of publishers (default 3) and
// EPISODED_BENCH_RATE a total publish rate in msg/s (default: unpaced).
func BenchmarkMQTTRecordVsMosquittoSub(b *testing.B) {
	needBin(b, mosquittoBin, "mosquitto_pub", "mosquitto_sub")
	total, pubs := 300_000, 3
	if v, err := strconv.Atoi(os.Getenv("EPISODED_BENCH_MSGS")); err == nil && v > 0 {
		total = v
	}
	if v, err := strconv.Atoi(os.Getenv("EPISODED_BENCH_PUBS")); err == nil && v > 0 {
		pubs = v
	}
	rate := 0 // as fast as mosquitto takes it
	if v, err := strconv.Atoi(os.Getenv("EPISODED_BENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	per := total / pubs
	total = per * pubs
	for range b.N {
		r := runMQTTBench(b, total, pubs, per, rate)
		b.ReportMetric(r.subRate, "sub_msg/s")
		b.ReportMetric(r.recvRate, "recv_msg/s")
		b.ReportMetric(r.storedRate, "stored_msg/s")
		b.ReportMetric(r.storedRate/r.subRate, "stored/sub")
		b.ReportMetric(r.pubRate, "pub_msg/s")
		b.ReportMetric(r.cpuOurs.Seconds(), "cpu_ours_s")
		b.ReportMetric(r.cpuSub.Seconds(), "cpu_sub_s")
		b.ReportMetric(r.cpuOurs.Seconds()/r.cpuSub.Seconds(), "cpu_ours/sub")
		b.ReportMetric(r.p99Pub.Seconds()*1000, "p99_pub_to_durable_ms")
		b.ReportMetric(r.p99Recv.Seconds()*1000, "p99_recv_to_durable_ms")
		b.ReportMetric(float64(r.dups), "duplicates")
	}
}

type benchResult struct {
	subRate, recvRate, storedRate float64
	pubRate                       float64 // until the last publisher had every message acknowledged
	cpuOurs, cpuSub               time.Duration
	p99Pub, p99Recv               time.Duration
	dups                          int
}

func runMQTTBench(b *testing.B, total, pubs, per, rate int) benchResult {
	b.Helper()
	// A window of 10000 unacknowledged messages per client: with a 100 ms
	// storage commit, 50,000 msg/s needs at least 5,000 (see package doc).
	m := startMosquitto(b, mosqConfig{inflight: 10000})

	st, err := openTestStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	storeDone := make(chan error, 1)
	go func() { storeDone <- st.Run(ctx) }()
	defer func() {
		cancel()
		<-storeDone
		st.Close()
	}()

	br, err := NewClient(ClientOptions{ID: "bench", URL: m.url(), ClientID: "episoded-bench"})
	if err != nil {
		b.Fatal(err)
	}
	if err := br.AddDevice(DeviceOptions{Device: "robot", Topics: []string{"bench/+"}, TimeField: "header.stamp"}); err != nil {
		b.Fatal(err)
	}
	sink := newStoreSink(st)
	var dmu sync.Mutex
	pubDelays := make([]time.Duration, 0, total)
	recvDelays := make([]time.Duration, 0, total)
	var durable atomic.Int64
	var tDurable atomic.Int64
	sink.onDurableSample = func(x sample.Sample) {
		now := time.Now().UnixNano()
		if x.Stream == "bench/warmup" {
			return
		}
		dmu.Lock()
		pubDelays = append(pubDelays, time.Duration(now-x.SrcT))
		recvDelays = append(recvDelays, time.Duration(now-x.RecvT))
		dmu.Unlock()
		if durable.Add(1) == int64(total) {
			tDurable.Store(now)
		}
	}
	brCtx, brCancel := context.WithCancel(ctx)
	brDone := make(chan error, 1)
	go func() { brDone <- br.Run(brCtx, sink) }()
	defer func() { brCancel(); <-brDone }()

	// Baseline: mosquitto_sub at QoS 1, its output written to a file (one
	// line per message), exiting after the warm-up line and total messages
	// (-C). Nothing in this process reads its output during the run: that
	// reading was charged to our CPU until wave 4.
	subOutName := filepath.Join(b.TempDir(), "sub.out")
	subOut, err := os.Create(subOutName)
	if err != nil {
		b.Fatal(err)
	}
	defer subOut.Close()
	sub := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", fmt.Sprint(m.port), "-q", "1", "-t", "bench/+", "-i", "bench-sub",
		"-C", strconv.Itoa(total+1))
	sub.Stdout = subOut
	if err := sub.Start(); err != nil {
		b.Fatal(err)
	}
	subExited := make(chan time.Time, 1)
	go func() { _ = sub.Wait(); subExited <- time.Now() }()
	defer func() { _ = sub.Process.Kill() }() // an error once it has exited
	waitFor(b, 10*time.Second, "broker subscription", func() bool { return br.Stats().Connected })
	// Warm-up message: both consumers are subscribed once it arrived. -C
	// counts exactly one warm-up line.
	for {
		if err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(m.port), "-q", "1", "-t", "bench/warmup", "-m", `{"header":{"stamp":1}}`).Run(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		if fi, err := os.Stat(subOutName); err == nil && fi.Size() > 0 {
			break
		}
	}
	if data, _ := os.ReadFile(subOutName); bytes.Count(data, []byte{'\n'}) != 1 {
		b.Fatalf("mosquitto_sub received %d warm-up messages; the run would end early", bytes.Count(data, []byte{'\n'}))
	}
	waitFor(b, 10*time.Second, "warm-up stored", func() bool { return br.Stats().AcksPending == 0 && br.Stats().Devices["robot"].Messages > 0 })
	recvBase := br.Stats().Devices["robot"].Messages

	// Publishers: one child process per topic (TestBenchPublisherChild).
	var pubCmds []*exec.Cmd
	type pubExitAt struct {
		i   int
		err error
		at  time.Time
	}
	pubExit := make(chan pubExitAt, pubs)
	var pubOut []*bytes.Buffer
	// An unreadable figure counts as 0, as it always has here.
	cpu0, _ := procstat.Self()
	mosqCPU0, _ := procstat.CPU(m.cmd.Process.Pid)
	t0 := time.Now()
	for i := range pubs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBenchPublisherChild$")
		cmd.Env = append(os.Environ(), benchPubEnv+"=1", fmt.Sprintf("ADDR=127.0.0.1:%d", m.port),
			fmt.Sprintf("TOPIC=bench/robot%d", i), fmt.Sprintf("COUNT=%d", per), fmt.Sprintf("RATE=%d", rate/pubs))
		out := &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		pubCmds, pubOut = append(pubCmds, cmd), append(pubOut, out)
		go func() { pubExit <- pubExitAt{i, cmd.Wait(), time.Now()} }()
	}
	// Our progress from the device's counter (Stats builds maps: too
	// costly for a 5 ms poll charged to our CPU).
	robot := br.devs[0]
	var tRecv, tSub int64
	deadline := time.Now().Add(5 * time.Minute)
	for (tSub == 0 || tDurable.Load() == 0) && time.Now().Before(deadline) {
		if tRecv == 0 && robot.stats.messages.Load()-recvBase >= uint64(total) {
			tRecv = time.Now().UnixNano()
		}
		select {
		case t := <-subExited:
			tSub = t.UnixNano()
		case <-time.After(5 * time.Millisecond):
		}
	}
	cpu1, _ := procstat.Self()
	mosqCPU1, _ := procstat.CPU(m.cmd.Process.Pid)
	cpuOurs, cpuMosq := cpu1-cpu0, mosqCPU1-mosqCPU0
	if tRecv == 0 {
		tRecv = time.Now().UnixNano()
	}
	if tSub == 0 || tDurable.Load() == 0 {
		data, _ := os.ReadFile(subOutName)
		b.Fatalf("incomplete after 5 min: mosquitto_sub %d, durable %d of %d", bytes.Count(data, []byte{'\n'})-1, durable.Load(), total)
	}
	var cpuPubs time.Duration
	var tPub time.Time // the last publisher's exit: all its messages acknowledged by mosquitto
	for range pubCmds {
		e := <-pubExit
		if e.err != nil {
			b.Fatalf("publisher %d: %v: %s", e.i, e.err, pubOut[e.i])
		}
		if e.at.After(tPub) {
			tPub = e.at
		}
	}
	for _, cmd := range pubCmds {
		cpuPubs += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	cpuSub := sub.ProcessState.UserTime() + sub.ProcessState.SystemTime()

	dmu.Lock()
	defer dmu.Unlock()
	slices.Sort(pubDelays)
	slices.Sort(recvDelays)
	p99 := func(d []time.Duration) time.Duration { return d[len(d)*99/100] }
	res := benchResult{
		subRate:    float64(total) / (time.Duration(tSub - t0.UnixNano())).Seconds(),
		pubRate:    float64(total) / tPub.Sub(t0).Seconds(),
		recvRate:   float64(total) / (time.Duration(tRecv - t0.UnixNano())).Seconds(),
		storedRate: float64(total) / (time.Duration(tDurable.Load() - t0.UnixNano())).Seconds(),
		cpuOurs:    cpuOurs,
		cpuSub:     cpuSub,
		p99Pub:     p99(pubDelays),
		p99Recv:    p99(recvDelays),
		dups:       int(durable.Load()) - total,
	}
	st2 := br.Stats()
	b.Logf("%d msgs, %d publishers (%.0f msg/s published): mosquitto_sub %.0f msg/s (%.2fs CPU); ours received %.0f msg/s, stored %.0f msg/s (%.2fs CPU); p99 publish→durable %s, receive→durable %s; overflow %d, redelivered %d; CPU mosquitto %.2fs, publishers %.2fs",
		total, pubs, res.pubRate, res.subRate, cpuSub.Seconds(), res.recvRate, res.storedRate, cpuOurs.Seconds(), res.p99Pub, res.p99Recv, st2.Overflow, st2.Redelivered,
		cpuMosq.Seconds(), cpuPubs.Seconds())
	return res
}

const benchPubEnv = "EPISODED_MQTT_BENCH_PUBLISHER"

// TestBenchPublisherChild is the publisher of the benchmark, run as its own
// process so that its CPU is not counted as ours. It speaks MQTT 3.1.1 with
// paho's packet codec over one buffered TCP connection: QoS 1 PUBLISH
// packets, at most 1000 unacknowledged, each stamped with the time it is
// written (header.stamp), as fast as the broker takes them or at RATE msg/s.
func TestBenchPublisherChild(t *testing.T) {
	if os.Getenv(benchPubEnv) == "" {
		t.Skip("helper process for BenchmarkMQTTRecordVsMosquittoSub")
	}
	addr, topic := os.Getenv("ADDR"), os.Getenv("TOPIC")
	n, _ := strconv.Atoi(os.Getenv("COUNT"))
	rate, _ := strconv.Atoi(os.Getenv("RATE"))
	if err := mqttload.Publish(addr, topic, n, rate); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	fmt.Println("DONE")
	os.Exit(0)
}
