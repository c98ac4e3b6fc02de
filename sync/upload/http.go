package upload

import (
	"net/http"

	"github.com/episoded/episoded/internal/httpjson"
)

// StatusHandler serves GET /v1/uploads: the Status snapshot as JSON, or a
// JSON error ({"error": ...}, internal/httpjson) when the store cannot be read.
// (Requeueing is the daemon's POST /v1/episodes/{id}/retry, which calls
// Retry.)
func (u *Uploader) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := u.Status()
		if err != nil {
			httpjson.Error(w, http.StatusInternalServerError, err.Error())
			return
		}
		httpjson.Write(w, http.StatusOK, st)
	})
}
