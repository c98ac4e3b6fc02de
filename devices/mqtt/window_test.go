package mqtt

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/episoded/episoded/devices"
)

// floodServer is a deliberately badly behaved MQTT 3.1.1 server, written
// for TestMaxPendingBytesHoldsAgainstAFlood: after every SUBSCRIBE it
// writes every QoS 1 message the client has not acknowledged yet, as fast
// as the socket takes them, ignoring any in-flight window (mosquitto
// 2.0.11 was seen sending 15,000 at once after an ack burst; this server
// sends all of them). It redelivers unacknowledged messages with DUP on
// the next connection, as a real broker's persistent session does, and
// answers PINGREQ and UNSUBSCRIBE (the Client's ack barrier). No real
// broker can be told to ignore its window, hence this server.
type floodServer struct {
	t        *testing.T
	ln       net.Listener
	payloads [][]byte // message id i+1 carries payloads[i]

	mu struct {
		sync.Mutex
		conns int
		// ackedOn[id] is the connection (1-based) whose PUBACK for id
		// arrived first; 0 while unacknowledged.
		ackedOn map[uint16]int
		acks    int
	}
}

func newFloodServer(t *testing.T, payloads [][]byte) *floodServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &floodServer{t: t, ln: ln, payloads: payloads}
	s.mu.ackedOn = map[uint16]int{}
	go s.accept()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *floodServer) url() string { return "tcp://" + s.ln.Addr().String() }

func (s *floodServer) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.mu.conns++
		n := s.mu.conns
		s.mu.Unlock()
		go s.serve(c, n)
	}
}

// acked returns how many messages are acknowledged, and the connection
// each acknowledgement came on.
func (s *floodServer) acked() (int, map[uint16]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[uint16]int, len(s.mu.ackedOn))
	for k, v := range s.mu.ackedOn {
		m[k] = v
	}
	return s.mu.acks, m
}

func (s *floodServer) serve(c net.Conn, conn int) {
	defer c.Close()
	br := bufio.NewReader(c)
	var wmu sync.Mutex
	bw := bufio.NewWriterSize(c, 64<<10)
	send := func(p packets.ControlPacket) error {
		wmu.Lock()
		defer wmu.Unlock()
		if err := p.Write(bw); err != nil {
			return err
		}
		return bw.Flush()
	}
	p, err := packets.ReadPacket(br)
	if err != nil {
		return
	}
	if _, ok := p.(*packets.ConnectPacket); !ok {
		return
	}
	ca := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
	ca.SessionPresent = conn > 1
	if send(ca) != nil {
		return
	}
	for {
		p, err := packets.ReadPacket(br)
		if err != nil {
			return
		}
		switch p := p.(type) {
		case *packets.SubscribePacket:
			sa := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
			sa.MessageID = p.MessageID
			sa.ReturnCodes = make([]byte, len(p.Topics))
			for i := range sa.ReturnCodes {
				sa.ReturnCodes[i] = 1
			}
			if send(sa) != nil {
				return
			}
			go s.flood(conn, &wmu, bw)
		case *packets.PubackPacket:
			s.mu.Lock()
			if s.mu.ackedOn[p.MessageID] == 0 {
				s.mu.ackedOn[p.MessageID] = conn
				s.mu.acks++
			}
			s.mu.Unlock()
		case *packets.UnsubscribePacket:
			ua := packets.NewControlPacket(packets.Unsuback).(*packets.UnsubackPacket)
			ua.MessageID = p.MessageID
			if send(ua) != nil {
				return
			}
		case *packets.PingreqPacket:
			if send(packets.NewControlPacket(packets.Pingresp)) != nil {
				return
			}
		case *packets.DisconnectPacket:
			return
		}
	}
}

// flood writes every unacknowledged message without waiting for a single
// PUBACK.
func (s *floodServer) flood(conn int, wmu *sync.Mutex, bw *bufio.Writer) {
	for i, payload := range s.payloads {
		id := uint16(i + 1)
		s.mu.Lock()
		done := s.mu.ackedOn[id] != 0
		s.mu.Unlock()
		if done {
			continue
		}
		pp := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		pp.Qos, pp.TopicName, pp.MessageID, pp.Payload, pp.Dup = 1, "flood/robot", id, payload, conn > 1
		wmu.Lock()
		err := pp.Write(bw)
		wmu.Unlock()
		if err != nil {
			return
		}
	}
	wmu.Lock()
	_ = bw.Flush()
	wmu.Unlock()
}

