package mqtt

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMatchFilter(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a/", true},
		{"a/+/c", "a/b/c", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"+", "a", true},
		{"+", "a/b", false},
		{"+/+", "/a", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/+/#", "a", false},
		{"a/b/c", "a/b", false},
	} {
		if got := matchFilter(tc.filter, tc.topic); got != tc.want {
			t.Errorf("matchFilter(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestValidFilter(t *testing.T) {
	for f, want := range map[string]bool{
		"a/b": true, "a/+/c": true, "#": true, "a/#": true, "+": true,
		"": false, "a/#/b": false, "a#": false, "a/b+": false, "a\x00b": false,
	} {
		if got := validFilter(f); got != want {
			t.Errorf("validFilter(%q) = %v, want %v", f, got, want)
		}
	}
}

func TestTemplate(t *testing.T) {
	for _, tc := range []struct {
		tmpl, topic, want string
	}{
		{"{topic}", "cell1/robot1/joints", "cell1/robot1/joints"},
		{"{1}/{2}", "cell1/robot1/joints", "cell1/robot1"},
		{"cell1/{2}/{3}", "factory/robot1/joints", "cell1/robot1/joints"},
		{"x/{topic}", "a/b", "x/a/b"},
		{"fixed", "a/b", "fixed"},
		{"{5}", "a/b", "a/b"}, // empty expansion falls back to the topic
		{"{1}-{4}", "a/b", "a-"},
	} {
		tp, err := parseTemplate(tc.tmpl)
		if err != nil {
			t.Fatalf("parseTemplate(%q): %v", tc.tmpl, err)
		}
		if got := tp.expand(tc.topic); got != tc.want {
			t.Errorf("%q.expand(%q) = %q, want %q", tc.tmpl, tc.topic, got, tc.want)
		}
	}
	for _, bad := range []string{"", "{", "}", "{0}", "{x}", "a{1", "{-1}"} {
		if _, err := parseTemplate(bad); err == nil {
			t.Errorf("parseTemplate(%q): no error", bad)
		}
	}
}

// TestMaxStreams: a {topic} device on a wildcard filter creates at most
// MaxStreams streams; messages on further topics (published by
// mosquitto_pub, through a real mosquitto) are refused, counted and
// acknowledged, and the streams already created keep recording.
func TestMaxStreams(t *testing.T) {
	m := startMosquitto(t, mosqConfig{inflight: 100})
	reg := prometheus.NewRegistry()
	b, lb := newTestClient(t, m.url(), "episoded-maxstreams", func(o *ClientOptions) { o.Registerer = reg },
		DeviceOptions{Device: "fleet", Topics: []string{"fleet/+/state"}, Format: FormatRaw, MaxStreams: 3})
	sink := startSink(t, newMemSink(20*time.Millisecond))
	runConnected(t, b, sink)
	for i := range 10 {
		if err := m.pubLines(fmt.Sprintf("fleet/r%d/state", i), []string{"a"}); err != nil {
			t.Fatal(err)
		}
	}
	// An allowed topic keeps recording after the limit was reached.
	if err := m.pubLines("fleet/r0/state", []string{"b"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every message stored or refused", func() bool {
		d := b.Stats().Devices["fleet"]
		return d.Messages == 11 && b.Stats().AcksPending == 0 && sink.count() == 4
	})
	d := b.Stats().Devices["fleet"]
	if d.Streams != 3 || d.RejectedMaxStreams != 7 {
		t.Fatalf("streams %d, rejected %d; want 3 and 7", d.Streams, d.RejectedMaxStreams)
	}
	_, descs := sink.snapshot()
	for _, want := range []string{"fleet/r0/state", "fleet/r1/state", "fleet/r2/state"} {
		if _, ok := descs[want]; !ok || len(descs) != 3 {
			t.Fatalf("streams %v; want the first three topics", descs)
		}
	}
	if v := metricValue(t, reg, "episoded_mqtt_rejected_total"); v != 7 {
		t.Fatalf("episoded_mqtt_rejected_total = %v", v)
	}
	if !strings.Contains(lb.String(), "max_streams") {
		t.Fatalf("no log line names max_streams:\n%s", lb.String())
	}
}
