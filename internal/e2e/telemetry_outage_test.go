package e2e

import (
	"bufio"
	"fmt"
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
)

const mosquittoBin = "/usr/sbin/mosquitto"

// startMosquitto runs a real mosquitto broker on a free loopback port until
// the test ends and returns the port. (CI installs mosquitto and
// mosquitto-clients; a missing binary fails the test, -short skips it.)
func startMosquitto(t *testing.T) int {
	t.Helper()
	for _, b := range []string{mosquittoBin, "mosquitto_pub"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (apt-get install -y --no-install-recommends mosquitto mosquitto-clients): %v", b, err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n", port)), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "mosquitto.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mosquittoBin, "-c", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return port
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto did not listen: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOutagesRealTelemetry: a 50 Hz telemetry device, published by
// mosquitto_pub (an independent client) through a real mosquitto broker,
// stops sending without disconnecting at the start, in the middle, at the
// end and for the whole of four episodes. The stream's rate comes from the
// config (rate: 50). Coverage is exact to one sample against what was
// published in each window, the silence is one no_data gap within one
// period of the truth, and the verdict is degraded for the right reason.
func TestOutagesRealTelemetry(t *testing.T) {
	if testing.Short() {
		t.Skip("records four episodes in real time (~20 s) through mosquitto; skipped under -short")
	}
	port := startMosquitto(t)
	const stream = "cell1/joints"
	const period = int64(20 * time.Millisecond)
	sec := func(s float64) int64 { return int64(s * float64(time.Second)) }
	// Relative to t0 (the first message): silences, then episodes.
	silences := [][2]int64{{sec(5), sec(6.5)}, {sec(10), sec(12)}, {sec(13.5), sec(14)}}
	type epCase struct {
		name        string
		start, stop int64
		silence     int
		reason      string
	}
	cases := []epCase{
		{"start", sec(5.5), sec(8), 0, episode.ReasonLowCoverage},
		{"end", sec(8.5), sec(11), 1, episode.ReasonLowCoverage},
		{"whole", sec(11.2), sec(11.8), 1, episode.ReasonMissingStream},
		{"middle", sec(12.5), sec(15), 2, episode.ReasonLowCoverage},
	}
	end := sec(16)

	dir := t.TempDir()
	yaml := fmt.Sprintf(`gateway: {id: gw, site: s}
api: {listen: "127.0.0.1:0"}
storage: {dir: %q, sync_interval: 50ms}
brokers: [{id: m, url: "tcp://127.0.0.1:%d", backoff: {min: 100ms, max: 200ms}}]
devices:
  - {id: robot, type: mqtt, broker: m, topics: [cell1/joints], stream: cell1/joints, format: json, time_field: ts, time_unit: ns, rate: 50}
cells:
  - {id: cell1, devices: [robot]}
`, filepath.Join(dir, "store"), port)
	cfg, err := config.Parse("telemetry", []byte(yaml), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	_, api := daemontest.Start(t, cfg, log)

	// The publisher: mosquitto_pub -l sends each stdin line as one QoS 1
	// message; its connection stays open through the silences.
	pub := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-q", "1", "-t", stream, "-l")
	stdin, err := pub.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pub.Stdout, pub.Stderr = io.Discard, io.Discard
	if err := pub.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); pub.Wait() }()
	w := bufio.NewWriter(stdin)
	t0 := time.Now().Add(500 * time.Millisecond).UnixNano()
	silent := func(rel int64) bool {
		for _, s := range silences {
			if rel >= s[0] && rel < s[1] {
				return true
			}
		}
		return false
	}
	sent := make(chan []int64, 1)
	go func() {
		var ts []int64
		for k := int64(0); k*period < end; k++ {
			rel := k * period
			time.Sleep(time.Until(time.Unix(0, t0+rel))) // pacing: the publisher's schedule
			if silent(rel) {
				continue
			}
			fmt.Fprintf(w, `{"ts":%d,"q":[0.1,0.2]}`+"\n", t0+rel)
			w.Flush()
			ts = append(ts, t0+rel)
		}
		sent <- ts
	}()

	// at paces the outage schedule: it waits for a time, not a condition.
	at := func(rel int64) { time.Sleep(time.Until(time.Unix(0, t0+rel))) }
	ids := make([]string, len(cases))
	for i, c := range cases {
		at(c.start)
		var e episode.Episode
		if code := call(t, "POST", api+"/v1/cells/cell1/episodes", map[string]string{"task": c.name}, &e); code != 201 {
			t.Fatalf("%s: start: %d", c.name, code)
		}
		ids[i] = e.ID
		at(c.stop)
		if code := call(t, "POST", api+"/v1/episodes/"+e.ID+"/stop", nil, nil); code != 200 {
			t.Fatalf("%s: stop: %d", c.name, code)
		}
	}
	published := <-sent
	for i, c := range cases {
		e := waitSettled(t, api, ids[i], c.name)
		t.Run(c.name, func(t *testing.T) {
			from, to := e.Window(0)
			var q *episode.StreamReport
			for i := range e.Quality {
				if e.Quality[i].Stream == stream {
					q = &e.Quality[i]
				}
			}
			if q == nil {
				t.Fatalf("no report for %s", stream)
			}
			// Ground truth: the messages published with a device time in
			// the window, and the window's 50 Hz slots. Aligned times may
			// differ from device times by up to the stated alignment bound,
			// so a message within that of an edge may fall either way.
			b := int64(q.AlignmentErrorBoundMs * 1e6)
			inWindow, lo, hi := 0, 0, 0
			for _, ts := range published {
				if ts >= from && ts <= to {
					inWindow++
				}
				if ts >= from+b && ts <= to-b {
					lo++
				}
				if ts >= from-b && ts <= to+b {
					hi++
				}
			}
			slots := float64(to-from) / float64(period)
			s := silences[c.silence]
			sFrom, sTo := t0+s[0], t0+s[1]
			t.Logf("window [%v, %v]; silence [%v, %v]; %d samples (%d published in the window, %d..%d within the %.3f ms bound), expected %d (%.1f slots), coverage %v; gaps %+v; verdict %+v",
				rel(from, t0), rel(to, t0), time.Duration(s[0]), time.Duration(s[1]), q.Samples, inWindow, lo, hi, q.AlignmentErrorBoundMs, q.Expected, slots, q.Coverage, q.GapList, e.Verdict)
			if q.RateSource != "config" || q.NominalRateHz != 50 {
				t.Errorf("rate %v from %q, want 50 from config", q.NominalRateHz, q.RateSource)
			}
			// Under load the clock estimator may hold a sample back as
			// suspect and stamp it at arrival (later than its device time by
			// the delay, beyond the stated bound): one such sample at each
			// edge may cross it.
			if int(q.Samples) < lo-2 || int(q.Samples) > hi+2 {
				t.Errorf("%d samples in the report, %d..%d published in the window (within the alignment bound)", q.Samples, lo, hi)
			}
			if d := float64(q.Expected) - slots; d < -1 || d > 1 {
				t.Errorf("expected %d, the window has %.1f slots", q.Expected, slots)
			}
			// Coverage exact to one sample: coverage x expected is the
			// sample count.
			if d := q.Coverage*float64(q.Expected) - float64(q.Samples); q.Samples > 0 && (d < -0.01 || d > 0.01) {
				t.Errorf("coverage %v of %d expected is %.2f samples, the report has %d", q.Coverage, q.Expected, q.Coverage*float64(q.Expected), q.Samples)
			}
			if !degradedFor(e, stream, c.reason) {
				t.Errorf("verdict %+v, want degraded: %s", e.Verdict, c.reason)
			}
			if len(q.GapList) != 1 {
				t.Fatalf("gaps %+v, want one", q.GapList)
			}
			g := q.GapList[0]
			if g.Cause != episode.CauseNoData {
				t.Errorf("cause %s, want no_data (the publisher stayed connected)", g.Cause)
			}
			// The gap runs from the last sample before the silence (one
			// period before it) or the window's start, to the first after
			// it or the window's end; the aligned times may be late by the
			// transport's smallest delay (well under a period here).
			wantFrom, wantTo := max(sFrom-period, from), min(sTo, to)
			if c.name == "whole" {
				wantFrom, wantTo = from, to
			}
			if abs64(g.From-wantFrom) > period || abs64(g.To-wantTo) > period {
				t.Errorf("gap [%v, %v], want [%v, %v] within one period", rel(g.From, t0), rel(g.To, t0), rel(wantFrom, t0), rel(wantTo, t0))
			}
		})
	}
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
