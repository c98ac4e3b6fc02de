package mqtt

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"testing/iotest"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// readerConn is a net.Conn whose reads come from r; writes are discarded.
// Only the Read side of bufferedConn is under test here; the real
// brokers' tests (mosquitto, mochi over TCP, TLS and websocket) cover the
// rest.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c readerConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c readerConn) Close() error                     { return nil }
func (c readerConn) SetWriteDeadline(time.Time) error { return nil }
func (c readerConn) SetReadDeadline(time.Time) error  { return nil }

func publishPacket(t *testing.T, topic string, qos byte, id uint16, dup, retain bool, payload []byte) []byte {
	t.Helper()
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.TopicName, p.Qos, p.MessageID, p.Dup, p.Retain, p.Payload = topic, qos, id, dup, retain, payload
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func controlPacket(t *testing.T, p packets.ControlPacket) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReadTakesPublishes feeds bufferedConn a stream encoded by paho's own
// packet codec, one byte per read and in odd-sized reads, with a payload
// larger than the read buffer: QoS 0 and 1 PUBLISH packets go to
// onPublish intact and in order, everything else reaches paho's
// ReadPacket unchanged, and the stream ends with paho seeing EOF.
func TestReadTakesPublishes(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (3*readBufSize)/16+3)
	type pub struct {
		topic         string
		qos           byte
		id            uint16
		dup, retained bool
		payload       []byte
	}
	pubs := []pub{
		{topic: "a/robot1", qos: 1, id: 1, payload: []byte(`{"header":{"stamp":1}}`)},
		{topic: "a/robot1", qos: 0, retained: true, payload: []byte("x")},
		{topic: "b/é/ü", qos: 1, id: 65535, dup: true, payload: big},
		{topic: "a/robot1", qos: 1, id: 300, payload: nil},
	}
	connack := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
	suback := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
	suback.MessageID, suback.ReturnCodes = 7, []byte{1, 0x80}
	pingresp := packets.NewControlPacket(packets.Pingresp)
	var stream []byte
	stream = append(stream, controlPacket(t, connack)...)
	stream = append(stream, publishPacket(t, pubs[0].topic, 1, 1, false, false, pubs[0].payload)...)
	stream = append(stream, controlPacket(t, suback)...)
	stream = append(stream, publishPacket(t, pubs[1].topic, 0, 0, false, true, pubs[1].payload)...)
	stream = append(stream, publishPacket(t, "q2", 2, 9, false, false, []byte("qos2 goes to paho"))...)
	stream = append(stream, publishPacket(t, pubs[2].topic, 1, 65535, true, false, pubs[2].payload)...)
	stream = append(stream, controlPacket(t, pingresp)...)
	stream = append(stream, publishPacket(t, pubs[3].topic, 1, 300, false, false, nil)...)

	for name, r := range map[string]func() io.Reader{
		"one byte per read": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) },
		"half reads":        func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) },
		"whole":             func() io.Reader { return bytes.NewReader(stream) },
	} {
		t.Run(name, func(t *testing.T) {
			c := newBufferedConn(readerConn{r: r()}, 0)
			defer c.Close()
			var got []pub
			c.onPublish = func(m *publishMsg) {
				got = append(got, pub{m.Topic(), m.Qos(), m.MessageID(), m.Duplicate(), m.Retained(), m.Payload()})
			}
			var types []string
			for {
				p, err := packets.ReadPacket(c)
				if err != nil {
					if !errors.Is(err, io.EOF) {
						t.Fatalf("paho read: %v", err)
					}
					break
				}
				types = append(types, packetName(p))
				if q2, ok := p.(*packets.PublishPacket); ok && (q2.TopicName != "q2" || q2.MessageID != 9 || string(q2.Payload) != "qos2 goes to paho") {
					t.Errorf("QoS 2 publish reached paho changed: %v", q2)
				}
			}
			want := []string{"CONNACK", "SUBACK", "PUBLISH", "PINGRESP"}
			if len(types) != len(want) {
				t.Fatalf("paho saw %v, want %v", types, want)
			}
			for i := range want {
				if types[i] != want[i] {
					t.Fatalf("paho saw %v, want %v", types, want)
				}
			}
			if len(got) != len(pubs) {
				t.Fatalf("onPublish got %d messages, want %d", len(got), len(pubs))
			}
			for i, w := range pubs {
				g := got[i]
				if g.topic != w.topic || g.qos != w.qos || g.id != w.id || g.dup != w.dup || g.retained != w.retained || !bytes.Equal(g.payload, w.payload) {
					t.Errorf("message %d: got %s qos %d id %d dup %v retained %v %d B, want %s qos %d id %d dup %v retained %v %d B",
						i, g.topic, g.qos, g.id, g.dup, g.retained, len(g.payload), w.topic, w.qos, w.id, w.dup, w.retained, len(w.payload))
				}
			}
		})
	}
}

