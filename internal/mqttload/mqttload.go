// Package mqttload is the telemetry publisher of the MQTT benchmarks
// (devices/mqtt and cmd/episoded): one MQTT 3.1.1 connection speaking
// paho's packet codec over a buffered socket, sending QoS 1 PUBLISH
// packets with at most Window unacknowledged. mosquitto_pub -l manages
// only about 9k msg/s (one write syscall per message), too slow to
// saturate a broker.
//
// Each message is a 200 B JSON telemetry message:
//
//	{"header":{"stamp":NS,"seq":I,"frame":"TOPIC"},"joint":[...6],"tool":{"x","y","z"},"io":255,"alarm":0}
//
// stamped with the time it is written to the socket (Unix ns). Stamp
// reads it back.
package mqttload

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Window is the publisher's own in-flight limit.
const Window = 1000

// Publish connects to addr (host:port) and sends n messages on topic, as
// fast as the broker acknowledges them (rate 0) or paced at rate msg/s.
// It returns once the broker acknowledged all of them.
func Publish(addr, topic string, n, rate int) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	bw := bufio.NewWriterSize(conn, 64<<10)
	br := bufio.NewReaderSize(conn, 64<<10)
	cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion, cp.CleanSession, cp.Keepalive = "MQTT", 4, true, 60
	cp.ClientIdentifier = fmt.Sprintf("bench-pub-%d-%s", os.Getpid(), topic)
	if err := cp.Write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if p, err := packets.ReadPacket(br); err != nil {
		return err
	} else if ca, ok := p.(*packets.ConnackPacket); !ok || ca.ReturnCode != 0 {
		return fmt.Errorf("connect refused: %v", p)
	}
	sem := make(chan struct{}, Window)
	done := make(chan error, 1)
	go func() {
		for acked := 0; acked < n; {
			p, err := packets.ReadPacket(br)
			if err != nil {
				done <- err
				return
			}
			if _, ok := p.(*packets.PubackPacket); ok {
				<-sem
				acked++
			}
		}
		done <- nil
	}()
	start := time.Now()
	var payload []byte
	for i := range n {
		select {
		case sem <- struct{}{}:
		default:
			if err := bw.Flush(); err != nil {
				return err
			}
			sem <- struct{}{}
		}
		if rate > 0 && i%10 == 0 {
			if d := time.Duration(float64(i)/float64(rate)*float64(time.Second)) - time.Since(start); d > 0 {
				if err := bw.Flush(); err != nil {
					return err
				}
				time.Sleep(d)
			}
		}
		payload = fmt.Appendf(payload[:0], `{"header":{"stamp":%d,"seq":%d,"frame":"%s"},"joint":[0.1234,0.2345,0.3456,1.4567,-2.5678,3.6789],"tool":{"x":0.51,"y":-0.22,"z":1.03},"io":255,"alarm":0}`,
			time.Now().UnixNano(), i, topic)
		pp := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		pp.Qos, pp.TopicName, pp.MessageID, pp.Payload = 1, topic, uint16(i%65535+1), payload
		if err := pp.Write(bw); err != nil {
			return err
		}
		if rate > 0 && bw.Buffered() > 0 && i%10 == 9 {
			// Paced: the stamp is the time the message leaves, not
			// when a full buffer happens to be flushed.
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return <-done
}

var stampKey = []byte(`"stamp":`)

// Stamp returns the publish time (Unix ns) of a payload written by
// Publish, or 0.
func Stamp(payload []byte) int64 {
	i := bytes.Index(payload, stampKey)
	if i < 0 {
		return 0
	}
	p := payload[i+len(stampKey):]
	j := 0
	for j < len(p) && p[j] >= '0' && p[j] <= '9' {
		j++
	}
	v, _ := strconv.ParseInt(string(p[:j]), 10, 64)
	return v
}
