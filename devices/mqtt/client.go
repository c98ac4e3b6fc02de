package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/sample"
)

// Sentinel errors.
var (
	// ErrRunning is returned by AddDevice and AddTrigger after Run started,
	// and by a second Run.
	ErrRunning = errors.New("mqtt: client already running")
	// errRedeliver ends a session on purpose so that the broker redelivers
	// the messages this package could not store (queue overflow, a sample
	// that did not become durable).
	errRedeliver = errors.New("mqtt: reconnecting for redelivery of unacknowledged messages")
)

// subscribeTimeout bounds a wait for SUBACK with no message arriving
// either (see subscribe). A variable so that a test can shorten it.
var subscribeTimeout = 10 * time.Second

const (
	connectTimeout = 10 * time.Second
	barrierTimeout = 3 * time.Second
	quiesceMillis  = 250
	logEvery       = 10 * time.Second
	statsLogEvery  = time.Minute
	topicCacheMax  = 4096
	// barrierFilter is never subscribed; unsubscribing it is a round trip.
	barrierFilter = "episoded/internal/ack-barrier"
)

// Client is one client connection to an MQTT broker, shared by the
// devices and triggers added to it. See the package doc for its lifecycle
// and rules. (It was called Broker; its methods' receiver is still b.)
type Client struct {
	o       ClientOptions
	log     *slog.Logger
	tracker *devices.Tracker
	rl      *rateLog

	devs    []*device
	trigs   []*trigger
	filters map[string]byte

	started atomic.Bool
	sink    devices.Sink // set by Run before any goroutine starts

	// queue holds messages received from paho's router and not yet handed
	// to the sink. Full-rule: the message is not acknowledged, counted as
	// overflow, and the session is drained and reconnected so the broker
	// redelivers it (see the package doc).
	queue chan inbound

	gen          atomic.Uint64 // session generation, incremented per connection attempt
	discardBelow atomic.Uint64 // queued messages of older generations are dropped: the broker redelivers them
	refusing     atomic.Bool   // draining for a reconnect or shutdown: take no new message
	// dropQueued: the worker drops queued messages instead of storing them
	// (shutdown, or a sample failed). After an overflow it stores them:
	// they were accepted in order before the refused one, so every
	// overflow cycle stores at least what was queued.
	dropQueued atomic.Bool
	redeliver  chan struct{} // cap 1: asks the session to drain and reconnect
	connected  atomic.Bool
	pending    atomic.Int64  // messages accepted and neither acknowledged nor given up
	received   atomic.Uint64 // messages taken off the connection, refused or not: progress while subscribing
	// pendingBytes is what those messages cost (heldBytes each); the
	// full-rule keeps it at or under MaxPendingBytes. pendingBytesMax is
	// its high-water mark.
	pendingBytes    atomic.Int64
	pendingBytesMax atomic.Int64

	acks struct {
		sync.Mutex
		list []pendingAck
	}
	ackWake chan struct{} // cap 1
	// conn is the current session's connection, which the acker writes
	// PUBACKs to directly.
	conn atomic.Pointer[sessionConn]

	stats clientCounters
}

type device struct {
	o     DeviceOptions
	dec   decoder
	tmpl  template
	stats deviceCounters

	// Owned by the worker goroutine.
	streams   map[string]streamInfo // topic → stream
	described map[string]bool
}

type streamInfo struct{ stream, source string }

type trigger struct {
	topic string
	fn    func(payload []byte, recvT int64)
}

// pendingAck is a message to acknowledge, with the session it came on.
type pendingAck struct {
	m   paho.Message
	gen uint64
}

// sessionConn is one session's connection (conn.go).
type sessionConn struct {
	gen uint64
	c   *bufferedConn
}

type inbound struct {
	m     paho.Message
	recvT int64
	gen   uint64
}

// heldOverhead is what one held message costs beyond its payload: paho's
// packet and message, the queue slot, the ack state, the sample and its
// callback, the store's key and record fields.
const heldOverhead = 512

// heldBytes is the memory one accepted, unacknowledged message of n
// payload bytes is counted for: the received packet's payload, the store's
// encoded copy of it (kept until the commit), and heldOverhead.
func heldBytes(n int) int64 { return 2*int64(n) + heldOverhead }

