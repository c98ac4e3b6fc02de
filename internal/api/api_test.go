package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
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
	o.Gatherer = reg
	s := New(o)
	s.HandleFunc("POST /v1/things", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 201, map[string]string{"ok": "yes"}) })
	s.HandleFunc("GET /v1/things", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, []string{}) })
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
	_, base := start(t, Options{Token: "let-me-in-123"})
	if code, body := do(t, "POST", base+"/v1/things", ""); code != 401 || strings.Contains(body, "let-me-in") {
		t.Fatalf("POST without token = %d %q, want 401 without the token in the body", code, body)
	}
	if code, _ := do(t, "POST", base+"/v1/things", "wrong"); code != 401 {
		t.Fatalf("POST with wrong token = %d, want 401", code)
	}
	if code, _ := do(t, "POST", base+"/v1/things", "let-me-in-123"); code != 201 {
		t.Fatalf("POST with token = %d, want 201", code)
	}
	if code, _ := do(t, "GET", base+"/v1/things", ""); code != 200 {
		t.Fatalf("GET without token = %d, want 200 (reads are open)", code)
	}
	if code, _ := do(t, "DELETE", base+"/whip/cam/session1", ""); code != 401 {
		t.Fatalf("DELETE on whip without token = %d, want 401", code)
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
