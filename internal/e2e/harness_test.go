package e2e

import (
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
)

// waitSettled polls the API until episode id is no longer recording (its
// post-roll captured and its final report written) and returns it.
func waitSettled(t *testing.T, api, id, name string) episode.Episode {
	t.Helper()
	var e episode.Episode
	deadline := time.Now().Add(30 * time.Second)
	for {
		call(t, "GET", api+"/v1/episodes/"+id, nil, &e)
		if e.State != episode.Recording {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still recording", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
