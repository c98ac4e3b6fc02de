package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func start(t *testing.T, o Options) (*Server, string) {
	t.Helper()
	o.Listen = "127.0.0.1:0"
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "episoded_test_total"}))
	o.Gatherer, o.Registerer = reg, reg
	s := New(o)
	s.HandleFunc("POST /v1/things", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 201, map[string]string{"ok": "yes"}) })
	s.HandleFunc("GET /v1/things", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, []string{}) })
	s.HandleFunc("POST /v1/json", func(w http.ResponseWriter, r *http.Request) {
		var v map[string]any
		if ReadJSON(w, r, &v, true) {
			WriteJSON(w, 200, v)
		}
	})
	s.AddStatus("widgets", func() any { return map[string]int{"count": 3} })
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return s, "http://" + s.Addr()
}

func do(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader("{}"))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestProbesAndStatus(t *testing.T) {
	s, base := start(t, Options{Info: map[string]any{"version": "v-test"}})
	if code, _ := do(t, "GET", base+"/healthz", ""); code != 200 {
		t.Fatalf("healthz = %d", code)
	}
	if code, _ := do(t, "GET", base+"/readyz", ""); code != 503 {
		t.Fatalf("readyz before ready = %d, want 503", code)
	}
	s.SetReady(true)
	if code, _ := do(t, "GET", base+"/readyz", ""); code != 200 {
		t.Fatalf("readyz after ready = %d", code)
	}
	code, body := do(t, "GET", base+"/metrics", "")
	if code != 200 || !strings.Contains(body, "episoded_test_total") {
		t.Fatalf("metrics = %d %q", code, body)
	}
	code, body = do(t, "GET", base+"/v1/status", "")
	var st map[string]any
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("status = %d %q", code, body)
	}
	if st["version"] != "v-test" || st["ready"] != true || st["widgets"].(map[string]any)["count"] != 3.0 {
		t.Fatalf("status body: %v", st)
	}
}

