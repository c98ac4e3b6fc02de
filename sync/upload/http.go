package upload

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/episoded/episoded/storage"
)

// StatusHandler serves GET /v1/uploads: the Status snapshot as JSON.
func (u *Uploader) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := u.Status()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	})
}

// RetryHandler serves POST /v1/episodes/{id}/retry: Retry for the {id}
// path value. 202 when requeued, 404 for an unknown episode, 409 for one
// that is not quarantined, failed or waiting.
func (u *Uploader) RetryHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		id := r.PathValue("id")
		err := u.Retry(id)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			http.Error(w, err.Error(), http.StatusNotFound)
		case err != nil:
			http.Error(w, err.Error(), http.StatusConflict)
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusAccepted)
			_ = json.NewEncoder(w).Encode(map[string]string{"id": id, "status": "requeued"})
		}
	})
}
