package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/episoded/episoded/internal/api"
	"github.com/episoded/episoded/storage"
)

// maxCandidates is how many matching ids an ambiguous-prefix error lists.
const maxCandidates = 10

// errAmbiguous is an id prefix that matches more than one episode.
type errAmbiguous struct {
	prefix     string
	candidates []string
	total      int
}

func (e *errAmbiguous) Error() string {
	more := ""
	if e.total > len(e.candidates) {
		more = fmt.Sprintf(" and %d more", e.total-len(e.candidates))
	}
	return fmt.Sprintf("episode id prefix %q is ambiguous: it matches %s%s", e.prefix, strings.Join(e.candidates, ", "), more)
}

// ResolveEpisodeID returns the id of the one episode whose id is id or
// starts with id. No match is storage.ErrNotFound; several, *errAmbiguous.
func ResolveEpisodeID(store *storage.Store, id string) (string, error) {
	if _, err := store.Episode(id); err == nil {
		return id, nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return "", err
	}
	if id == "" {
		return "", storage.ErrNotFound
	}
	eps, err := store.Episodes()
	if err != nil {
		return "", err
	}
	amb := &errAmbiguous{prefix: id}
	for _, e := range eps {
		if strings.HasPrefix(e.ID, id) {
			amb.total++
			if len(amb.candidates) < maxCandidates {
				amb.candidates = append(amb.candidates, e.ID)
			}
		}
	}
	switch amb.total {
	case 0:
		return "", fmt.Errorf("episode %s: %w", id, storage.ErrNotFound)
	case 1:
		return amb.candidates[0], nil
	}
	return "", amb
}

// resolveID lets every /v1/episodes/{id} route take a unique id prefix:
// it replaces the path value with the full id before h runs. An ambiguous
// prefix is 409 with the candidates; no match is left to h (its 404).
func (d *Daemon) resolveID(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		full, err := ResolveEpisodeID(d.store, r.PathValue("id"))
		var amb *errAmbiguous
		switch {
		case errors.As(err, &amb):
			api.WriteError(w, http.StatusConflict, amb.Error())
			return
		case err == nil:
			r.SetPathValue("id", full)
		}
		h.ServeHTTP(w, r)
	})
}
