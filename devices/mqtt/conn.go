package mqtt

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// paho reads every packet straight from the socket (two or three small
// reads per message) and writes every 4-byte PUBACK with its own syscall;
// at tens of thousands of messages per second that was a third of our CPU.
// dial therefore hands paho a bufferedConn: reads go through a 64 KiB
// buffer, and writes are coalesced by a flusher goroutine.

const (
	readBufSize  = 64 << 10
	maxWriteBuf  = 1 << 20 // Write blocks while this much is unflushed
	closeTimeout = 2 * time.Second
)

// dial opens the network connection for paho (SetCustomOpenConnectionFn),
// for tcp/mqtt, ssl/tls/mqtts and ws/wss URLs. Unlike paho's own dialer it
// ignores proxy environment variables.
func dial(uri *url.URL, o paho.ClientOptions) (*bufferedConn, error) {
	d := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	host := uri.Host
	withPort := func(port string) string {
		if uri.Port() == "" {
			return net.JoinHostPort(uri.Hostname(), port)
		}
		return host
	}
	var c net.Conn
	var err error
	switch uri.Scheme {
	case "tcp", "mqtt":
		c, err = d.Dial("tcp", withPort("1883"))
	case "ssl", "tls", "mqtts":
		c, err = (&tls.Dialer{NetDialer: d, Config: o.TLSConfig}).Dial("tcp", withPort("8883"))
	case "ws", "wss":
		u := *uri
		u.User = nil
		var tc *tls.Config
		if uri.Scheme == "wss" {
			tc = o.TLSConfig
		}
		c, err = paho.NewWebsocket(u.String(), tc, connectTimeout, o.HTTPHeaders, o.WebsocketOptions)
	default:
		return nil, fmt.Errorf("dial: unsupported scheme %q", uri.Scheme)
	}
	if err != nil {
		return nil, err
	}
	return newBufferedConn(c, readCoalesce), nil
}

// After a read of less than readCoalesceBelow bytes, the next read waits
// readCoalesce first, so that a steady stream of small messages is read
// in batches: one read syscall and one wake-up of the reader per
// millisecond rather than per few messages (the socket reads were a third
// of the daemon's CPU at 40k msg/s once the packets were parsed here). It
// adds at most readCoalesce to a message's way to durable, which waits for
// the next storage commit (sync_interval, 100 ms by default) anyway.
const (
	readCoalesce      = time.Millisecond
	readCoalesceBelow = 8 << 10
)

// coalescingReader is the socket side of bufferedConn's read buffer (see
// readCoalesce).
type coalescingReader struct {
	c     net.Conn
	wait  time.Duration
	short bool
}

func (r *coalescingReader) Read(p []byte) (int, error) {
	if r.short {
		time.Sleep(r.wait)
	}
	n, err := r.c.Read(p)
	r.short = r.wait > 0 && n > 0 && n < readCoalesceBelow
	return n, err
}

// bufferedConn buffers reads and coalesces writes. Write copies into a
// buffer (bounded by maxWriteBuf: Write blocks beyond it) and wakes the
// flusher, which writes everything pending in one syscall. A write error
// closes the connection, so paho's reader fails and reports the loss; later
// Writes return the error. Close flushes what is pending first (bounded by
// closeTimeout), because paho closes right after writing DISCONNECT.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
	// onPublish, when set (before paho reads), takes every QoS 0 and 1
	// PUBLISH off the stream before paho sees it (see Read); pass is what
	// is left of the packet paho is reading; topics interns topic names;
	// slab is cut into packet bodies. All four are used only by the
	// goroutine that calls Read.
	onPublish func(*publishMsg)
	pass      int
	topics    map[string]string
	slab      []byte // see alloc
	wake      chan struct{}
	done      chan struct{}

	flushMu sync.Mutex // held while writing to the socket
	spare   []byte     // writeNow's spare buffer, under flushMu
	mu      struct {
		sync.Mutex
		buf    []byte
		err    error
		closed bool
	}
	space *sync.Cond // on mu: buffer drained or error
	once  sync.Once
}

var errConnClosed = errors.New("mqtt: connection closed")

