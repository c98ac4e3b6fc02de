package webrtc

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/episoded/episoded/sample"
)

// Bad input gets a clear 4xx and opens no session.
func TestBadRequests(t *testing.T) {
	hub := NewHub(nil)
	h265 := sample.Descriptor{Stream: "cell1/cam-hevc", Kind: sample.KindVideo, Codec: sample.CodecH265}
	hub.Publish(h265, sample.Sample{Stream: h265.Stream, Flags: sample.Keyframe, Payload: []byte{0, 0, 0, 1, 0x26, 1}})
	d := liveDesc
	d.Params = clipParams(t)
	hub.Publish(d, clipSample(clipAUs(t), 0, 1))
	ts := startServer(t, Options{}, hub, nil, whipBase)

	pc, err := peerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	offer := recvOffer(t, pc)
	audioOnly := "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
	vp8Only := "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n"

	for _, c := range []struct {
		name, method, path, ct, body string
		code                         int
		msg                          string
	}{
		{"malformed offer (whip)", "POST", "/whip/" + whipBase.Stream, "application/sdp", "this is not SDP", 400, "malformed SDP offer"},
		{"malformed offer (whep)", "POST", "/whep/" + d.Stream, "application/sdp", "v=0\r\nbogus", 400, "malformed SDP offer"},
		{"empty offer", "POST", "/whep/" + d.Stream, "application/sdp", "", 400, "SDP offer"},
		{"no video", "POST", "/whep/" + d.Stream, "application/sdp", audioOnly, 400, "no video section"},
		{"no h264", "POST", "/whip/" + whipBase.Stream, "application/sdp", vp8Only, 400, "H.264"},
		{"wrong content type", "POST", "/whep/" + d.Stream, "application/json", offer, 415, "application/sdp"},
		{"unknown whip stream", "POST", "/whip/cell1/nope", "application/sdp", offer, 404, "not a WHIP stream"},
		{"unknown live stream", "POST", "/whep/cell1/nope", "application/sdp", offer, 404, "not live"},
		{"h265 live stream", "POST", "/whep/" + h265.Stream, "application/sdp", offer, 415, "H.264 only"},
		{"replay without store", "POST", "/whep/episodes/x/" + d.Stream, "application/sdp", offer, 404, "replay is not available"},
		{"delete unknown whip session", "DELETE", "/whip/sessions/0123", "", "", 404, "no such session"},
		{"delete unknown whep session", "DELETE", "/whep/sessions/0123", "", "", 404, "no such session"},
	} {
		code, body, hdr := do(t, c.method, ts.url+c.path, c.ct, c.body)
		// The API's one error format: {"error": "..."} (internal/httpjson).
		var e struct{ Error string }
		if err := json.Unmarshal([]byte(body), &e); err != nil || hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s: body %q (%s) is not a JSON error: %v", c.name, body, hdr.Get("Content-Type"), err)
		}
		if code != c.code || !strings.Contains(e.Error, c.msg) {
			t.Errorf("%s: %s %s = %d %q, want %d containing %q", c.name, c.method, c.path, code, body, c.code, c.msg)
		}
	}
	if st := ts.Stats(); len(st.Sessions) != 0 {
		t.Fatalf("bad requests left sessions: %+v", st.Sessions)
	}

	// A WHEP session id cannot be deleted through the WHIP route.
	_, _, loc := newViewer(t, ts.url+"/whep/"+d.Stream)
	id := loc[strings.LastIndex(loc, "/")+1:]
	if code, _, _ := do(t, "DELETE", ts.url+"/whip/sessions/"+id, "", ""); code != 404 {
		t.Fatalf("DELETE of a WHEP session via /whip = %d, want 404", code)
	}
	if code, _, _ := do(t, "DELETE", ts.url+loc, "", ""); code != 200 {
		t.Fatalf("DELETE %s = %d, want 200", loc, code)
	}
}

// A second publisher on a stream that has one gets 409.
func TestWHIPConflict(t *testing.T) {
	ts := startServer(t, Options{}, nil, nil, whipBase)
	newPublisher(t, ts.url+"/whip/"+whipBase.Stream, testNow())
	pc, err := peerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo,
		webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	offer, _ := pc.CreateOffer(nil)
	if code, body, _ := post(t, ts.url+"/whip/"+whipBase.Stream, offer.SDP); code != http.StatusConflict {
		t.Fatalf("second publisher: %d %s, want 409", code, body)
	}
}

// Before Run, POST answers 503.
func TestNotRunning(t *testing.T) {
	s, err := NewServer(Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.AddWHIPStream(whipBase)
	pc, err := peerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	offer := recvOffer(t, pc)
	req := httptest.NewRequest("POST", "/whip/"+whipBase.Stream, strings.NewReader(offer))
	req.Header.Set("Content-Type", "application/sdp")
	req.SetPathValue("stream", whipBase.Stream)
	rec := httptest.NewRecorder()
	s.HandleWHIP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("POST before Run = %d %s, want 503", rec.Code, rec.Body)
	}
}

// Options are validated all at once.
func TestOptionsValidate(t *testing.T) {
	_, err := NewServer(Options{UDPPort: 70000, Interfaces: []string{"eth0", ""}}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "udp_port: 70000") || !strings.Contains(err.Error(), "interfaces[1]") {
		t.Fatalf("NewServer with bad options: %v", err)
	}
}

// With no usable interface, POST answers 500 with a hint instead of an
// answer without candidates.
func TestNoCandidates(t *testing.T) {
	ts := startServer(t, Options{Interfaces: []string{"lo"}}, nil, nil, whipBase) // loopback not included
	pc, err := peerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo,
		webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	offer, _ := pc.CreateOffer(nil)
	code, body, _ := post(t, ts.url+"/whip/"+whipBase.Stream, offer.SDP)
	if code != http.StatusInternalServerError || !strings.Contains(body, "no ICE host candidates") {
		t.Fatalf("POST = %d %q, want 500 about candidates", code, body)
	}
	if st := ts.Stats(); len(st.Sessions) != 0 || st.WHIP[0].Publishing {
		t.Fatalf("failed POST left state: %+v", st)
	}
}

// A publisher that POSTs and never connects does not hold the stream:
// the session ends after the connect timeout.
func TestConnectTimeout(t *testing.T) {
	ts := startServer(t, Options{}, nil, nil, whipBase)
	ts.connectTimeout.Store(int64(300 * time.Millisecond))
	pc, err := peerAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo,
		webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	offer, _ := pc.CreateOffer(nil) // no candidates, and the answer is never applied
	if code, body, _ := post(t, ts.url+"/whip/"+whipBase.Stream, offer.SDP); code != http.StatusCreated {
		t.Fatalf("POST = %d %s", code, body)
	}
	if !ts.Stats().WHIP[0].Publishing {
		t.Fatal("stream not taken by the new session")
	}
	waitFor(t, 10*time.Second, "the unconnected session to end", func() bool {
		st := ts.Stats()
		return len(st.Sessions) == 0 && !st.WHIP[0].Publishing
	})
}
