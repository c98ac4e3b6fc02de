package rtsp

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
)

// readBufferSize is the read buffer below gortsplib's own. gortsplib reads
// the RTSP connection through a 4 KiB bufio.Reader, so one frame of a
// 4 Mbit/s 1080p stream (a burst of about 12 RTP packets, 17 KB) costs five
// read syscalls or more; with this buffer below it one read takes what the
// kernel has queued. It holds the largest interleaved frame (4 + 65535
// bytes), so that a tapped RTP packet is always read in place. Measured in
// BenchmarkDaemonRecord8Cameras (docs/benchmarks/rtsp.md).
const readBufferSize = 72 << 10

// tapPassEvery: while the tap takes the RTP packets, one packet in this
// interval (or a quarter of the read timeout, if shorter) is still handed
// to gortsplib, which reads it as before (it reaches the same handler
// through OnPacketRTP). gortsplib closes a TCP session in which it has
// seen no interleaved frame for its ReadTimeout.
const tapPassEvery = 500 * time.Millisecond

// rtpTap takes the RTP packets of one interleaved channel on the reader
// goroutine, straight from the read buffer, before gortsplib sees them.
type rtpTap struct {
	channel   int
	passEvery int64 // ns
	// handle gets the RTP packet (valid only during the call) and its
	// arrival time. It must not keep the slice.
	handle   func(pkt []byte, now int64)
	lastPass int64
}

// bufferedConn is a net.Conn whose reads go through a larger buffer.
// Deadlines, writes and addresses are the connection's own.
//
// Once a tap is set (after PLAY, on plain TCP), RTP packets of the tapped
// channel are handed to it directly from the buffer: gortsplib would
// allocate each packet twice (the interleaved frame, then the rtp.Packet),
// copy it through its own buffer, and run its receiver statistics under a
// lock, for every one of the ~3,000 packets per second of 8 cameras. Every
// other message (RTCP, RTSP responses and requests, other channels) is
// passed to gortsplib unchanged. To know where messages begin, the conn
// follows the message boundaries from the first byte (interleaved frames
// by their length, RTSP messages by their header and Content-Length). On
// anything it does not recognise it stops following and passes every byte
// from then on (gortsplib then reads the stream as it would without the
// tap, and its OnPacketRTP gets the packets).
type bufferedConn struct {
	net.Conn
	r   *bufio.Reader
	tap atomic.Pointer[rtpTap]
	// The fields below are used only by the goroutine reading the
	// connection (gortsplib reads it from one goroutine at a time).
	pass      int  // bytes of the current message still to pass to gortsplib
	untracked bool // stopped following message boundaries: pass everything
}

// setTap starts handing the RTP packets of channel to handle; gortsplib
// still gets one in passEvery.
func (c *bufferedConn) setTap(channel int, passEvery time.Duration, handle func([]byte, int64)) {
	c.tap.Store(&rtpTap{channel: channel, passEvery: int64(passEvery), handle: handle})
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	for {
		if c.untracked {
			return c.r.Read(p)
		}
		if c.pass > 0 {
			n, err := c.r.Read(p[:min(len(p), c.pass)])
			c.pass -= n
			return n, err
		}
		// At a message boundary.
		h, err := c.r.Peek(4)
		if err != nil {
			// The connection ended (or fewer than 4 bytes will
			// ever come): gortsplib reads what is left and the error.
			c.untracked = true
			continue
		}
		if h[0] == '$' {
			size := 4 + (int(h[2])<<8 | int(h[3]))
			if t := c.tap.Load(); t != nil && int(h[1]) == t.channel {
				now := time.Now().UnixNano()
				if now-t.lastPass < t.passEvery {
					f, err := c.r.Peek(size)
					if err != nil {
						c.untracked = true
						continue
					}
					t.handle(f[4:], now)
					_, _ = c.r.Discard(size)
					continue
				}
				t.lastPass = now
			}
			c.pass = size
			continue
		}
		n, ok := c.textLen(h)
		if !ok {
			c.untracked = true
			continue
		}
		c.pass = n
	}
}

// Write writes p, except an interleaved RTCP receiver report on the
// tapped channel's RTCP channel, which it drops (and reports written).
// gortsplib v4.16.2 sends receiver reports only over UDP, so this never
// happens with it; it is here so that a gortsplib that sent them over TCP
// could not report the tapped stream from the one packet in passEvery it
// sees (as ~99 % loss, with a wrong highest sequence number and jitter).
// gortsplib writes one interleaved frame per Write.
func (c *bufferedConn) Write(p []byte) (int, error) {
	if t := c.tap.Load(); t != nil && len(p) > 4 && p[0] == '$' && int(p[1]) == t.channel+1 &&
		len(p) == 4+(int(p[2])<<8|int(p[3])) && isReceiverReport(p[4:]) {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// isReceiverReport reports whether the compound RTCP packet b holds a
// receiver report.
func isReceiverReport(b []byte) bool {
	pkts, err := rtcp.Unmarshal(b)
	if err != nil {
		return false
	}
	for _, p := range pkts {
		if _, ok := p.(*rtcp.ReceiverReport); ok {
			return true
		}
	}
	return false
}

var headerEnd = []byte("\r\n\r\n")

// textLen returns the length of the RTSP request or response at the head
// of the buffer, as gortsplib reads it (headers up to an empty line, then
// a body of Content-Length bytes when there is exactly one such header),
// or false when it is not one that gortsplib recognises at its first two
// bytes, or its header does not fit the buffer.
func (c *bufferedConn) textLen(h []byte) (int, bool) {
	switch string(h[:2]) {
	case "RT", "AN", "DE", "GE", "OP", "PA", "PL", "RE", "SE", "TE":
	default:
		return 0, false
	}
	var b []byte
	for want := 4; ; want = len(b) + 1 {
		var err error
		if b, err = c.r.Peek(max(want, c.r.Buffered())); err != nil && len(b) < want {
			return 0, false
		}
		if i := bytes.Index(b, headerEnd); i >= 0 {
			b = b[:i+2]
			break
		}
		if len(b) >= c.r.Size() {
			return 0, false
		}
	}
	head := len(b) + 2
	// Skip the request or status line.
	i := bytes.Index(b, []byte("\r\n"))
	b = b[i+2:]
	var cls [][]byte
	for len(b) > 0 {
		j := bytes.Index(b, []byte("\r\n"))
		line := b[:j]
		b = b[j+2:]
		k := bytes.IndexByte(line, ':')
		if k < 0 {
			return 0, false
		}
		if http.CanonicalHeaderKey(string(line[:k])) == "Content-Length" {
			cls = append(cls, bytes.TrimLeft(line[k+1:], " "))
		}
	}
	if len(cls) != 1 {
		return head, true
	}
	cl, err := strconv.ParseUint(string(cls[0]), 10, 64)
	if err != nil || cl > 128<<10 {
		return 0, false // gortsplib fails on it
	}
	return head + int(cl), true
}

// dialer dials like net.Dialer and wraps the connection in a
// bufferedConn (gortsplib.Client.DialContext); last is the connection it
// dialed last.
type dialer struct {
	last atomic.Pointer[bufferedConn]
}

func (d *dialer) dial(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	bc := &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize)}
	d.last.Store(bc)
	return bc, nil
}
