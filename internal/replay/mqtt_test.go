package replay

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/episoded/episoded/devices/mqtt"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/testwait"
	"github.com/episoded/episoded/sample"
)

type received struct {
	topic   string
	payload []byte
	at      time.Time
	qos     byte
}

// subscriber is an independent MQTT client (paho, its own connection)
// that records every message on filter.
type subscriber struct {
	mu   sync.Mutex
	msgs []received
}

func subscribe(t testing.TB, url, filter string) *subscriber {
	t.Helper()
	s := &subscriber{}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("replay-test-sub-%d", time.Now().UnixNano())).
		SetCleanSession(true).SetOrderMatters(true).SetAutoReconnect(false)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		now := time.Now()
		s.mu.Lock()
		s.msgs = append(s.msgs, received{topic: m.Topic(), payload: m.Payload(), at: now, qos: m.Qos()})
		s.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return s
}

// barrierTopic carries the marker waitAfter publishes after a replay.
const barrierTopic = "episoded-test/barrier"

// waitAfter publishes a marker with pub (after the replay, on the same
// connection) and returns what the subscriber received before it, failing
// the test if the marker does not arrive within timeout. The broker
// delivers one client's QoS 1 messages in the order it received them (the
// tests assert that order across topics too), so once the marker is in,
// every message of the replay is, a duplicate or an extra included:
// nothing has to be waited for on the wall clock to show that no more
// comes.
func (s *subscriber) waitAfter(t testing.TB, pub *mqtt.Publisher, timeout time.Duration) []received {
	t.Helper()
	acked := make(chan error, 1)
	if err := pub.Publish(barrierTopic, 1, []byte("barrier"), func(err error) { acked <- err }); err != nil {
		t.Fatalf("publish the barrier: %v", err)
	}
	if err := <-acked; err != nil {
		t.Fatalf("barrier not acknowledged: %v", err)
	}
	var before []received
	testwait.For(t, timeout, "the barrier message at the subscriber", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		i := slices.IndexFunc(s.msgs, func(m received) bool { return m.topic == barrierTopic })
		if i < 0 {
			return false
		}
		before = slices.Clone(s.msgs[:i])
		return true
	})
	return before
}

func connectPublisher(t testing.TB, url string) *mqtt.Publisher {
	t.Helper()
	pub, err := mqtt.NewPublisher(mqtt.PublisherOptions{URL: url, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close(5 * time.Second) })
	return pub
}

// mqttWanted lists the messages a replay of te must publish, in send order
// (the store's merge order: T, stream, seq).
func mqttWanted(te *testEpisode, prefix string) []received {
	topics := map[string]string{sJoints: topicJoints, sLidar: topicLidar, sDoor: sDoor}
	type ts struct {
		s     sample.Sample
		topic string
	}
	var all []ts
	for stream, topic := range topics {
		for _, s := range te.samples[stream] {
			all = append(all, ts{s, prefix + topic})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i].s, all[j].s
		if a.T != b.T {
			return a.T < b.T
		}
		return a.Stream < b.Stream
	})
	out := make([]received, len(all))
	for i, x := range all {
		out[i] = received{topic: x.topic, payload: x.s.Payload, at: time.Unix(0, x.s.T)}
	}
	return out
}

// quantiles returns p50, p99 and max of ds.
func quantiles(ds []time.Duration) (p50, p99, mx time.Duration) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return at(0.5), at(0.99), s[len(s)-1]
}

// Replay to a real mosquitto: an independent subscriber receives every
// telemetry, CBOR and lidar message, in order, with identical payloads, on
// the original topics. The timing error is reported (the ≤ 5 ms goal is
// measured by BenchmarkReplayTiming, not asserted here).
func TestReplayMQTT(t *testing.T) {
	url := startMosquitto(t)
	st := openStore(t)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	te := buildEpisode(t, st, epID, t0, 3*time.Second, episode.Closed)
	for _, prefix := range []string{"", "replay/"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			sub := subscribe(t, url, "#")
			pub := connectPublisher(t, url)
			p, err := New(Options{MQTT: pub, TopicPrefix: prefix, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			sum, err := p.Run(context.Background(), StoreOpener(st, epID, Selection{}))
			if err != nil {
				t.Fatal(err)
			}
			want := mqttWanted(te, prefix)
			got := sub.waitAfter(t, pub, 10*time.Second)
			if len(got) != len(want) {
				t.Fatalf("subscriber got %d messages, want %d", len(got), len(want))
			}
			var arrival []time.Duration
			for i := range want {
				if got[i].topic != want[i].topic || !bytes.Equal(got[i].payload, want[i].payload) {
					t.Fatalf("message %d: %s (%d bytes), want %s (%d bytes)", i, got[i].topic, len(got[i].payload), want[i].topic, len(want[i].payload))
				}
				if got[i].qos != 1 {
					t.Fatalf("message %d delivered at QoS %d", i, got[i].qos)
				}
				intended := sum.Started.Add(time.Duration(want[i].at.UnixNano() - t0))
				arrival = append(arrival, got[i].at.Sub(intended))
			}
			for _, ss := range sum.Streams {
				if ss.Sink == SinkMQTT && (ss.Sent != uint64(len(te.samples[ss.Stream])) || ss.Acked != ss.Sent) {
					t.Errorf("%s: sent %d acked %d, want %d", ss.Stream, ss.Sent, ss.Acked, len(te.samples[ss.Stream]))
				}
				if ss.Stream == sCam && ss.Sink != "" {
					t.Errorf("camera went to %q without a video server", ss.Sink)
				}
			}
			var buf bytes.Buffer
			sum.WriteText(&buf)
			t.Logf("summary:\n%s", buf.String())
			mqttT := sum.Timing[0]
			if mqttT.Sink != SinkMQTT || mqttT.N != uint64(len(want)) {
				t.Errorf("timing %+v, want %d mqtt samples", sum.Timing, len(want))
			}
			a50, a99, amax := quantiles(arrival)
			t.Logf("send timing error p50 %.3f ms, p99 %.3f ms, max %.3f ms; arrival at the subscriber p50 %s p99 %s max %s",
				mqttT.P50, mqttT.P99, mqttT.Max, a50, a99, amax)
		})
	}
}

// An unreachable broker is a clear error from Connect.
func TestPublisherUnreachable(t *testing.T) {
	port := freePort(t) // nothing listens there
	pub, err := mqtt.NewPublisher(mqtt.PublisherOptions{URL: fmt.Sprintf("tcp://u:s3cret@127.0.0.1:%d", port), ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = pub.Connect(context.Background())
	if err == nil {
		t.Fatal("connected to nothing")
	}
	msg := err.Error()
	if !bytes.Contains([]byte(msg), []byte("connect to MQTT broker tcp://127.0.0.1:")) || bytes.Contains([]byte(msg), []byte("s3cret")) {
		t.Errorf("error %q: want the redacted broker URL and no password", msg)
	}
}
