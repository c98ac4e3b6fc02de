package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/episoded/episoded/internal/procstat"
)

// TestTopicFlood is issue 14's flood: 20,000 distinct topics, as fast as a
// paho publisher can send them through a real mosquitto, on a device whose
// filter is a wildcard and whose stream template is {topic}. The daemon is
// the built binary in its own process, so the memory figure is the
// daemon's alone: its peak resident set (VmHWM in /proc/PID/status, which
// the kernel keeps, so no peak between two polls is missed) must stay
// under 150 MB. Meanwhile /v1/status keeps answering. At the end the
// default max_streams (256) streams exist, every other message was
// refused and counted in episoded_mqtt_rejected_total{reason="max_streams"}
// (all were acknowledged, so mosquitto holds nothing for the daemon), and
// the status payload stays small.
func TestTopicFlood(t *testing.T) {
	const (
		topics  = 20000
		maxRSS  = 150 << 20
		streams = 256 // config.DefaultMaxStreams
	)
	// mosquitto must neither drop for the daemon (max_queued_messages 0)
	// nor throttle it to 20 messages in flight.
	broker := startBrokerConf(t, "max_queued_messages 0\nmax_inflight_messages 1000\n")
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeFile(t, filepath.Join(dir, "episoded.yaml"), fmt.Sprintf(`
gateway: {id: gw-flood, site: lab}
api: {listen: "%s"}
storage: {dir: "%s"}
brokers:
  - {id: b1, url: "%s"}
devices:
  - {id: flood, type: mqtt, broker: b1, topics: ["flood/#"], format: raw}
`, addr, filepath.Join(dir, "data"), broker))
	cmd := exec.Command(bin, "run", "--config", cfg)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	base := "http://" + addr
	waitUntil(t, 30*time.Second, "the daemon connected to mosquitto", func() bool {
		return metric(base, `episoded_mqtt_connected{broker="b1"}`) == 1
	}, stderr)
	before := peakRSS(t, cmd.Process.Pid)

	pub := paho.NewClient(paho.NewClientOptions().AddBroker(broker).SetClientID("flood-publisher").SetCleanSession(true))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	start := time.Now()
	var toks []paho.Token
	for i := range topics {
		toks = append(toks, pub.Publish(fmt.Sprintf("flood/dev%05d/state", i), 1, false, []byte(`{"v":1}`)))
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: not acknowledged by mosquitto: %v", i, tok.Error())
		}
	}
	t.Logf("published %d topics in %s", topics, time.Since(start).Round(time.Millisecond))

	// The daemon stays responsive while it works through the flood.
	status := func() map[string]json.RawMessage {
		t.Helper()
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(base + "/v1/status")
		if err != nil {
			t.Fatalf("/v1/status did not answer: %v", err)
		}
		defer resp.Body.Close()
		var m map[string]json.RawMessage
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&m) != nil {
			t.Fatalf("/v1/status: %s", resp.Status)
		}
		return m
	}
	waitUntil(t, 60*time.Second, "every message stored or refused", func() bool {
		status()
		return metric(base, `episoded_mqtt_rejected_total{broker="b1",device="flood",reason="max_streams"}`) == topics-streams &&
			metric(base, `episoded_mqtt_acks_pending{broker="b1"}`) == 0
	}, stderr)
	t.Logf("refusals counted after %s", time.Since(start).Round(time.Millisecond))

	if n := metric(base, `episoded_mqtt_device_streams{broker="b1",device="flood"}`); n != streams {
		t.Errorf("device_streams = %v, want %d", n, streams)
	}
	if n := metric(base, `episoded_mqtt_messages_total{broker="b1",device="flood"}`); n != topics {
		t.Errorf("messages_total = %v, want %d", n, topics)
	}
	st := status()
	var total int
	var truncated bool
	_ = json.Unmarshal(st["streams_total"], &total)
	_ = json.Unmarshal(st["streams_truncated"], &truncated)
	if total != streams || truncated {
		t.Errorf("status streams_total %d truncated %v, want %d false", total, truncated, streams)
	}
	resp, err := http.Get(base + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	resp.Body.Close()
	peak := peakRSS(t, cmd.Process.Pid)
	t.Logf("daemon peak RSS %.1f MB (%.1f MB before the flood), /v1/status %d bytes", float64(peak)/(1<<20), float64(before)/(1<<20), body.Len())
	if peak > maxRSS {
		t.Errorf("daemon peak RSS %.1f MB, want under %d MB", float64(peak)/(1<<20), maxRSS>>20)
	}
	if body.Len() > 1<<20 {
		t.Errorf("/v1/status is %d bytes", body.Len())
	}
}

// peakRSS returns the peak resident set size of process pid (VmHWM) in bytes.
func peakRSS(t testing.TB, pid int) int64 {
	t.Helper()
	kb, err := procstat.StatusKB(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	return kb << 10
}

// metric returns the value of the Prometheus sample named exactly by
// series (name and labels, in the order the exposition prints them), or
// -1 if absent.
func metric(base, series string) float64 { return metrics(base, series)[0] }

// metrics reads several series from one /metrics scrape; -1 for each
// one not found (or if the scrape failed).
func metrics(base string, series ...string) []float64 {
	out := make([]float64, len(series))
	for i := range out {
		out[i] = -1
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		for i, name := range series {
			if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
				if f, err := strconv.ParseFloat(v, 64); err == nil {
					out[i] = f
				}
			}
		}
	}
	return out
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
