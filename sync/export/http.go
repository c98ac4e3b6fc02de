package export

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/episoded/episoded/internal/httpjson"
	"github.com/episoded/episoded/storage"
)

// HandlerOptions configure Handler.
type HandlerOptions struct {
	// Attachments returns the attachment files for a cell; nil means none.
	Attachments func(cell string) []string
	// ChunkSize as in Options.
	ChunkSize int64
	Logger    *slog.Logger
}

// Handler serves GET /v1/episodes/{id}/export: the episode as an MCAP
// download (application/x-mcap, Content-Disposition attachment
// "<id>.mcap"). The id is taken from the {id} path value of the route the
// handler is mounted on. An unknown episode is 404, a recording one 409;
// errors are JSON ({"error": "..."}, internal/httpjson).
// The body streams while it is written, so an error after the first byte
// can only abort the connection; it is logged.
func Handler(src Source, o HandlerOptions) http.Handler {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "sync.export")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			httpjson.Error(w, http.StatusMethodNotAllowed, "method not allowed")
			return
		}
		id := r.PathValue("id")
		e, err := src.Episode(id)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			httpjson.Error(w, http.StatusNotFound, fmt.Sprintf("episode %q not found", id))
			return
		case err != nil:
			httpjson.Error(w, http.StatusInternalServerError, "read episode: "+err.Error())
			return
		case !e.State.Finished() || e.Stop == 0:
			httpjson.Error(w, http.StatusConflict, ErrRecording.Error())
			return
		}
		var att []string
		if o.Attachments != nil {
			att = o.Attachments(e.Cell)
		}
		w.Header().Set("Content-Type", "application/x-mcap")
		w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", id+".mcap"))
		if r.Method == http.MethodHead {
			return
		}
		tw := &trackWriter{w: w}
		st, err := Write(r.Context(), tw, src, id, Options{Attachments: att, ChunkSize: o.ChunkSize})
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				log.Error("export failed", "episode", id, "err", err)
			}
			if !tw.wrote {
				w.Header().Del("Content-Disposition")
				httpjson.Error(w, http.StatusInternalServerError, err.Error())
				return
			}
			panic(http.ErrAbortHandler) // abort the half-written body
		}
		log.Info("exported", "episode", id, "bytes", st.Size, "messages", st.Messages)
	})
}

type trackWriter struct {
	w     http.ResponseWriter
	wrote bool
}

func (t *trackWriter) Write(p []byte) (int, error) {
	t.wrote = true
	return t.w.Write(p)
}