// ackState tracks one message delivered to one or more consumers; it is
// acknowledged when the last of them is done, and only if all succeeded.
type ackState struct {
	m      paho.Message
	gen    uint64
	left   atomic.Int32
	failed atomic.Bool
}

// NewClient checks o and returns a Client. It starts nothing and opens no
// connection; the TLS files are read once here to report problems early.
// It registers the client's metrics (labelled broker=ID) on o.Registerer.
func NewClient(o ClientOptions) (*Client, error) {
	o.EnsureDefaults()
	err := o.Validate()
	if err == nil {
		err = o.TLS.checkFiles()
	}
	if err != nil {
		return nil, fmt.Errorf("mqtt broker %s: %w", o.ID, err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Client{
		o:         o,
		log:       log.With("component", "devices.mqtt", "broker", o.ID),
		tracker:   devices.NewTracker(o.ID, "mqtt", nil),
		rl:        newRateLog(logEvery),
		filters:   map[string]byte{},
		queue:     make(chan inbound, o.QueueSize),
		redeliver: make(chan struct{}, 1),
		ackWake:   make(chan struct{}, 1),
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(newCollector(b)); err != nil {
			return nil, fmt.Errorf("mqtt broker %s: register metrics: %w", o.ID, err)
		}
	}
	return b, nil
}

// AddDevice adds a telemetry or lidar device. It must be called before Run.
func (b *Client) AddDevice(o DeviceOptions) error {
	if b.started.Load() {
		return ErrRunning
	}
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return fmt.Errorf("mqtt device %s: %w", o.Device, err)
	}
	o = o.onClock()
	for _, d := range b.devs {
		if d.o.Device == o.Device {
			return fmt.Errorf("mqtt device %s: already added to broker %s", o.Device, b.o.ID)
		}
	}
	tmpl, _ := parseTemplate(o.Stream) // checked by validate
	o.Topics = append([]string(nil), o.Topics...)
	if o.Layout != nil {
		l := *o.Layout
		l.Fields = append([]sample.PointField(nil), l.Fields...)
		o.Layout = &l
	}
	b.devs = append(b.devs, &device{
		o:         o,
		dec:       newDecoder(o),
		tmpl:      tmpl,
		streams:   map[string]streamInfo{},
		described: map[string]bool{},
	})
	for _, t := range o.Topics {
		b.filters[t] = 1
	}
	return nil
}

// AddTrigger subscribes topic (a topic or filter) and calls fn with the raw
// payload and its arrival time (ns) for every message, from the broker's
// own worker goroutine, never paho's. The message is acknowledged after fn
// returns, so fn should be quick. Retained messages are skipped. It must be
// called before Run.
func (b *Client) AddTrigger(topic string, fn func(payload []byte, recvT int64)) error {
	if b.started.Load() {
		return ErrRunning
	}
	if !validFilter(topic) {
		return fmt.Errorf("mqtt trigger: %q is not a valid MQTT topic", topic)
	}
	if fn == nil {
		return errors.New("mqtt trigger: nil callback")
	}
	b.trigs = append(b.trigs, &trigger{topic: topic, fn: fn})
	b.filters[topic] = 1
	return nil
}

// Status returns the broker connection's state for /v1/status. LastError
// never carries the password.
func (b *Client) Status() devices.Status { return b.tracker.Status() }

// Run connects, subscribes and records until ctx is cancelled, reconnecting
// forever through devices.Supervise. On cancel it stops taking messages,
// waits up to DrainTimeout for samples already handed to sink to become
// durable (so their acknowledgements reach the broker), disconnects and
// returns nil. Messages not yet handed to sink are left unacknowledged; the
// broker redelivers them on the next start.
func (b *Client) Run(ctx context.Context, sink devices.Sink) error {
	if sink == nil {
		return errors.New("mqtt: run: nil sink")
	}
	if !b.started.CompareAndSwap(false, true) {
		return ErrRunning
	}
	b.sink = sink
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { b.worker(stop) })
	wg.Go(func() { b.acker(stop) })
	b.log.Info("mqtt broker starting", "url", redact.URL(b.o.URL), "client_id", b.o.ClientID,
		"devices", len(b.devs), "triggers", len(b.trigs), "queue", b.o.QueueSize)
	err := devices.Supervise(ctx, b.tracker, b.o.Backoff, b.session)
	close(stop)
	wg.Wait()
	return err
}

