package api

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
)

// DefaultMaxBody caps every request body unless Options.MaxBody says
// otherwise. The largest body the API takes is an SDP offer (a few KiB).
const DefaultMaxBody = 1 << 20

// ReadJSON decodes the request's JSON body into v, strictly (unknown fields
// are errors). It is the one way a handler takes a JSON body, so every such
// route answers alike:
//   - 415 unless Content-Type is application/json: a browser sends a
//     cross-site form or text/plain POST without asking first, but never
//     a JSON one (that needs a CORS preflight, which the API never grants);
//   - 413 when the body is over the server's limit;
//   - 400 when it is not the JSON expected.
//
// With optional, a request without a body (and without a Content-Type)
// leaves v as it is. ReadJSON writes the error response itself and
// returns false; the handler then just returns.
func ReadJSON(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	ct := r.Header.Get("Content-Type")
	if optional && ct == "" && r.ContentLength == 0 {
		return true
	}
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		WriteError(w, http.StatusUnsupportedMediaType, "the request body must be JSON (Content-Type: application/json)")
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// One JSON value, nothing after it.
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			err = errors.New("unexpected data after the JSON value")
		}
	}
	switch {
	case err == nil:
		return true
	case errors.Is(err, io.EOF) && optional:
		return true
	case IsTooLarge(err):
		WriteError(w, http.StatusRequestEntityTooLarge, "request body too large")
	default:
		WriteError(w, http.StatusBadRequest, "bad request body: "+err.Error())
	}
	return false
}

// IsTooLarge reports whether err comes from reading a body over the
// server's limit (http.MaxBytesReader), which deserves a 413.
func IsTooLarge(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}