func TestAuth(t *testing.T) {
	_, base := start(t, Options{Token: "let-me-in-123", ReadToken: "just-looking-456"})
	if code, body := do(t, "POST", base+"/v1/things", ""); code != 401 || strings.Contains(body, "let-me-in") {
		t.Fatalf("POST without token = %d %q, want 401 without the token in the body", code, body)
	}
	if code, _ := do(t, "POST", base+"/v1/things", "wrong"); code != 401 {
		t.Fatalf("POST with wrong token = %d, want 401", code)
	}
	if code, _ := do(t, "POST", base+"/v1/things", "let-me-in-123"); code != 201 {
		t.Fatalf("POST with token = %d, want 201", code)
	}
	if code, _ := do(t, "POST", base+"/v1/things", "just-looking-456"); code != 403 {
		t.Fatalf("POST with the read token = %d, want 403", code)
	}
	if code, _ := do(t, "GET", base+"/v1/things", ""); code != 401 {
		t.Fatalf("GET without token = %d, want 401 (reads need a token too)", code)
	}
	if code, _ := do(t, "GET", base+"/v1/things", "just-looking-456"); code != 200 {
		t.Fatalf("GET with the read token = %d, want 200", code)
	}
	if code, _ := do(t, "DELETE", base+"/whip/cam/session1", ""); code != 401 {
		t.Fatalf("DELETE on whip without token = %d, want 401", code)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, _ := do(t, "GET", base+p, ""); code == 401 {
			t.Fatalf("GET %s without token = 401; probes stay open", p)
		}
	}
	if code, _ := do(t, "GET", base+"/metrics", ""); code != 401 {
		t.Fatalf("GET /metrics without token = %d, want 401", code)
	}
	code, body := do(t, "GET", base+"/metrics", "just-looking-456")
	if code != 200 {
		t.Fatalf("GET /metrics with the read token = %d, want 200", code)
	}
	for _, want := range []string{`episoded_api_refused_total{reason="token"} 5`, `episoded_api_refused_total{reason="role"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, body)
		}
	}
}

func TestMetricsOpen(t *testing.T) {
	_, base := start(t, Options{Token: "let-me-in-123", MetricsOpen: true})
	if code, _ := do(t, "GET", base+"/metrics", ""); code != 200 {
		t.Fatalf("GET /metrics without token, metrics_open = %d, want 200", code)
	}
	if code, _ := do(t, "GET", base+"/v1/status", ""); code != 401 {
		t.Fatalf("GET /v1/status without token, metrics_open = %d, want 401", code)
	}
}

// TestBearerSchemeCaseInsensitive: RFC 9110 makes the auth scheme
// case-insensitive; curl users write "bearer", some proxies "BEARER".
func TestBearerSchemeCaseInsensitive(t *testing.T) {
	_, base := start(t, Options{Token: "let-me-in-123"})
	for _, h := range []string{"Bearer let-me-in-123", "bearer let-me-in-123", "BEARER let-me-in-123", "bEaReR   let-me-in-123 "} {
		req, _ := http.NewRequest("POST", base+"/v1/things", nil)
		req.Header.Set("Authorization", h)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Errorf("Authorization %q: %d, want 201", h, resp.StatusCode)
		}
	}
	for _, h := range []string{"Basic let-me-in-123", "Bearerlet-me-in-123", "let-me-in-123", "Bearer let-me-in-1234", "Bearer "} {
		req, _ := http.NewRequest("POST", base+"/v1/things", nil)
		req.Header.Set("Authorization", h)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("Authorization %q: %d, want 401", h, resp.StatusCode)
		}
	}
}

func TestNoTokenConfiguredAllowsMutations(t *testing.T) {
	_, base := start(t, Options{})
	if code, _ := do(t, "POST", base+"/v1/things", ""); code != 201 {
		t.Fatalf("POST = %d, want 201", code)
	}
}

func TestListenFailsOnBusyPort(t *testing.T) {
	s, _ := start(t, Options{})
	other := New(Options{Listen: s.Addr()})
	if err := other.Listen(); err == nil || !strings.Contains(err.Error(), "listen on "+s.Addr()) {
		t.Fatalf("Listen on a busy port: %v", err)
	}
}

func send(t *testing.T, method, url string, hdr map[string]string, body io.Reader) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestBodyLimits: a JSON body needs its content type (415), a body over
// the limit gets 413 whether its length is declared or not, and one under
// it goes through.
func TestBodyLimits(t *testing.T) {
	_, base := start(t, Options{MaxBody: 1000})
	js := map[string]string{"Content-Type": "application/json"}
	if code := send(t, "POST", base+"/v1/json", js, strings.NewReader(`{"a":1}`)); code != 200 {
		t.Errorf("small JSON body: %d, want 200", code)
	}
	if code := send(t, "POST", base+"/v1/json", nil, nil); code != 200 {
		t.Errorf("no body: %d, want 200", code)
	}
	big := `{"a":"` + strings.Repeat("x", 2000) + `"}`
	if code := send(t, "POST", base+"/v1/json", js, strings.NewReader(big)); code != 413 {
		t.Errorf("declared body over the limit: %d, want 413", code)
	}
	// Chunked: no Content-Length, so the limit is hit while decoding.
	if code := send(t, "POST", base+"/v1/json", js, io.MultiReader(strings.NewReader(big))); code != 413 {
		t.Errorf("chunked body over the limit: %d, want 413", code)
	}
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"} {
		if code := send(t, "POST", base+"/v1/json", map[string]string{"Content-Type": ct}, strings.NewReader(`{"a":1}`)); code != 415 {
			t.Errorf("Content-Type %s: %d, want 415", ct, code)
		}
	}
	if code := send(t, "POST", base+"/v1/json", js, strings.NewReader(`{"a":1} x`)); code != 400 {
		t.Errorf("trailing garbage: %d, want 400", code)
	}
}

func TestHostAndOrigin(t *testing.T) {
	_, base := start(t, Options{AllowedHosts: []string{"Gateway-7.factory.lan"}})
	for host, want := range map[string]int{
		"attacker.example":             421,
		"attacker.example:7480":        421,
		"localhost:7480":               200,
		"LOCALHOST.":                   200,
		"10.1.2.3:7480":                200,
		"[::1]:7480":                   200,
		"gateway-7.factory.lan:7480":   200,
		"gateway-7.factory.lan.:80":    200,
		"gateway-7.factory.lan.evil.x": 421,
	} {
		if code := send(t, "GET", base+"/v1/things", map[string]string{"Host": host}, nil); code != want {
			t.Errorf("Host %q: %d, want %d", host, code, want)
		}
	}
	if code := send(t, "GET", base+"/healthz", map[string]string{"Host": "attacker.example"}, nil); code != 200 {
		t.Errorf("probe with a foreign Host: %d, want 200", code)
	}
	evil := map[string]string{"Origin": "http://evil.example", "Content-Type": "text/plain"}
	if code := send(t, "POST", base+"/v1/things", evil, strings.NewReader("x")); code != 403 {
		t.Errorf("cross-origin POST: %d, want 403", code)
	}
	if code := send(t, "POST", base+"/v1/things", map[string]string{"Sec-Fetch-Site": "cross-site"}, nil); code != 403 {
		t.Errorf("Sec-Fetch-Site cross-site POST: %d, want 403", code)
	}
	if code := send(t, "POST", base+"/v1/things", map[string]string{"Sec-Fetch-Site": "same-site"}, nil); code != 403 {
		t.Errorf("Sec-Fetch-Site same-site POST (another port of the gateway): %d, want 403", code)
	}
	if code := send(t, "POST", base+"/v1/things", map[string]string{"Sec-Fetch-Site": "same-origin"}, nil); code != 201 {
		t.Errorf("same-origin POST: %d, want 201", code)
	}
	if code := send(t, "POST", base+"/v1/things", map[string]string{"Origin": base}, nil); code != 201 {
		t.Errorf("POST with its own Origin: %d, want 201", code)
	}
	if code := send(t, "GET", base+"/v1/things", evil, nil); code != 200 {
		t.Errorf("cross-origin GET: %d, want 200 (a read changes nothing; the browser keeps the answer from the page)", code)
	}
}

// TestOpenOnlyByRegistration: a route outside /v1 needs a token unless it
// was registered with HandleOpen, and an open catch-all never opens an API
// path.
func TestOpenOnlyByRegistration(t *testing.T) {
	o := Options{Listen: "127.0.0.1:0", Token: "let-me-in-123", Gatherer: prometheus.NewRegistry()}
	s := New(o)
	s.HandleFunc("GET /debug/thing", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, "secret") })
	s.HandleOpen("GET /", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, "page") }))
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	for path, want := range map[string]int{"/debug/thing": 401, "/": 200, "/app.js": 200, "/v1/unknown": 401, "/whep/x": 401} {
		if code, _ := do(t, "GET", srv.URL+path, ""); code != want {
			t.Errorf("GET %s without token: %d, want %d", path, code, want)
		}
	}
	for _, r := range s.Routes() {
		want := map[string]Access{"GET /healthz": Open, "GET /readyz": Open, "GET /metrics": Metrics, "GET /v1/status": Read, "GET /debug/thing": Admin, "GET /": Open}[r.Pattern]
		if r.Access != want {
			t.Errorf("route %s: access %s, want %s", r.Pattern, r.Access, want)
		}
	}
}