// session is one connection: connect, subscribe (in OnConnect), stream
// until the connection is lost, a redelivery is requested or ctx ends.
func (b *Client) session(ctx context.Context, streaming func()) error {
	gen := b.gen.Add(1)
	select {
	case <-b.redeliver:
	default:
	}
	b.refusing.Store(false)
	b.dropQueued.Store(false)

	lost := make(chan error, 1)
	subscribed := make(chan error, 1)
	opts, err := b.clientOptions(gen, lost, subscribed)
	if err != nil {
		return err
	}
	client := paho.NewClient(opts)
	tok := client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		// Connect is bounded by connectTimeout; finish it so that the
		// client's goroutines end before we return.
		<-tok.Done()
		client.Disconnect(0)
		return nil
	}
	if err := tok.Error(); err != nil {
		return b.cleanErr(fmt.Errorf("connect %s: %w", redact.URL(b.o.URL), err))
	}
	present := false
	if ct, ok := tok.(*paho.ConnectToken); ok {
		present = ct.SessionPresent()
	}
	if present {
		// The broker resends every unacknowledged message of this session,
		// so messages of older connections still queued here are dropped
		// instead of stored twice.
		b.discardBelow.Store(gen)
	}
	b.log.Info("mqtt connected", "session_present", present, "generation", gen)

	select {
	case err := <-subscribed:
		if err != nil {
			client.Disconnect(quiesceMillis)
			return b.cleanErr(err)
		}
	case err := <-lost:
		return b.cleanErr(fmt.Errorf("connection lost before subscribing: %w", err))
	case <-ctx.Done():
		b.shutdown(client, lost)
		return nil
	}
	streaming()
	b.connected.Store(true)
	defer b.connected.Store(false)

	tick := time.NewTicker(statsLogEvery)
	defer tick.Stop()
	prev := b.Stats()
	for {
		select {
		case <-ctx.Done():
			b.shutdown(client, lost)
			return nil
		case err := <-lost:
			b.log.Warn("mqtt connection lost", "err", b.cleanErr(err), "acks_pending", b.pending.Load())
			return b.cleanErr(fmt.Errorf("connection lost: %w", err))
		case <-b.redeliver:
			drained := b.waitDrained(ctx, lost) && b.barrier(client)
			b.log.Warn("mqtt reconnecting so that the broker redelivers unacknowledged messages",
				"drained", drained, "acks_pending", b.pending.Load())
			client.Disconnect(quiesceMillis)
			return errRedeliver
		case <-tick.C:
			prev = b.logCounts(prev)
		}
	}
}

// logCounts logs what happened since prev, once per statsLogEvery, when
// anything did: the hot path counts, it does not log.
func (b *Client) logCounts(prev Stats) Stats {
	cur := b.Stats()
	var msgs, decodeErrs, oversize, writeErrs uint64
	for id, d := range cur.Devices {
		p := prev.Devices[id]
		msgs += d.Messages - p.Messages
		decodeErrs += d.DecodeErrors - p.DecodeErrors
		oversize += d.Oversize - p.Oversize
		writeErrs += d.WriteErrors - p.WriteErrors
	}
	if msgs+cur.Triggers-prev.Triggers+cur.Unmatched-prev.Unmatched > 0 {
		b.log.Info("mqtt counts", "interval", statsLogEvery, "messages", msgs,
			"decode_errors", decodeErrs, "oversize", oversize, "write_errors", writeErrs,
			"triggers", cur.Triggers-prev.Triggers, "unmatched", cur.Unmatched-prev.Unmatched,
			"redelivered", cur.Redelivered-prev.Redelivered, "acks_pending", cur.AcksPending, "queued", cur.Queued)
	}
	return cur
}

