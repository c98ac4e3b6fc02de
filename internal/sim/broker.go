package sim

import (
	"fmt"
	"log/slog"
	"math"
	"sync"
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
	// takeoverGateMax bounds how long a connecting session can hold
	// publishes back, should mochi never encode its CONNACK.
	takeoverGateMax = 5 * time.Second
)

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
	gate := &takeoverGate{}
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
	mu  struct {
		sync.Mutex
		holder *mqtt.Client
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
	g.mu.timer = time.AfterFunc(takeoverGateMax, func() { g.release(cl) })
	g.mu.Unlock()
}

func (g *takeoverGate) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack {
		g.release(cl)
	}
	return pk
}

func (g *takeoverGate) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { g.release(cl) }

// release opens the gate if cl holds it; it is idempotent.
func (g *takeoverGate) release(cl *mqtt.Client) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.holder != cl {
		return
	}
	g.mu.holder = nil
	g.mu.timer.Stop()
	g.pub.Unlock()
}
