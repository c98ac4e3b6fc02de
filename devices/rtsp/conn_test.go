package rtsp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/conn"
	"github.com/pion/rtcp"
)

// TestTapDeliversEveryMessageOnceInOrder feeds a bufferedConn with a tap on
// channel 0 a stream of RTSP responses and requests (bodies holding '$' and
// empty lines), interleaved frames on the tapped channel (up to the largest
// size) and on others, written in random pieces, then bytes gortsplib does
// not recognise. gortsplib's own reader (pkg/conn) reads the connection as
// the client does. Every message must reach exactly one of them, byte for
// byte, in the order sent; after the unrecognised bytes everything is
// passed to gortsplib.
func TestTapDeliversEveryMessageOnceInOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var stream bytes.Buffer
	var want []string
	frame := func(ch, size int) {
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(rng.IntN(256))
		}
		p[0] = '$'
		stream.Write([]byte{'$', byte(ch), byte(size >> 8), byte(size)})
		stream.Write(p)
		want = append(want, fmt.Sprintf("frame %d %x", ch, p))
	}
	text := func(msg, body string) {
		s := msg
		if body != "" {
			s += fmt.Sprintf("Content-Length: %d\r\n", len(body))
		}
		s += "\r\n" + body
		stream.WriteString(s)
		want = append(want, "text "+s)
	}
	text("RTSP/1.0 200 OK\r\nCSeq: 1\r\n", "v=0\r\n\r\n$\x00\x00\x10 not a frame\r\n")
	text("RTSP/1.0 200 OK\r\nCSeq: 2\r\ncontent-length:   0\r\n", "")
	for i := range 300 {
		switch {
		case i%50 == 7:
			text("RTSP/1.0 200 OK\r\nCSeq: 3\r\n", "")
		case i%70 == 9:
			text("GET_PARAMETER rtsp://x/ RTSP/1.0\r\nCSeq: 9\r\n", "$\r\n\r\n")
		case i%10 == 3:
			frame(1, 28+rng.IntN(60))
		case i == 100:
			frame(0, 65535)
		case i%30 == 0:
			frame(2, 1+rng.IntN(1500))
		default:
			frame(0, 12+rng.IntN(1500))
		}
	}
	// Bytes gortsplib skips one by one; then a frame: from here on the
	// conn must pass everything.
	stream.WriteString("\x00\x01")
	frame(0, 100)
	text("RTSP/1.0 200 OK\r\nCSeq: 4\r\n", "x")
	frame(0, 200)

	client, server := net.Pipe()
	go func() {
		b := stream.Bytes()
		for len(b) > 0 {
			n := min(len(b), 1+rng.IntN(3000))
			if _, err := server.Write(b[:n]); err != nil {
				return
			}
			b = b[n:]
		}
		server.Close()
	}()
	bc := &bufferedConn{Conn: client, r: bufio.NewReaderSize(client, readBufferSize)}
	var got []string
	tapped := 0
	bc.setTap(0, tapPassEvery, func(p []byte, _ int64) {
		tapped++
		got = append(got, fmt.Sprintf("frame 0 %x", p))
	})
	rc := conn.NewConn(bc)
	for {
		m, err := rc.Read()
		if err != nil {
			break
		}
		switch m := m.(type) {
		case *base.InterleavedFrame:
			got = append(got, fmt.Sprintf("frame %d %x", m.Channel, m.Payload))
		case *base.Response:
			b, _ := m.Marshal()
			got = append(got, "resp "+string(b))
		case *base.Request:
			b, _ := m.Marshal()
			got = append(got, "req "+string(b))
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if bytes.HasPrefix([]byte(w), []byte("text ")) {
			// Compare what gortsplib parsed by kind only: its
			// marshalling reorders headers.
			if !bytes.HasPrefix([]byte(g), []byte("resp ")) && !bytes.HasPrefix([]byte(g), []byte("req ")) {
				t.Fatalf("message %d: got %.40q, want %.40q", i, g, w)
			}
			continue
		}
		if g != w {
			t.Fatalf("message %d: got %.60q, want %.60q", i, g, w)
		}
	}
	if tapped == 0 {
		t.Error("the tap took no packet")
	}
	if !bc.untracked {
		t.Error("the conn kept following boundaries after bytes it does not recognise")
	}
}

// TestTapDropsReceiverReports: with a tap on channel 0, an interleaved
// RTCP receiver report on channel 1 is not written (gortsplib sees one RTP
// packet in passEvery and would report the rest as lost); sender reports,
// other channels and RTSP requests are written unchanged.
func TestTapDropsReceiverReports(t *testing.T) {
	client, server := net.Pipe()
	bc := &bufferedConn{Conn: client, r: bufio.NewReaderSize(client, readBufferSize)}
	bc.setTap(0, tapPassEvery, func([]byte, int64) {})
	frame := func(ch int, p rtcp.Packet) []byte {
		b, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte{'$', byte(ch), byte(len(b) >> 8), byte(len(b))}, b...)
	}
	rr := &rtcp.ReceiverReport{SSRC: 1, Reports: []rtcp.ReceptionReport{{SSRC: 2, FractionLost: 250, TotalLost: 1000}}}
	sr := &rtcp.SenderReport{SSRC: 1}
	writes := [][]byte{
		frame(1, rr),
		frame(1, sr),
		frame(3, rr), // another media's channel
		[]byte("GET_PARAMETER rtsp://x/ RTSP/1.0\r\nCSeq: 5\r\n\r\n"),
		frame(1, rr),
	}
	want := append(append(append([]byte(nil), writes[1]...), writes[2]...), writes[3]...)
	go func() {
		for _, w := range writes {
			if n, err := bc.Write(w); err != nil || n != len(w) {
				t.Errorf("Write = %d, %v; want %d, nil", n, err, len(w))
			}
		}
		client.Close()
	}()
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("written %q\nwant %q", got, want)
	}
}