// shutdown stops taking messages, lets what is already in the sink become
// durable and acknowledged, then disconnects.
func (b *Client) shutdown(client paho.Client, lost <-chan error) {
	b.dropQueued.Store(true)
	b.refusing.Store(true)
	drained := b.waitDrained(context.Background(), lost) && b.barrier(client)
	if !drained {
		b.log.Warn("mqtt shutdown before every sample was durable; the broker will redeliver them",
			"acks_pending", b.pending.Load())
	}
	client.Disconnect(quiesceMillis)
}

// waitDrained waits until every accepted message is acknowledged or given
// up, the connection is lost, ctx ends or DrainTimeout passes. The worker
// stores or drops (dropQueued) the queued messages meanwhile.
func (b *Client) waitDrained(ctx context.Context, lost <-chan error) bool {
	b.refusing.Store(true)
	deadline := time.NewTimer(b.o.DrainTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for b.pending.Load() > 0 {
		select {
		case <-tick.C:
		case <-lost:
			return false
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return false
		}
	}
	return true
}

// barrier waits until the broker has processed every acknowledgement sent
// so far. Closing a socket that still has unread inbound data (the broker
// keeps sending while we refuse) makes the kernel send a TCP RST, and the
// broker then discards the PUBACKs it had not read yet: they would be
// redelivered and stored twice. The broker handles a client's packets in
// order, so the UNSUBACK for a filter we never subscribed to comes back
// only after the preceding PUBACKs were applied.
func (b *Client) barrier(client paho.Client) bool {
	tok := client.Unsubscribe(barrierFilter)
	return tok.WaitTimeout(barrierTimeout) && tok.Error() == nil
}

func (b *Client) clientOptions(gen uint64, lost, subscribed chan error) (*paho.ClientOptions, error) {
	u, err := url.Parse(b.o.URL)
	if err != nil {
		return nil, fmt.Errorf("parse url %s: %w", redact.URL(b.o.URL), err)
	}
	opts := paho.NewClientOptions().
		AddBroker(b.o.URL).
		SetClientID(b.o.ClientID).
		SetCleanSession(false).  // the broker queues QoS 1 while we are away
		SetAutoReconnect(false). // devices.Supervise reconnects
		SetConnectRetry(false).
		SetOrderMatters(true).    // one router goroutine calls our handler in order
		SetAutoAckDisabled(true). // acknowledged once durable
		SetResumeSubs(false).
		SetProtocolVersion(4).                    // MQTT 3.1.1, no fallback to 3.1
		SetCustomOpenConnectionFn(b.dialer(gen)). // buffered reads, coalesced writes (conn.go)
		SetStore(nopStore{}).                     // the broker's session redelivers, not paho
		SetKeepAlive(b.o.KeepAlive).
		SetPingTimeout(max(b.o.KeepAlive/2, time.Second)).
		SetConnectTimeout(connectTimeout).
		SetWriteTimeout(b.o.KeepAlive).
		SetDefaultPublishHandler(b.onMessage(gen)).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		}).
		SetOnConnectHandler(func(c paho.Client) { subscribed <- b.subscribe(c) })
	if b.o.Username != "" {
		opts.SetUsername(b.o.Username)
	}
	if b.o.Password != "" {
		opts.SetPassword(b.o.Password)
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts", "wss":
		tc, err := b.o.TLS.config(u.Hostname())
		if err != nil {
			return nil, err
		}
		opts.SetTLSConfig(tc)
	}
	return opts, nil
}

// dialer returns the connection function of session gen: dial, take QoS
// 0 and 1 PUBLISH packets straight from the connection (conn.go, Read),
// and remember the connection for the acker.
func (b *Client) dialer(gen uint64) paho.OpenConnectionFunc {
	return func(u *url.URL, o paho.ClientOptions) (net.Conn, error) {
		c, err := dial(u, o)
		if err != nil {
			return nil, err
		}
		c.onPublish = func(m *publishMsg) { b.accept(m, gen) }
		b.conn.Store(&sessionConn{gen: gen, c: c})
		return c, nil
	}
}

