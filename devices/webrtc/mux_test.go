package webrtc

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// With UDPPort set, every session's ICE runs on that one port.
func TestSingleUDPPort(t *testing.T) {
	// Find a free port. Another process could take it before the server
	// binds it; on a test machine that is unlikely.
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := c.LocalAddr().(*net.UDPAddr).Port
	c.Close()

	ts := startServer(t, Options{UDPPort: port}, nil, nil, whipBase)
	p := newPublisher(t, ts.url+"/whip/"+whipBase.Stream, time.Now())
	answer := p.pc.RemoteDescription().SDP
	var cands []string
	for _, l := range strings.Split(answer, "\r\n") {
		if strings.HasPrefix(l, "a=candidate:") {
			cands = append(cands, l)
			// foundation component transport priority address port ...
			f := strings.Fields(l)
			if len(f) < 8 || f[5] != strconv.Itoa(port) || f[2] != "udp" || f[7] != "host" {
				t.Errorf("candidate %q is not a UDP host candidate on port %d", l, port)
			}
		}
	}
	if len(cands) == 0 {
		t.Fatal("answer has no candidates")
	}
	aus := clipAUs(t)
	for i := 0; i < 30; i++ {
		p.write(p.packets(i, aus[i]))
	}
	waitFor(t, 10*time.Second, "30 frames through the muxed port", func() bool { return ts.sink.count() >= 30 })

	// A second session (WHEP) shares the port.
	d := liveDesc
	d.Params = clipParams(t)
	ts.Hub().Publish(d, clipSample(aus, 0, 1))
	pc, v, _ := newViewer(t, ts.url+"/whep/"+d.Stream)
	if !strings.Contains(pc.RemoteDescription().SDP, " "+strconv.Itoa(port)+" typ host") {
		t.Fatalf("WHEP answer does not use port %d:\n%s", port, pc.RemoteDescription().SDP)
	}
	waitConnected(t, pc)
	select {
	case <-v.ch:
	case <-time.After(10 * time.Second):
		t.Fatal("second session on the shared port got no frame")
	}
}
