package rtsp

import (
	"bufio"
	"context"
	"net"
)

// readBufferSize is the read buffer below gortsplib's own. gortsplib reads
// the RTSP connection through a 4 KiB bufio.Reader, so one frame of a
// 4 Mbit/s 1080p stream (a burst of about 12 RTP packets, 17 KB) costs five
// read syscalls or more; with 64 KiB below it one read takes what the kernel
// has queued, and gortsplib's reads are copies from memory. Measured in
// BenchmarkDaemonRecord8Cameras (docs/benchmarks/rtsp.md).
const readBufferSize = 64 << 10

// bufferedConn is a net.Conn whose reads go through a larger buffer.
// Deadlines, writes and addresses are the connection's own.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// dialBuffered dials like net.Dialer and wraps the connection in a
// bufferedConn (gortsplib.Client.DialContext).
func dialBuffered(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize)}, nil
}
