package sim

import (
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Limits of the embedded broker (see the package doc, "The embedded broker
// under SIGKILL").
const (
	// brokerMaxInflight is how many unacknowledged QoS 1 messages the
	// broker holds per session (mochi's default is 8,192: 30 s of the
	// simulated cell while its recorder is down). 65,535 is the MQTT
	// packet-id space, the most one session can have in flight.
	brokerMaxInflight = math.MaxUint16
	// brokerWritesPending bounds a client's outbound queue; mochi drops a
	// QoS 1 message that finds it full (default 8,192).
	brokerWritesPending = 1 << 16
)

// takeoverGateCheck is how often a connecting session that holds publishes
// back checks whether it can let them go without its CONNACK (mochi
// skips encoding it when the new connection closed first): once the new
// client is registered under its id, a publish reaches it, not the old
// connection. A variable so that a test can shorten it.
var takeoverGateCheck = 5 * time.Second

// Broker is the embedded MQTT broker (mochi-mqtt) of `demo` and
// `simulate`. Publish is the inline client's publish, made safe against
// the session-takeover race described in the package doc; use it rather
// than the embedded Server's InjectPacket.
type Broker struct {
	*mqtt.Server
	gate *takeoverGate
	addr string
}

// NewMQTTBroker starts the embedded MQTT broker listening on addr (port 0
// picks a free port). Every client may connect and use every topic. Close
// it with Close.
func NewMQTTBroker(addr string, log *slog.Logger) (*Broker, error) {
	mlog := slog.New(minLevel{h: log.Handler(), min: slog.LevelWarn})
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumInflight = brokerMaxInflight
	caps.MaximumClientWritesPending = brokerWritesPending
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: mlog, Capabilities: caps})
	if err := srv.AddHook(new(allowHook), nil); err != nil {
		return nil, fmt.Errorf("mqtt auth hook: %w", err)
	}
	gate := &takeoverGate{srv: srv}
	if err := srv.AddHook(gate, nil); err != nil {
		return nil, fmt.Errorf("mqtt takeover hook: %w", err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "sim", Address: addr})
	if err := srv.AddListener(l); err != nil {
		return nil, fmt.Errorf("listen mqtt %s: %w", addr, err)
	}
	if err := srv.Serve(); err != nil {
		srv.Close()
		return nil, fmt.Errorf("serve mqtt: %w", err)
	}
	return &Broker{Server: srv, gate: gate, addr: l.Address()}, nil
}

// GateTimeouts returns how many session takeovers were released without
// their CONNACK (the new connection closed first), once registered.
func (b *Broker) GateTimeouts() int64 { return b.gate.timeouts.Load() }

// MaxTakeover returns the longest time a connecting session held
// publishes back (from OnSessionEstablish to its release).
func (b *Broker) MaxTakeover() time.Duration { return time.Duration(b.gate.maxHold.Load()) }

// Addr is the bound listen address (host:port).
func (b *Broker) Addr() string { return b.addr }

// Publish publishes payload on topic through the inline client. It never
// runs while a reconnecting client takes its session over, so the message
// reaches the session the broker keeps, not the connection being replaced.
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	b.gate.pub.RLock()
	defer b.gate.pub.RUnlock()
	return b.Server.Publish(topic, payload, retain, qos)
}

// takeoverGate holds inline publishes back while a client connects: from
// OnSessionEstablish (before mochi hands the old connection's in-flight
// messages to the new one) until the CONNACK is encoded (after the new
// connection is registered under the client id). See the package doc.
type takeoverGate struct {
	mqtt.HookBase
	// pub is held shared by each inline publish and exclusively by a
	// connecting client.
	pub sync.RWMutex
	srv *mqtt.Server
	// timeouts counts releases by expire rather than by the CONNACK or
	// the connection's end.
	timeouts atomic.Int64
	maxHold  atomic.Int64 // longest hold so far, ns
	mu       struct {
		sync.Mutex
		holder *mqtt.Client
		since  time.Time
		timer  *time.Timer
	}
}

func (g *takeoverGate) ID() string { return "sim-takeover-gate" }

func (g *takeoverGate) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish || b == mqtt.OnPacketEncode || b == mqtt.OnDisconnect
}

func (g *takeoverGate) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	g.pub.Lock() // waits for publishes in progress
	g.mu.Lock()
	g.mu.holder = cl
	g.mu.since = time.Now()
	g.mu.timer = time.AfterFunc(takeoverGateCheck, func() { g.expire(cl) })
	g.mu.Unlock()
}

// expire runs takeoverGateCheck after cl took the gate, if no CONNACK
// released it: it lets publishes go once cl is registered under its id
// (the takeover done), and otherwise checks again later. Releasing on the
// clock alone let publishes into the old connection of a takeover that a
// loaded machine made slower than the bound: the lost messages of
// TestEmbeddedBrokerDaemonCrash under a CPU hog (see the package doc).
func (g *takeoverGate) expire(cl *mqtt.Client) {
	if cur, ok := g.srv.Clients.Get(cl.ID); ok && cur == cl {
		if g.release(cl) {
			g.timeouts.Add(1)
		}
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.holder == cl {
		g.mu.timer = time.AfterFunc(takeoverGateCheck, func() { g.expire(cl) })
	}
}

func (g *takeoverGate) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack {
		g.release(cl)
	}
	return pk
}

func (g *takeoverGate) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { g.release(cl) }

// release opens the gate if cl holds it, and says whether it did; it is
// idempotent.
func (g *takeoverGate) release(cl *mqtt.Client) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.holder != cl {
		return false
	}
	g.mu.holder = nil
	g.mu.timer.Stop()
	if d := int64(time.Since(g.mu.since)); d > g.maxHold.Load() {
		g.maxHold.Store(d) // under g.mu
	}
	g.pub.Unlock()
	return true
}
