package mqtt

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// TestSubscribeWhileTheBrokerResends: a broker that resends a session's
// unacknowledged messages before it reads SUBSCRIBE (mochi-mqtt, the
// embedded broker of demo and simulate, does: it writes its whole
// in-flight window after CONNACK) must not make the daemon give up on the
// SUBACK while the resend takes longer than subscribeTimeout: giving up
// starts the same resend again, for ever (found by
// TestEmbeddedBrokerDaemonCrash on a loaded machine).
//
// The broker here is a fake, written with paho's packet codec: the real
// one shows the behaviour only with a large backlog on a slow machine, and
// this test needs it every time.
func TestSubscribeWhileTheBrokerResends(t *testing.T) {
	old := subscribeTimeout
	subscribeTimeout = 300 * time.Millisecond
	t.Cleanup(func() { subscribeTimeout = old })
	const resent = 30 // one per 50 ms: 1.5 s, five subscribe timeouts
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan int, 10)
	go func() {
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- n
			go resendingBroker(c, resent)
		}
	}()
	b, _ := newTestClient(t, "tcp://"+ln.Addr().String(), "episoded-resend", nil)
	if err := b.AddDevice(DeviceOptions{Device: "robot", Topics: []string{"r/+/state"}, TimeField: "header.stamp"}); err != nil {
		t.Fatal(err)
	}
	sink := newMemSink(20 * time.Millisecond)
	ctx := t.Context()
	go sink.run(ctx)
	runClient(t, b, sink)
	waitFor(t, 30*time.Second, "subscribed", func() bool { return b.Stats().Connected })
	waitFor(t, 30*time.Second, "the resent messages stored", func() bool { return sink.count() >= resent })
	if st := b.Stats(); st.Reconnects != 0 || len(conns) != 1 {
		t.Fatalf("%d reconnects, %d connections: the daemon gave up on the SUBACK while messages arrived", st.Reconnects, len(conns))
	}
}

// resendingBroker answers CONNACK with a present session, writes n QoS 1
// messages 50 ms apart without reading, then reads SUBSCRIBE, answers it,
// and reads (and drops) whatever follows.
func resendingBroker(c net.Conn, n int) {
	defer c.Close()
	br := bufio.NewReader(c)
	if pk, err := packets.ReadPacket(br); err != nil {
		return
	} else if _, ok := pk.(*packets.ConnectPacket); !ok {
		return
	}
	ca := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
	ca.SessionPresent = true
	if ca.Write(c) != nil {
		return
	}
	for i := range n {
		pp := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		pp.Qos, pp.Dup, pp.TopicName, pp.MessageID = 1, true, "r/a/state", uint16(i+1)
		pp.Payload = []byte(telemLine("r/a/state", i, int64(1e18)+int64(i)))
		if pp.Write(c) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond) // pacing: the resend outlasts subscribeTimeout
	}
	for {
		pk, err := packets.ReadPacket(br)
		if err != nil {
			return
		}
		switch p := pk.(type) {
		case *packets.SubscribePacket:
			sa := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
			sa.MessageID = p.MessageID
			for range p.Topics {
				sa.ReturnCodes = append(sa.ReturnCodes, 1)
			}
			if sa.Write(c) != nil {
				return
			}
		case *packets.PingreqPacket:
			if packets.NewControlPacket(packets.Pingresp).Write(c) != nil {
				return
			}
		}
	}
}
