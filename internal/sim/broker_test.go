package sim

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/episoded/episoded/internal/testwait"
)

// slowTakeover makes mochi's session takeover slow: the first in-flight
// message it drops from the old connection (inheritClientSession clears
// the old client after copying its in-flight messages, before it
// registers the new client) starts a publish through Broker.Publish and
// then holds the takeover for hold, as a loaded machine does.
type slowTakeover struct {
	mqtt.HookBase
	b       *Broker
	hold    time.Duration
	once    sync.Once
	started chan struct{}
	done    chan error
}

func (h *slowTakeover) ID() string           { return "test-slow-takeover" }
func (h *slowTakeover) Provides(b byte) bool { return b == mqtt.OnQosDropped }
func (h *slowTakeover) OnQosDropped(*mqtt.Client, packets.Packet) {
	h.once.Do(func() {
		go func() {
			close(h.started)
			h.done <- h.b.Publish("t", []byte("during the takeover"), false, 1)
		}()
		<-h.started
		time.Sleep(h.hold) // pacing: the slow takeover is the input under test
	})
}

// TestPublishDuringSlowTakeover: a message published through the inline
// client while a reconnecting subscriber takes its session over reaches
// the new connection, however long the takeover takes. Before the fix the
// gate let publishes go after a fixed bound (5 s), and a takeover slower
// than that (a loaded machine) handed them to the old, dead connection:
// they were acknowledged to the publisher and never delivered (the
// 1,119 messages TestEmbeddedBrokerDaemonCrash lost under a CPU hog).
func TestPublishDuringSlowTakeover(t *testing.T) {
	defer func(d time.Duration) { takeoverGateCheck = d }(takeoverGateCheck)
	takeoverGateCheck = 20 * time.Millisecond
	b, err := NewMQTTBroker("127.0.0.1:0", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	slow := &slowTakeover{b: b, hold: 10 * takeoverGateCheck, started: make(chan struct{}), done: make(chan error, 1)}
	if err := b.AddHook(slow, nil); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var got []string
	connect := func() paho.Client {
		opts := paho.NewClientOptions().AddBroker("tcp://" + b.Addr()).SetClientID("takeover").
			SetCleanSession(false).SetAutoReconnect(false).SetAutoAckDisabled(true).
			SetConnectTimeout(10 * time.Second).
			SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
				mu.Lock()
				got = append(got, string(m.Payload()))
				mu.Unlock()
			})
		c := paho.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		return c
	}
	received := func(msg string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, g := range got {
				if g == msg {
					return true
				}
			}
			return false
		}
	}

	// The first connection receives a message and does not acknowledge
	// it: the session holds it in flight, so the takeover clears it from
	// the old client (the slow hook's cue).
	c1 := connect()
	if tok := c1.Subscribe("t", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	if err := b.Publish("t", []byte("before"), false, 1); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 10*time.Second, "the first message", received("before"))
	c1.Disconnect(0)

	c2 := connect() // takes the session over
	defer c2.Disconnect(0)
	select {
	case err := <-slow.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the publish during the takeover did not return")
	}
	testwait.For(t, 10*time.Second, "the message published during the takeover on the new connection", received("during the takeover"))
	testwait.For(t, 10*time.Second, "the unacknowledged message resent on the new connection", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, g := range got {
			if g == "before" {
				n++
			}
		}
		return n == 2
	})
}