// newBufferedConn wraps c; coalesce is readCoalesce, or 0 to read as
// soon as anything arrives.
func newBufferedConn(c net.Conn, coalesce time.Duration) *bufferedConn {
	bc := &bufferedConn{
		Conn: c,
		r:    bufio.NewReaderSize(&coalescingReader{c: c, wait: coalesce}, readBufSize),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	bc.space = sync.NewCond(&bc.mu)
	go bc.flusher()
	return bc
}

// Read gives paho the next bytes of the stream. With onPublish set, QoS 0
// and 1 PUBLISH packets never reach paho: Read parses each one and hands it
// to onPublish on this (paho's reader) goroutine, and passes every other
// packet (CONNACK, SUBACK, UNSUBACK, PINGRESP, QoS 2 flows) through
// unchanged. paho moved each message through three goroutines joined by
// unbuffered channels (reader, comms, router), with a packet object, a
// message, an ack closure and a store key string on the way: most of the
// daemon's CPU per message at saturation (docs/benchmarks/mqtt.md).
func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.onPublish == nil {
		return c.r.Read(p)
	}
	for c.pass == 0 {
		n, err := c.nextPacket()
		if err != nil {
			return 0, err
		}
		c.pass = n
	}
	if len(p) > c.pass {
		p = p[:c.pass]
	}
	n, err := c.r.Read(p)
	c.pass -= n
	return n, err
}

// errMalformed ends the connection on a packet length or a PUBLISH that
// does not parse (paho would have done the same).
var errMalformed = errors.New("mqtt: malformed PUBLISH packet")

// nextPacket looks at the packet at the head of the stream. A QoS 0 or 1
// PUBLISH is consumed and handed to onPublish (it returns 0); for any other
// packet it returns its whole length, for paho to read.
func (c *bufferedConn) nextPacket() (int, error) {
	// Fixed header: type and flags, then the remaining length, 1 to 4
	// bytes of 7 bits (MQTT 3.1.1, 2.2.3).
	var remLen, hdr int
	for i := 1; ; i++ {
		b, err := c.r.Peek(i + 1)
		if err != nil {
			return 0, err
		}
		remLen |= int(b[i]&0x7f) << (7 * (i - 1))
		if b[i]&0x80 == 0 {
			hdr = i + 1
			break
		}
		if i == 4 {
			return 0, errMalformed // a fifth length byte
		}
	}
	b, _ := c.r.Peek(1)
	h := b[0]
	qos := (h >> 1) & 3
	if h>>4 != packets.Publish || qos > 1 {
		return hdr + remLen, nil
	}
	if _, err := c.r.Discard(hdr); err != nil {
		return 0, err
	}
	body := c.alloc(remLen)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return 0, err
	}
	if len(body) < 2 {
		return 0, errMalformed
	}
	off := 2 + (int(body[0])<<8 | int(body[1]))
	if off > len(body) {
		return 0, errMalformed
	}
	m := &publishMsg{qos: qos, dup: h&0x08 != 0, retained: h&0x01 != 0, topic: c.topic(body[2:off])}
	if qos == 1 {
		if off+2 > len(body) {
			return 0, errMalformed
		}
		m.id = uint16(body[off])<<8 | uint16(body[off+1])
		off += 2
	}
	m.payload = body[off:]
	c.onPublish(m)
	return 0, nil
}

// Packet bodies up to slabMax bytes are cut from slabs of slabSize: one
// allocation per ~100 telemetry messages instead of one each. A slab lives
// as long as any message cut from it (until its acknowledgement, one
// commit later); larger bodies (lidar frames) get their own.
const (
	slabSize = 32 << 10
	slabMax  = 2 << 10
)

// alloc returns n bytes for a packet body (see slabSize). Each piece is
// capped at its length, so an append to one never touches the next.
func (c *bufferedConn) alloc(n int) []byte {
	if n > slabMax {
		return make([]byte, n)
	}
	if cap(c.slab)-len(c.slab) < n {
		c.slab = make([]byte, 0, slabSize)
	}
	l := len(c.slab)
	c.slab = c.slab[:l+n]
	return c.slab[l : l+n : l+n]
}

// topic returns name as a string, the same string for a topic seen
// before (bounded like the devices' stream cache).
func (c *bufferedConn) topic(name []byte) string {
	if t, ok := c.topics[string(name)]; ok {
		return t
	}
	if c.topics == nil || len(c.topics) >= topicCacheMax {
		c.topics = make(map[string]string)
	}
	t := string(name)
	c.topics[t] = t
	return t
}

