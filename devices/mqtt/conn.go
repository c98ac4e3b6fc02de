package mqtt

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
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
	return newBufferedConn(c), nil
}

// bufferedConn buffers reads and coalesces writes. Write copies into a
// buffer (bounded by maxWriteBuf: Write blocks beyond it) and wakes the
// flusher, which writes everything pending in one syscall. A write error
// closes the connection, so paho's reader fails and reports the loss; later
// Writes return the error. Close flushes what is pending first (bounded by
// closeTimeout), because paho closes right after writing DISCONNECT.
type bufferedConn struct {
	net.Conn
	r    *bufio.Reader
	wake chan struct{}
	done chan struct{}

	flushMu sync.Mutex // held while writing to the socket
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

func newBufferedConn(c net.Conn) *bufferedConn {
	bc := &bufferedConn{
		Conn: c,
		r:    bufio.NewReaderSize(c, readBufSize),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	bc.space = sync.NewCond(&bc.mu)
	go bc.flusher()
	return bc
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

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
