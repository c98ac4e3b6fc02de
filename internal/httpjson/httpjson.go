// Package httpjson writes the JSON answers of episoded's HTTP API: a value
// (Write), or an error as {"error": "<message>"} (Error), with
// Content-Type application/json. Every error under /v1, /whip and /whep
// has that one shape, so clients (the CLI, the dashboard, scripts) read
// every failure the same way.
//
// It is a leaf package (the standard library only): internal/api (the
// server) and the components that serve routes of their own (sync/export,
// sync/upload, internal/replay, devices/webrtc) all use it, and none of
// them has to import the server for it.
package httpjson

import (
	"encoding/json"
	"net/http"
)

// Write writes v as indented JSON with the given status code.
func Write(w http.ResponseWriter, code int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Body is the shape of every error answer.
type Body struct {
	Error string `json:"error"`
}

// Error writes {"error": msg} with the given status code.
func Error(w http.ResponseWriter, code int, msg string) {
	Write(w, code, Body{Error: msg})
}
