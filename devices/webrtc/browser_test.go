package webrtc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/episoded/episoded/sample"
)

// browserPage is served to Chromium: it plays a WHEP stream and reports
// the inbound-rtp stats (frames decoded, size) to /report.
const browserPage = `<!doctype html><html><body><script>
(async () => {
  const report = (o) => fetch('/report', {method: 'POST', body: JSON.stringify(o)});
  try {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('video', {direction: 'recvonly'});
    const v = document.createElement('video');
    v.muted = true; v.autoplay = true; v.playsInline = true;
    document.body.appendChild(v);
    pc.ontrack = (e) => { v.srcObject = e.streams[0] || new MediaStream([e.track]); v.play().catch(() => {}); };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => {
      if (pc.iceGatheringState === 'complete') return r();
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') r(); };
      setTimeout(r, 3000);
    });
    const res = await fetch(WHEP_PATH, {method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: pc.localDescription.sdp});
    if (res.status !== 201) { await report({error: 'POST ' + res.status + ': ' + await res.text()}); return; }
    await pc.setRemoteDescription({type: 'answer', sdp: await res.text()});
    const t0 = performance.now();
    for (;;) {
      await new Promise((r) => setTimeout(r, 200));
      let st = {};
      (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') st = s; });
      if ((st.framesDecoded || 0) >= 45 || performance.now() - t0 > 20000) {
        await report({decoded: st.framesDecoded || 0, keyframes: st.keyFramesDecoded || 0, width: st.frameWidth || 0,
          height: st.frameHeight || 0, dropped: st.framesDropped || 0, state: pc.connectionState});
        return;
      }
    }
  } catch (e) { await report({error: String(e)}); }
})();
</script></body></html>`

// browserWHIPPage publishes Chromium's fake camera over WHIP, H.264 only,
// and reports once it has sent frames (in the report, "decoded" and
// "keyframes" carry the frames and keyframes encoded).
const browserWHIPPage = `<!doctype html><html><body><script>
(async () => {
  const report = (o) => fetch('/report', {method: 'POST', body: JSON.stringify(o)});
  try {
    const media = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240, frameRate: 30}});
    const pc = new RTCPeerConnection();
    const tr = pc.addTransceiver(media.getVideoTracks()[0], {direction: 'sendonly'});
    const h264 = RTCRtpSender.getCapabilities('video').codecs.filter((c) => c.mimeType.toLowerCase() === 'video/h264');
    if (h264.length === 0) { await report({error: 'this browser has no H.264 encoder'}); return; }
    tr.setCodecPreferences(h264);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => {
      if (pc.iceGatheringState === 'complete') return r();
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') r(); };
      setTimeout(r, 3000);
    });
    const res = await fetch(WHEP_PATH, {method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: pc.localDescription.sdp});
    if (res.status !== 201) { await report({error: 'POST ' + res.status + ': ' + await res.text()}); return; }
    await pc.setRemoteDescription({type: 'answer', sdp: await res.text()});
    const t0 = performance.now();
    for (;;) {
      await new Promise((r) => setTimeout(r, 200));
      let st = {};
      (await pc.getStats()).forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'video') st = s; });
      if ((st.framesEncoded || 0) >= 90 || performance.now() - t0 > 20000) {
        await report({decoded: st.framesEncoded || 0, keyframes: st.keyFramesEncoded || 0, width: st.frameWidth || 0,
          height: st.frameHeight || 0, state: pc.connectionState});
        return;
      }
    }
  } catch (e) { await report({error: String(e)}); }
})();
</script></body></html>`

type browserReport struct {
	Error     string `json:"error"`
	Decoded   int    `json:"decoded"`
	Keyframes int    `json:"keyframes"`
	Width     int    `json:"width"`
	Height    int    `json:"height"`
	Dropped   int    `json:"dropped"`
	State     string `json:"state"`
}