// publishMsg is a PUBLISH taken off the stream by bufferedConn.Read, as a
// paho.Message. Ack does nothing: the acker writes a current session's
// PUBACKs itself, QoS 0 needs none, and a message of a session that ended
// is redelivered by the broker (paho's Ack drops those too).
type publishMsg struct {
	topic         string
	payload       []byte
	id            uint16
	qos           byte
	dup, retained bool
}

func (m *publishMsg) Duplicate() bool   { return m.dup }
func (m *publishMsg) Qos() byte         { return m.qos }
func (m *publishMsg) Retained() bool    { return m.retained }
func (m *publishMsg) Topic() string     { return m.topic }
func (m *publishMsg) MessageID() uint16 { return m.id }
func (m *publishMsg) Payload() []byte   { return m.payload }
func (m *publishMsg) Ack()              {}

func (c *bufferedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.mu.err == nil && len(c.mu.buf) >= maxWriteBuf {
		c.space.Wait()
	}
	if err := c.mu.err; err != nil {
		c.mu.Unlock()
		return 0, err
	}
	c.mu.buf = append(c.mu.buf, p...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

// writeNow is Write, then the write to the socket from the caller's
// goroutine when no flush is under way (else the flusher takes it): the
// acker's PUBACKs leave without a wake-up of the flusher in between.
func (c *bufferedConn) writeNow(p []byte) error {
	if _, err := c.Write(p); err != nil {
		return err
	}
	if !c.flushMu.TryLock() {
		return nil
	}
	defer c.flushMu.Unlock()
	var err error
	c.spare, err = c.flushLocked(c.spare)
	return err
}

func (c *bufferedConn) flusher() {
	var out []byte
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		for {
			var err error
			out, err = c.flushOnce(out)
			if err != nil || len(out) == 0 {
				break
			}
		}
	}
}

// flushOnce writes what is pending; it returns the spare buffer (empty when
// there was nothing to write).
func (c *bufferedConn) flushOnce(spare []byte) ([]byte, error) {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	return c.flushLocked(spare)
}

// flushLocked writes what is pending (see flushOnce). Called with flushMu
// held; it takes mu itself, only to swap the buffers, never across the
// write.
func (c *bufferedConn) flushLocked(spare []byte) ([]byte, error) {
	c.mu.Lock()
	if c.mu.err != nil || len(c.mu.buf) == 0 {
		err := c.mu.err
		c.mu.Unlock()
		return spare[:0], err
	}
	out := c.mu.buf
	c.mu.buf = spare[:0]
	c.space.Broadcast()
	c.mu.Unlock()
	if _, err := c.Conn.Write(out); err != nil {
		c.fail(err)
		return out[:0], err
	}
	return out[:0], nil
}

// SetWriteDeadline and SetDeadline are serialized with the flusher's
// writes: websocket connections keep the deadline in an unsynchronized
// field.
func (c *bufferedConn) SetWriteDeadline(t time.Time) error {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *bufferedConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *bufferedConn) fail(err error) {
	c.mu.Lock()
	if c.mu.err == nil {
		c.mu.err = err
	}
	c.space.Broadcast()
	c.mu.Unlock()
	_ = c.Conn.Close()
}

// Close flushes pending writes (for at most closeTimeout) and closes. If a
// write is stuck for that long, the connection is closed under it.
func (c *bufferedConn) Close() error {
	c.once.Do(func() {
		deadline := time.Now().Add(closeTimeout)
		for !c.flushMu.TryLock() {
			if time.Now().After(deadline) {
				c.fail(errConnClosed)
				close(c.done)
				return
			}
			time.Sleep(time.Millisecond)
		}
		_ = c.Conn.SetWriteDeadline(deadline)
		_, _ = c.flushLocked(nil)
		c.flushMu.Unlock()
		c.fail(errConnClosed)
		close(c.done)
	})
	return nil
}

// nopStore is a paho.Store that keeps nothing. paho's store would let a
// reused client resume its in-flight packets; this package makes a new
// client per connection and relies on the broker's persistent session to
// redeliver, so the default MemoryStore only cost a mutex, a key string and
// a map entry per message (about 12% of CPU at 30k msg/s).
type nopStore struct{}

func (nopStore) Open()                             {}
func (nopStore) Put(string, packets.ControlPacket) {}
func (nopStore) Get(string) packets.ControlPacket  { return nil }
func (nopStore) All() []string                     { return nil }
func (nopStore) Del(string)                        {}
func (nopStore) Close()                            {}
func (nopStore) Reset()                            {}