// packetName names the packet types the stream above holds.
func packetName(p packets.ControlPacket) string {
	switch p.(type) {
	case *packets.ConnackPacket:
		return "CONNACK"
	case *packets.SubackPacket:
		return "SUBACK"
	case *packets.PublishPacket:
		return "PUBLISH"
	case *packets.PingrespPacket:
		return "PINGRESP"
	}
	return "other"
}

// TestReadRefusesMalformedPublish: a PUBLISH whose topic length runs past
// its packet, or a QoS 1 PUBLISH with no room for its packet id, or any
// packet whose remaining length goes on past four bytes, ends the
// connection (paho reports the error) instead of being delivered (or, for
// the length, read again for ever).
func TestReadRefusesMalformedPublish(t *testing.T) {
	for name, pkt := range map[string][]byte{
		"topic past the end": {0x32, 0x04, 0x00, 0x09, 'a', 'b'},
		"no packet id":       {0x32, 0x03, 0x00, 0x01, 'a'},
		"empty":              {0x30, 0x00},
		"five length bytes":  {0xd0, 0x80, 0x80, 0x80, 0x80, 0x00},
	} {
		t.Run(name, func(t *testing.T) {
			c := newBufferedConn(readerConn{r: bytes.NewReader(pkt)}, 0)
			defer c.Close()
			c.onPublish = func(m *publishMsg) { t.Errorf("delivered %+v", m) }
			if _, err := packets.ReadPacket(c); !errors.Is(err, errMalformed) {
				t.Fatalf("got %v, want errMalformed", err)
			}
		})
	}
}

// FuzzReadPackets: whatever bytes the broker sends, Read either delivers
// packets or fails; it never spins, panics or hands out a payload longer
// than what was sent.
func FuzzReadPackets(f *testing.F) {
	f.Add([]byte{0x32, 0x04, 0x00, 0x09, 'a', 'b'})
	f.Add([]byte{0xd0, 0x80, 0x80, 0x80, 0x80, 0x00})
	f.Add([]byte{0x20, 0x02, 0x00, 0x00, 0x30, 0x05, 0x00, 0x01, 't', 'h', 'i', 0xd0, 0x00})
	f.Add([]byte{0x32, 0x08, 0x00, 0x01, 'a', 0x01, 0x2c, '{', '}', '\n', 0x3b, 0x03, 0x00, 0x01, 'b'})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := newBufferedConn(readerConn{r: bytes.NewReader(data)}, 0)
		defer c.Close()
		c.onPublish = func(m *publishMsg) {
			if len(m.payload)+len(m.topic) > len(data) {
				t.Fatalf("message of %d+%d bytes from %d", len(m.topic), len(m.payload), len(data))
			}
		}
		for range len(data)/2 + 1 { // every packet is at least 2 bytes
			if _, err := packets.ReadPacket(c); err != nil {
				return
			}
		}
		t.Fatal("more packets read than the bytes hold")
	})
}
