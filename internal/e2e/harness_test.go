package e2e

import (
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/testwait"
)

// waitSettled polls the API until episode id is no longer recording (its
// post-roll captured and its final report written) and returns it.
func waitSettled(t *testing.T, api, id, name string) episode.Episode {
	t.Helper()
	var e episode.Episode
	testwait.For(t, 60*time.Second, name+" settled", func() bool {
		call(t, "GET", api+"/v1/episodes/"+id, nil, &e)
		return e.State != episode.Recording
	})
	return e
}
