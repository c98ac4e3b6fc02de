package httpjson

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestError(t *testing.T) {
	rec := httptest.NewRecorder()
	Error(rec, http.StatusConflict, `episode "x" is <still> recording`)
	if rec.Code != http.StatusConflict || rec.Header().Get("Content-Type") != "application/json" ||
		rec.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("code %d, headers %v", rec.Code, rec.Header())
	}
	var b map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	if len(b) != 1 || b["error"] != `episode "x" is <still> recording` {
		t.Errorf("body %v", b)
	}
}
