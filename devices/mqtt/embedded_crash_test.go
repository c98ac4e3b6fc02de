package mqtt

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/episoded/episoded/internal/sim"
)

// inlinePublisher publishes JSON telemetry lines through the embedded
// broker's inline client at QoS 1, as the simulator does: a message counts
// as published (acknowledged to the publisher) when Publish returned nil.
//
// It pauses while its backlog (published, minus acked() acknowledged by
// the daemon) is over maxBacklog: a fixed rate against a daemon that a loaded
// machine slows down below it makes every restart resend more than the
// last, until no daemon gets through its resend (a test artefact: a real
// cell's backlog is bounded by the outage, not by the test's clock).
type inlinePublisher struct {
	sent     atomic.Int64
	perTopic map[string]*atomic.Int64 // messages published per topic (seq 0..n-1)
	failed   atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup
}

func startInlinePublisher(b *sim.Broker, topics []string, perSecond int, acked func() int64, maxBacklog int64) *inlinePublisher {
	p := &inlinePublisher{stop: make(chan struct{}), perTopic: map[string]*atomic.Int64{}}
	per := perSecond / len(topics)
	for _, topic := range topics {
		p.perTopic[topic] = new(atomic.Int64)
	}
	for _, topic := range topics {
		p.wg.Go(func() {
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			last := time.Now()
			var active time.Duration // publishing time, pauses excluded
			seq := 0
			for {
				select {
				case <-p.stop:
					return
				case now := <-tick.C:
					if p.sent.Load()-acked() > maxBacklog {
						last = now
						continue
					}
					active += now.Sub(last)
					last = now
					due := int(active.Seconds() * float64(per))
					for ; seq < due; seq++ {
						if err := b.Publish(topic, []byte(telemLine(topic, seq, time.Now().UnixNano())), false, 1); err != nil {
							p.failed.Add(1)
							seq-- // publish the same seq again: the check expects 0..n-1
							break
						}
						p.sent.Add(1)
						p.perTopic[topic].Add(1)
					}
				}
			}
		})
	}
	return p
}

// published returns the number of messages published per topic.
func (p *inlinePublisher) published() map[string]int {
	return loadCounts(p.perTopic)
}

func (p *inlinePublisher) finish() {
	close(p.stop)
	p.wg.Wait()
}

// killLoops is the number of SIGKILLs of TestEmbeddedBrokerDaemonCrash
// and the time they may take: 50, or as many as fit in 5 minutes but at
// least 10 (a loaded machine starts each daemon slowly: about 20 s a kill
// with two busy loops beside make test). EPISODED_KILL_LOOPS sets an exact
// number for longer soaks, with no time limit.
func killLoops(t *testing.T) (n, atLeast int, budget time.Duration) {
	if v := os.Getenv("EPISODED_KILL_LOOPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("EPISODED_KILL_LOOPS=%q: want a positive number", v)
		}
		return n, n, 0
	}
	return 50, 10, 5 * time.Minute
}