// subscribe runs in paho's OnConnect goroutine (not the router), on every
// connection. Subscriptions carry no callback: every message goes through
// the default publish handler exactly once, and is routed here.
func (b *Client) subscribe(c paho.Client) error {
	if len(b.filters) == 0 {
		return nil
	}
	tok := c.SubscribeMultiple(b.filters, nil)
	// A broker may send a session's unacknowledged messages before it
	// reads our SUBSCRIBE: mochi-mqtt (the embedded broker of demo and
	// simulate) resends its whole in-flight window right after CONNACK.
	// After a long outage that takes longer than subscribeTimeout, and
	// giving up then would start the same resend again, for ever. So wait
	// while messages keep arriving; give up only after subscribeTimeout
	// with neither a SUBACK nor a message.
	for last := b.received.Load(); !tok.WaitTimeout(subscribeTimeout); {
		n := b.received.Load()
		if n == last {
			return fmt.Errorf("subscribe: no SUBACK within %v", subscribeTimeout)
		}
		last = n
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	st, ok := tok.(*paho.SubscribeToken)
	if !ok {
		return nil
	}
	for f, qos := range st.Result() {
		switch {
		case qos == 0x80:
			return fmt.Errorf("subscribe: the broker refused topic filter %q", f)
		case qos < 1:
			b.log.Warn("broker granted QoS 0: messages on this filter are not acknowledged and can be lost", "filter", f)
		}
	}
	return nil
}

// onMessage is paho's default publish handler, for the messages paho still
// delivers (QoS 2; QoS 0 and 1 are taken off the connection before paho
// sees them, see dialer). It runs on paho's router goroutine.
func (b *Client) onMessage(gen uint64) paho.MessageHandler {
	return func(_ paho.Client, m paho.Message) { b.accept(m, gen) }
}

// accept takes one message of session gen, on paho's reader or router
// goroutine, and never blocks: it enqueues or refuses.
func (b *Client) accept(m paho.Message, gen uint64) {
	recvT := time.Now().UnixNano()
	b.received.Add(1)
	if b.refusing.Load() {
		b.stats.refused.Add(1)
		return // not acknowledged: redelivered on the next connection
	}
	size := heldBytes(len(m.Payload()))
	if n := b.pending.Load(); n > 0 && b.pendingBytes.Load()+size > b.o.MaxPendingBytes {
		// A broker that ignores its window (or a window too large for
		// these payloads): what is held stays bounded, this message
		// stays unacknowledged.
		b.stats.overflow.Add(1)
		b.requestRedelivery("max_pending_bytes reached: the broker sent more unacknowledged data than the daemon holds")
		return
	}
	b.pending.Add(1)
	v := b.pendingBytes.Add(size)
	for hw := b.pendingBytesMax.Load(); v > hw && !b.pendingBytesMax.CompareAndSwap(hw, v); hw = b.pendingBytesMax.Load() {
	}
	select {
	case b.queue <- inbound{m: m, recvT: recvT, gen: gen}:
	default:
		b.release(1, size)
		b.stats.overflow.Add(1)
		b.requestRedelivery("queue full: the broker's in-flight window is larger than queue_size")
	}
}

func (b *Client) requestRedelivery(why string) {
	if b.refusing.CompareAndSwap(false, true) {
		if ok, n := b.rl.allow("redeliver"); ok {
			b.log.Warn("mqtt message not stored; draining and reconnecting so that the broker redelivers it",
				"reason", why, "suppressed", n)
		}
	}
	select {
	case b.redeliver <- struct{}{}:
	default:
	}
}

// release gives up n accepted messages of the given heldBytes total
// (acknowledged or left for redelivery).
func (b *Client) release(n, bytes int64) {
	b.pendingBytes.Add(-bytes)
	b.pending.Add(-n)
}

// releaseMsg gives up one accepted message.
func (b *Client) releaseMsg(m paho.Message) { b.release(1, heldBytes(len(m.Payload()))) }

func (b *Client) worker(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			for {
				select {
				case in := <-b.queue:
					b.releaseMsg(in.m)
				default:
					return
				}
			}
		case in := <-b.queue:
			b.handle(in)
		}
	}
}