// TestMaxPendingBytesHoldsAgainstAFlood: a server that ignores its
// in-flight window (floodServer) sends 300 QoS 1 messages of 4000 B at
// once while the sink makes nothing durable. What the Client holds
// unacknowledged stays at or under MaxPendingBytes (Stats.PendingBytesMax,
// the high-water mark of the counted bytes), the server receives no PUBACK
// at all while nothing is durable, and no PUBACK on the first connection
// for a message beyond the limit. Once the sink drains, the Client
// reconnects as often as it takes and every message is stored and
// acknowledged, with the bound holding throughout.
func TestMaxPendingBytesHoldsAgainstAFlood(t *testing.T) {
	const (
		n       = 300
		size    = 4000
		limit   = 256 << 10
		perConn = limit / (2*size + heldOverhead) // messages that fit
	)
	payloads := make([][]byte, n)
	for i := range payloads {
		head := fmt.Sprintf(`{"header":{"stamp":%d},"id":%d,"pad":"`, 1_700_000_000_000_000_000+int64(i)*1_000_000, i+1)
		payloads[i] = []byte(head + strings.Repeat("x", size-len(head)-2) + `"}`)
	}
	srv := newFloodServer(t, payloads)
	b, err := NewClient(ClientOptions{
		ID: "flood", URL: srv.url(), ClientID: "episoded-flood",
		MaxPendingBytes: limit,
		// Long enough to wait for the gated sink below; the test opens the
		// gate as soon as it has checked what is held.
		DrainTimeout: 2 * time.Minute,
		Backoff:      devices.BackoffPolicy{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.AddDevice(DeviceOptions{Device: "robot", Topics: []string{"flood/#"}, TimeField: "header.stamp"}); err != nil {
		t.Fatal(err)
	}
	sink := newMemSink(5 * time.Millisecond) // gated: run() is not started yet
	runClient(t, b, sink)

	// The flood hits the bound: the first message beyond it is refused.
	waitFor(t, 60*time.Second, "the flood to reach max_pending_bytes", func() bool {
		st := b.Stats()
		return st.Overflow > 0 && st.Refused+st.Overflow > 0 && sink.count() > 0
	})
	st := b.Stats()
	acks, _ := srv.acked()
	t.Logf("held before the sink drains: %d messages in the sink, %d acks pending, %d bytes counted (limit %d), overflow %d, refused %d",
		sink.count(), st.AcksPending, st.PendingBytes, limit, st.Overflow, st.Refused)
	if st.PendingBytesMax > limit {
		t.Errorf("pending bytes reached %d, over the limit %d", st.PendingBytesMax, limit)
	}
	if st.AcksPending > perConn {
		t.Errorf("%d messages held unacknowledged, more than the %d that fit in %d bytes", st.AcksPending, perConn, limit)
	}
	if c := sink.count(); c > perConn {
		t.Errorf("%d messages handed to the sink, more than the %d that fit", c, perConn)
	}
	if acks != 0 {
		t.Errorf("the server received %d PUBACKs before anything was durable", acks)
	}

	// Drain: the sink now makes everything durable every 5 ms.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sink.run(ctx)
	waitFor(t, 2*time.Minute, "every message acknowledged", func() bool {
		a, _ := srv.acked()
		return a == n
	})
	_, ackedOn := srv.acked()
	for id, conn := range ackedOn {
		if conn == 1 && int(id) > perConn {
			t.Errorf("message %d (beyond the %d that fit) was acknowledged on the first connection", id, perConn)
		}
	}
	seen := map[int]int{}
	samples, _ := sink.snapshot()
	for _, x := range samples {
		var v struct{ ID int }
		if err := json.Unmarshal(x.Payload, &v); err != nil {
			t.Fatalf("stored payload: %v", err)
		}
		seen[v.ID]++
	}
	dups := 0
	for id := 1; id <= n; id++ {
		switch c := seen[id]; {
		case c == 0:
			t.Errorf("message %d acknowledged but never stored", id)
		case c > 1:
			dups += c - 1
		}
	}
	st = b.Stats()
	srv.mu.Lock()
	conns := srv.mu.conns
	srv.mu.Unlock()
	t.Logf("after the drain: %d connections, %d stored (%d duplicates), peak %d bytes counted (limit %d), overflow %d, refused %d",
		conns, len(samples), dups, st.PendingBytesMax, limit, st.Overflow, st.Refused)
	if st.PendingBytesMax > limit {
		t.Errorf("pending bytes reached %d, over the limit %d", st.PendingBytesMax, limit)
	}
}