// TestEmbeddedBrokerDaemonCrash is issue 13's kill loop with the embedded
// broker of `demo` and `simulate` (sim.NewMQTTBroker, mochi-mqtt, in this
// process like `simulate` runs it apart from the daemon): the daemon (a
// child process running a Client and a real storage.Store) is SIGKILLed 50
// times (fewer on a loaded machine, see killLoops) at random points while
// the simulator's inline client publishes 400 QoS 1 msg/s on 4 topics, and
// restarted each time. Every message
// the broker accepted ends up stored; duplicates are counted. See the
// package doc ("The embedded broker under SIGKILL") for the root cause of
// the loss this test catches.
func TestEmbeddedBrokerDaemonCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("kill loop with a real store in a child process; skipped under -short")
	}
	log, _ := newTestLogger()
	b, err := sim.NewMQTTBroker("127.0.0.1:0", log.With("component", "sim.mqtt"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	hist := newHistoryHook("episoded-crash")
	if err := b.AddHook(hist, nil); err != nil {
		t.Fatal(err)
	}
	url := "tcp://" + b.Addr()
	dir := t.TempDir()
	topics := []string{"crash/0", "crash/1", "crash/2", "crash/3"}

	c := startChild(t, url, dir)
	pub := startInlinePublisher(b, topics, 400, hist.acked.Load, 4000)
	maxKills, minKills, budget := killLoops(t)
	rnd := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	kills := 0
	for i := range maxKills {
		if i >= minKills && budget > 0 && time.Since(start) > budget {
			t.Logf("%d kills in %s: stopping at the time budget", i, time.Since(start).Round(time.Second))
			break
		}
		kills++
		// Each daemon first catches up with the broker's resend (something
		// durable, its queue drained): the publisher does not slow down for
		// a daemon that is down or starting, so on a loaded machine lives
		// cut short by the clock let the backlog grow until no daemon can
		// start. Progress, not the wall clock, decides when that is.
		waitFor(t, 60*time.Second, fmt.Sprintf("daemon %d to catch up", i+1), func() bool {
			st := c.parsedStats()
			return st["durable"] > 0 && st["queued"] == 0
		}, c.stats)
		// Then kill at a random point: while receiving, while committing,
		// or right after the resent backlog arrived. The delay is pacing,
		// not a wait for anything.
		time.Sleep(time.Duration(150+rnd.IntN(450)) * time.Millisecond)
		before := c.stats()
		c.kill()
		if i%10 == 9 {
			t.Logf("kill %d (%s): sent %d, child %s", i+1, time.Since(start).Round(time.Second), pub.sent.Load(), before)
		}
		time.Sleep(time.Duration(rnd.IntN(300)) * time.Millisecond) // down (pacing): the broker holds the session
		c = startChild(t, url, dir)
	}
	time.Sleep(500 * time.Millisecond) // pacing: the last daemon receives live traffic before the publisher stops
	pub.finish()
	if n := pub.failed.Load(); n > 0 {
		t.Logf("%d publishes refused by the broker (retried)", n)
	}
	info := b.Info.Clone()
	t.Logf("broker: inflight dropped %d, messages dropped %d, takeover gate: released without CONNACK %d, longest hold %s", info.InflightDropped, info.MessagesDropped, b.GateTimeouts(), b.MaxTakeover())
	verifyAfterCrashes(t, c, dir, pub.published(), kills, hist.explain)
	if info.InflightDropped+info.MessagesDropped > 0 {
		t.Errorf("the embedded broker dropped messages: %s", fmt.Sprint(info.InflightDropped, " inflight, ", info.MessagesDropped, " pending writes"))
	}
}

// historyHook records what the embedded broker did with each message for
// one client (sent, resent, acknowledged, dropped), so that a failure says
// where a missing message went. It is how the takeover race was found.
//
// Each connection of the client gets a number (#n, in order of
// OnSessionEstablish), packet ids are resolved per connection (ids are
// reused across connections and after acknowledgement, so a global map
// could attribute an ack to the wrong message), and every event carries a
// global order number, so that a message's events can be placed against
// its connection's establishment, takeover and end.
type historyHook struct {
	mochi.HookBase
	client string
	acked  atomic.Int64 // PUBACKs from the client
	mu     sync.Mutex
	order  int
	conns  map[*mochi.Client]*connHistory
	events map[string][]string // "topic/seq" -> events
}

type connHistory struct {
	n      int
	byID   map[uint16]string // packet id -> message key, while in flight on this connection
	events []string          // establishment, end
}

func newHistoryHook(client string) *historyHook {
	return &historyHook{client: client, conns: map[*mochi.Client]*connHistory{}, events: map[string][]string{}}
}

func (h *historyHook) ID() string { return "test-history" }

func (h *historyHook) Provides(b byte) bool {
	switch b {
	case mochi.OnQosPublish, mochi.OnQosComplete, mochi.OnQosDropped, mochi.OnPublishDropped,
		mochi.OnSessionEstablish, mochi.OnSessionEstablished, mochi.OnDisconnect:
		return true
	}
	return false
}

func msgKey(pk packets.Packet) string {
	var m telem
	_ = json.Unmarshal(pk.Payload, &m)
	return fmt.Sprintf("%s/%d", m.Topic, m.Header.Seq)
}

// conn returns cl's history; h.mu is held.
func (h *historyHook) conn(cl *mochi.Client) *connHistory {
	c := h.conns[cl]
	if c == nil {
		c = &connHistory{n: len(h.conns) + 1, byID: map[uint16]string{}}
		h.conns[cl] = c
	}
	return c
}

// connEvent records an event of cl's connection; h.mu is held.
func (h *historyHook) connEvent(cl *mochi.Client, ev string) {
	h.order++
	c := h.conn(cl)
	c.events = append(c.events, fmt.Sprintf("@%d %s", h.order, ev))
}

// msgEvent records an event of message k on cl's connection; h.mu is held.
func (h *historyHook) msgEvent(cl *mochi.Client, k, ev string) {
	h.order++
	h.events[k] = append(h.events[k], fmt.Sprintf("@%d %s on #%d", h.order, ev, h.conn(cl).n))
}

func (h *historyHook) OnSessionEstablish(cl *mochi.Client, _ packets.Packet) {
	if cl.ID != h.client {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.connEvent(cl, "establishing")
}

func (h *historyHook) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	if cl.ID != h.client {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.connEvent(cl, fmt.Sprintf("established, %d in flight after the resend", cl.State.Inflight.Len()))
}

func (h *historyHook) OnDisconnect(cl *mochi.Client, err error, expire bool) {
	if cl.ID != h.client {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.connEvent(cl, fmt.Sprintf("disconnected (%v, expire %v, taken over %v, %d in flight)", err, expire, cl.IsTakenOver(), cl.State.Inflight.Len()))
}

func (h *historyHook) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	if cl.ID != h.client || pk.FixedHeader.Type != packets.Publish {
		return
	}
	k := msgKey(pk)
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.conn(cl)
	c.byID[pk.PacketID] = k
	h.msgEvent(cl, k, fmt.Sprintf("sent id=%d dup=%v (taken over %v, closed %v)", pk.PacketID, pk.FixedHeader.Dup, cl.IsTakenOver(), cl.Closed()))
}

func (h *historyHook) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	if cl.ID != h.client {
		return
	}
	h.acked.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.conn(cl)
	k, ok := c.byID[pk.PacketID]
	if !ok {
		k = "unknown"
	}
	delete(c.byID, pk.PacketID)
	h.msgEvent(cl, k, fmt.Sprintf("acknowledged id=%d", pk.PacketID))
}

func (h *historyHook) OnQosDropped(cl *mochi.Client, pk packets.Packet) {
	if cl.ID != h.client {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.conn(cl)
	k, ok := c.byID[pk.PacketID]
	if pk.FixedHeader.Type == packets.Publish {
		k, ok = msgKey(pk), true
	}
	if !ok {
		k = "unknown"
	}
	delete(c.byID, pk.PacketID)
	h.msgEvent(cl, k, fmt.Sprintf("dropped from in-flight id=%d type=%d", pk.PacketID, pk.FixedHeader.Type))
}

func (h *historyHook) OnPublishDropped(cl *mochi.Client, pk packets.Packet) {
	if cl.ID != h.client {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgEvent(cl, msgKey(pk), "dropped: outbound queue full")
}

// explain returns the message's events and the life of every connection
// they name.
func (h *historyHook) explain(topic string, seq int) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	evs := h.events[fmt.Sprintf("%s/%d", topic, seq)]
	var b strings.Builder
	fmt.Fprintf(&b, "(broker history: %v", evs)
	seen := map[int]bool{}
	for _, c := range h.conns {
		for _, ev := range evs {
			if strings.HasSuffix(ev, fmt.Sprintf(" on #%d", c.n)) && !seen[c.n] {
				seen[c.n] = true
				fmt.Fprintf(&b, "; connection #%d: %v", c.n, c.events)
				if next := h.connByN(c.n + 1); next != nil {
					fmt.Fprintf(&b, "; connection #%d: %v", c.n+1, next.events)
				}
			}
		}
	}
	b.WriteString(")")
	return b.String()
}

// connByN returns connection #n; h.mu is held.
func (h *historyHook) connByN(n int) *connHistory {
	for _, c := range h.conns {
		if c.n == n {
			return c
		}
	}
	return nil
}