func (b *Client) handle(in inbound) {
	if b.dropQueued.Load() || in.gen < b.discardBelow.Load() {
		b.releaseMsg(in.m) // not acknowledged: the broker redelivers it
		return
	}
	m := in.m
	if m.Duplicate() {
		b.stats.redelivered.Add(1)
	}
	if m.Retained() {
		// Re-sent by the broker on every (re)subscribe; it is old state,
		// not a new sample.
		b.stats.retained.Add(1)
		b.queueAck(m, in.gen)
		return
	}
	topic := m.Topic()
	var devs [4]*device
	matched := devs[:0]
	for _, d := range b.devs {
		for _, f := range d.o.Topics {
			if matchFilter(f, topic) {
				matched = append(matched, d)
				break
			}
		}
	}
	var trigs []*trigger
	for _, t := range b.trigs {
		if matchFilter(t.topic, topic) {
			trigs = append(trigs, t)
		}
	}
	n := len(matched) + len(trigs)
	if n == 0 {
		b.stats.unmatched.Add(1)
		if ok, sup := b.rl.allow("unmatched"); ok {
			b.log.Info("mqtt message on a topic no device wants (a subscription left in the persistent session?); acknowledged and dropped",
				"topic", topic, "suppressed", sup)
		}
		b.queueAck(m, in.gen)
		return
	}
	a := &ackState{m: m, gen: in.gen}
	a.left.Store(int32(n))
	payload := m.Payload()
	for i, d := range matched {
		p := payload
		if i > 0 {
			p = append([]byte(nil), payload...) // each sample owns its payload
		}
		b.deliver(d, a, topic, p, in.recvT)
	}
	for _, t := range trigs {
		b.stats.triggers.Add(1)
		t.fn(payload, in.recvT)
		b.finish(a, nil)
	}
}

func (b *Client) deliver(d *device, a *ackState, topic string, payload []byte, recvT int64) {
	d.stats.messages.Add(1)
	d.stats.bytes.Add(uint64(len(payload)))
	si := d.stream(topic)
	if !d.described[si.stream] && len(d.described) >= d.o.MaxStreams {
		// Checked before decoding: a topic flood costs a map lookup per
		// message, and nothing of it is kept.
		d.stats.rejectedMaxStreams.Add(1)
		if ok, n := b.rl.allow(d.o.Device + "/max_streams"); ok {
			b.log.Warn("mqtt message refused: it would create more streams than max_streams (acknowledged and dropped)",
				"device", d.o.Device, "topic", topic, "stream", si.stream, "max_streams", d.o.MaxStreams, "suppressed", n)
		}
		b.finish(a, nil)
		return
	}
	s, err := d.dec.decode(payload, recvT)
	if errors.Is(err, ErrTooLarge) {
		d.stats.oversize.Add(1)
		if ok, n := b.rl.allow(d.o.Device + "/oversize"); ok {
			b.log.Warn("mqtt payload over max_payload rejected (acknowledged, so the broker will not resend it)",
				"device", d.o.Device, "topic", topic, "bytes", len(payload), "max_payload", d.o.MaxPayload, "suppressed", n)
		}
		b.finish(a, nil)
		return
	}
	if err != nil {
		d.stats.decodeErrors.Add(1)
		if ok, n := b.rl.allow(d.o.Device + "/decode"); ok {
			b.log.Warn("mqtt payload kept raw with decode_error", "device", d.o.Device, "topic", topic,
				"err", err, "suppressed", n)
		}
	}
	s.Stream = si.stream
	if !d.described[si.stream] {
		if err := b.sink.Describe(d.o.descriptor(si.stream, si.source)); err != nil {
			b.writeFailed(d, a, fmt.Errorf("describe stream %s: %w", si.stream, err))
			return
		}
		d.described[si.stream] = true
		d.stats.streams.Store(int64(len(d.described)))
	}
	d.stats.pending.Add(1)
	err = b.sink.Write(s, func(err error) {
		d.stats.pending.Add(-1)
		if err != nil {
			b.writeFailed(d, a, err)
			return
		}
		b.finish(a, nil)
	})
	if err != nil {
		d.stats.pending.Add(-1)
		b.writeFailed(d, a, fmt.Errorf("write %s: %w", si.stream, err))
	}
}

