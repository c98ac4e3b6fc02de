package upload

import (
	"net/http"

	"github.com/episoded/episoded/internal/api"
)

// StatusHandler serves GET /v1/uploads: the Status snapshot as JSON, or a
// JSON error ({"error": ...}, internal/api) when the store cannot be read.
// (Requeueing is the daemon's POST /v1/episodes/{id}/retry, which calls
// Retry.)
func (u *Uploader) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := u.Status()
		if err != nil {
			api.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		api.WriteJSON(w, http.StatusOK, st)
	})
}
