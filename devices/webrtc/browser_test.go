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
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is required for the browser WHEP test: apt-get install chromium")
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

	// The page and /report come from a second server that proxies the
	// WHEP POST, so the page's origin and the endpoint are the same.
	reports := make(chan browserReport, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, strings.Replace(browserPage, "WHEP_PATH", fmt.Sprintf("%q", "/whep/"+d.Stream), 1))
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
	mux.HandleFunc("POST /whep/", func(w http.ResponseWriter, r *http.Request) {
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
	})
	page := newHTTPServer(t, mux)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium,
		"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(),
		"--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
		"--autoplay-policy=no-user-gesture-required",
		page+"/")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
	}()
	var rep browserReport
	select {
	case rep = <-reports:
	case <-ctx.Done():
		t.Fatalf("no report from chromium within 90 s; its output:\n%s", out.String())
	}
	t.Logf("chromium: %+v", rep)
	if rep.Error != "" {
		t.Fatalf("browser: %s\nchromium output:\n%s", rep.Error, out.String())
	}
	if rep.Decoded < 45 || rep.Keyframes < 1 || rep.Width != 320 || rep.Height != 240 {
		t.Fatalf("browser decoded %d frames (%d keyframes) at %dx%d; want >= 45 frames at 320x240", rep.Decoded,
			rep.Keyframes, rep.Width, rep.Height)
	}
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