func (b *Client) writeFailed(d *device, a *ackState, err error) {
	d.stats.writeErrors.Add(1)
	if ok, n := b.rl.allow(d.o.Device + "/write"); ok {
		b.log.Warn("mqtt sample not stored; it stays unacknowledged for redelivery", "device", d.o.Device,
			"err", err, "suppressed", n)
	}
	b.finish(a, err)
}

// finish records one consumer's outcome; the last one acknowledges the
// message, or leaves it for redelivery if any consumer failed. It never
// blocks: it may run on the sink's goroutine.
func (b *Client) finish(a *ackState, err error) {
	if err != nil {
		a.failed.Store(true)
	}
	if a.left.Add(-1) != 0 {
		return
	}
	if a.failed.Load() {
		b.releaseMsg(a.m)
		b.dropQueued.Store(true)
		b.requestRedelivery("a sample was refused or failed to become durable")
		return
	}
	b.queueAck(a.m, a.gen)
}

// queueAck hands m to the acker goroutine. The list is bounded by the
// accepted-but-unacknowledged messages, themselves bounded by the broker's
// in-flight window.
func (b *Client) queueAck(m paho.Message, gen uint64) {
	b.acks.Lock()
	b.acks.list = append(b.acks.list, pendingAck{m, gen})
	b.acks.Unlock()
	select {
	case b.ackWake <- struct{}{}:
	default:
	}
}

// acker sends acknowledgements from its own goroutine: a write may block
// on the connection, and must not stall the sink's callbacks.
//
// The PUBACKs of QoS 1 messages of the current session are written
// straight to its connection, all of a wake-up in one Write (4 bytes each,
// in order, ahead of any later packet such as the drain barrier's
// UNSUBSCRIBE). Through paho each one was a packet object, a buffer, a key
// string and two goroutine hand-offs: 15% of the daemon's CPU at
// saturation. paho keeps no state for them (the store is nopStore).
// Messages of an older session, and any of another QoS, go through paho's
// Ack, which drops them after a disconnect (the broker redelivers).
func (b *Client) acker(stop <-chan struct{}) {
	var batch []pendingAck
	var out []byte
	for {
		stopping := false
		select {
		case <-b.ackWake:
		case <-stop:
			stopping = true
		}
		b.acks.Lock()
		batch, b.acks.list = b.acks.list, batch[:0]
		b.acks.Unlock()
		var bytes int64
		sc := b.conn.Load()
		out = out[:0]
		for i, a := range batch {
			if sc != nil && a.gen == sc.gen && a.m.Qos() == 1 {
				id := a.m.MessageID()
				out = append(out, 0x40, 0x02, byte(id>>8), byte(id))
			} else {
				a.m.Ack()
			}
			bytes += heldBytes(len(a.m.Payload()))
			batch[i] = pendingAck{}
		}
		if len(out) > 0 {
			// An error means the connection failed; paho's reader reports
			// it and the broker redelivers what was not acknowledged.
			_ = sc.c.writeNow(out)
		}
		b.release(int64(len(batch)), bytes)
		if stopping {
			return
		}
	}
}

// stream maps topic to its stream name and descriptor source through the
// device's template, with a bounded cache.
func (d *device) stream(topic string) streamInfo {
	if si, ok := d.streams[topic]; ok {
		return si
	}
	si := streamInfo{stream: d.tmpl.expand(topic), source: topic}
	if !d.tmpl.perTopic {
		// Several topics feed one stream: name the filters, so that the
		// descriptor does not change with whichever topic came first.
		for _, f := range d.o.Topics {
			if matchFilter(f, topic) {
				si.source = f
				break
			}
		}
	}
	if len(d.streams) >= topicCacheMax {
		clear(d.streams)
	}
	d.streams[topic] = si
	return si
}

// cleanErr removes the password from err's text (paho errors should not
// carry it, but a URL or server message might).
func (b *Client) cleanErr(err error) error {
	if err == nil || b.o.Password == "" {
		return err
	}
	msg := redact.String(err.Error(), b.o.Password)
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}