// A real browser (headless Chromium, an independent WebRTC stack and H.264
// decoder) plays the live WHEP preview: it decodes frames of the clip's
// size.
func TestBrowserWHEP(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Chromium; skipped in -short mode")
	}
	hub := NewHub(testLogger())
	ts := startServer(t, Options{}, hub, nil)
	aus := clipAUs(t)
	d := liveDesc
	d.Params = clipParams(t)
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(time.Second / 30)
		defer tick.Stop()
		for i := 0; ; i++ {
			hub.Publish(d, clipSample(aus, i, time.Now().UnixNano()))
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { close(stop); <-stopped }()

	rep, out := runBrowser(t, ts, browserPage, "/whep/"+d.Stream)
	t.Logf("chromium: %+v", rep)
	if rep.Error != "" {
		t.Fatalf("browser: %s\nchromium output:\n%s", rep.Error, out)
	}
	if rep.Decoded < 45 || rep.Keyframes < 1 || rep.Width != 320 || rep.Height != 240 {
		t.Fatalf("browser decoded %d frames (%d keyframes) at %dx%d; want >= 45 frames at 320x240", rep.Decoded,
			rep.Keyframes, rep.Width, rep.Height)
	}
}

// runBrowser serves page (with WHEP_PATH replaced by path) to headless
// Chromium and returns the page's report and Chromium's output. The page
// and /report come from a second server that proxies POSTs under /whep/
// and /whip/ to ts, so the page's origin and the endpoint are the same.
func runBrowser(t *testing.T, ts *testServer, pageHTML, path string) (browserReport, string) {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is required for the browser tests: apt-get install chromium")
	}
	reports := make(chan browserReport, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, strings.Replace(pageHTML, "WHEP_PATH", fmt.Sprintf("%q", path), 1))
	})
	mux.HandleFunc("POST /report", func(w http.ResponseWriter, r *http.Request) {
		var rep browserReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
			rep.Error = "bad report: " + err.Error()
		}
		select {
		case reports <- rep:
		default:
		}
	})
	proxy := func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), "POST", ts.url+r.URL.Path, r.Body)
		req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}
	mux.HandleFunc("POST /whep/", proxy)
	mux.HandleFunc("POST /whip/", proxy)
	page := newHTTPServer(t, mux)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	cmd := exec.CommandContext(ctx, chromium,
		"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(),
		"--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
		"--autoplay-policy=no-user-gesture-required",
		"--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
		page+"/")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	select {
	case rep := <-reports:
		return rep, out.String()
	case <-ctx.Done():
		t.Fatalf("no report from chromium within 90 s; its output:\n%s", out.String())
	}
	return browserReport{}, ""
}

// syncBuffer is a bytes.Buffer safe for a child's stdout and stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A real browser (Chromium's fake camera and its own H.264 encoder and
// RTP stack) publishes over WHIP: the recording starts with a keyframe,
// has the browser's SPS/PPS in its descriptor, gets SrcT from the
// browser's sender reports, and decodes with ffprobe.
func TestBrowserWHIP(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Chromium; skipped in -short mode")
	}
	ts := startServer(t, Options{}, nil, nil, whipBase)
	rep, out := runBrowser(t, ts, browserWHIPPage, "/whip/"+whipBase.Stream)
	t.Logf("chromium: %+v", rep)
	if rep.Error != "" {
		t.Fatalf("browser: %s\nchromium output:\n%s", rep.Error, out)
	}
	waitFor(t, 10*time.Second, "60 recorded frames", func() bool { return ts.sink.count() >= 60 })
	descs, got := ts.sink.snapshot()
	if len(descs) == 0 || len(descs[0].Params) != 2 || descs[0].Params[0][0]&0x1f != 7 || descs[0].Params[1][0]&0x1f != 8 {
		t.Fatalf("descriptors %+v: want SPS and PPS", descs)
	}
	if !got[0].Flags.Has(sample.Keyframe) {
		t.Fatal("first recorded sample is not a keyframe")
	}
	var withSrcT int
	var aus [][]byte
	for i, s := range got {
		if s.SrcT != 0 {
			withSrcT++
			// Chromium's NTP clock is this machine's wall clock.
			if d := time.Duration(s.RecvT - s.SrcT); d < -time.Second || d > 5*time.Second {
				t.Fatalf("sample %d: RecvT - SrcT = %v", i, d)
			}
		}
		aus = append(aus, s.Payload)
	}
	if withSrcT == 0 {
		t.Fatal("no sample got SrcT from the browser's sender reports")
	}
	if err := startsDecodable(got[0].Payload); err != nil {
		t.Fatal(err)
	}
	decodeCheck(t, aus)
}
