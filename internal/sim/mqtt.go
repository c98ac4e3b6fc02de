package sim

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// payloadFunc builds sample k's payload: D is its device time (the stamp
// it carries), t its true capture time, since the device's first sample
// at device time d0.
type payloadFunc func(k, D, d0 int64) []byte

// publisher is one MQTT device stream: it samples every period of its own
// clock and publishes through the broker's inline client. run is its only
// goroutine.
type publisher struct {
	s       *Sim
	device  string
	stream  string
	topic   string
	clock   Clock
	period  int64
	payload payloadFunc
	delay   *rand.Rand // run goroutine only

	// set by start, read-only afterwards
	clk deviceClock
	d0  int64

	generated atomic.Int64 // samples captured so far
	sent      atomic.Uint64
	failed    atomic.Uint64
}

func newPublisher(s *Sim, device, stream, topic string, rate int, payload payloadFunc) *publisher {
	return &publisher{
		s: s, device: device, stream: stream, topic: topic,
		clock:   s.o.clockFor(device),
		period:  int64(time.Second) / int64(rate),
		payload: payload,
		delay:   s.o.newRand("delay", device),
	}
}

func (p *publisher) start() {
	p.clk = newDeviceClock(p.clock, p.s.t0)
	p.d0 = p.clk.at(p.s.t0)
}

func (p *publisher) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	qos := *p.s.o.QoS
	var lastSend int64
	for k := int64(0); ; k++ {
		D := p.d0 + k*p.period
		t := p.clk.inv(D)
		send := t
		if p.s.o.Jitter > 0 {
			send += int64(p.delay.ExpFloat64() * float64(p.s.o.Jitter))
		}
		send = max(send, lastSend)
		lastSend = send
		if !sleepUntil(ctx, timer, send) {
			return
		}
		body := p.payload(k, D, p.d0)
		p.generated.Store(k + 1)
		if err := p.s.broker.Publish(p.topic, body, false, qos); err != nil {
			p.failed.Add(1)
			continue
		}
		p.sent.Add(1)
	}
}

func (p *publisher) truth(D int64) (int64, bool) {
	x := D - p.d0
	if D < p.d0 || x%p.period != 0 || x/p.period >= p.generated.Load() {
		return 0, false
	}
	return p.clk.inv(D), true
}

func (p *publisher) stats() StreamStats {
	return StreamStats{Stream: p.stream, Device: p.device, Sent: p.sent.Load(), Failed: p.failed.Load()}
}

// Trigger messages, exactly as published.
const (
	TriggerStart = `{"action":"start","task":"pick-and-place","operator":"sim","robot":"robot1","labels":{"sim":"true"}}`
	TriggerStop  = `{"action":"stop"}`
)

// TriggerEvent is one trigger message the simulator published.
type TriggerEvent struct {
	Action string `json:"action"` // "start" or "stop"
	// T is when the message was due (ns since the Unix epoch, true time):
	// t0 + first + n·period, plus the on time for a stop.
	T int64 `json:"t"`
	// SentT is when the broker had taken it (ns since the Unix epoch).
	SentT int64 `json:"sent_t"`
}

// trigger publishes the episode start/stop cycle, TriggerCount times if
// that is positive.
type trigger struct {
	s      *Sim
	sent   atomic.Uint64
	failed atomic.Uint64
	mu     struct {
		sync.Mutex
		events ring[TriggerEvent]
	}
}

func (g *trigger) run(ctx context.Context) {
	o := g.s.o
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for n := int64(0); o.TriggerCount <= 0 || n < int64(o.TriggerCount); n++ {
		start := g.s.t0 + int64(o.TriggerFirst) + n*int64(o.TriggerPeriod)
		for _, ev := range []struct {
			at     int64
			action string
			body   string
		}{{start, "start", TriggerStart}, {start + int64(o.TriggerOn), "stop", TriggerStop}} {
			if !sleepUntil(ctx, timer, ev.at) {
				return
			}
			if err := g.s.broker.Publish(TopicTrigger, []byte(ev.body), false, *o.QoS); err != nil {
				g.failed.Add(1)
				continue
			}
			g.sent.Add(1)
			g.mu.Lock()
			g.mu.events.add(TriggerEvent{Action: ev.action, T: ev.at, SentT: time.Now().UnixNano()}, 1024)
			g.mu.Unlock()
			g.s.log.Info("episode trigger", "action", ev.action)
		}
	}
}

func (g *trigger) truth(int64) (int64, bool) { return 0, false }

func (g *trigger) stats() StreamStats {
	return StreamStats{Stream: TopicTrigger, Sent: g.sent.Load(), Failed: g.failed.Load()}
}

// Triggers returns the trigger messages published so far (the last 1024),
// oldest first: the ground truth of episode boundaries.
func (s *Sim) Triggers() []TriggerEvent {
	s.trig.mu.Lock()
	defer s.trig.mu.Unlock()
	return s.trig.mu.events.list()
}
