package e2e

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/sim"
)

// startSim runs a simulated cell until the test ends and returns it once
// it is ready.
func startSim(t *testing.T, o sim.Options) *sim.Sim {
	t.Helper()
	s, err := sim.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	<-s.Ready()
	return s
}

// startDaemon runs the daemon on cfg until the test ends (a non-nil exit
// error fails the test) and returns it with its API's base URL once it is
// ready. Cleanups run last-in first-out, so a daemon started after the
// simulator stops before it.
func startDaemon(t *testing.T, cfg *config.Config, log *slog.Logger) (*daemon.Daemon, string) {
	t.Helper()
	d := daemon.New(cfg, log, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon exit: %v", err)
		}
	})
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("daemon did not start: %v", err)
	}
	return d, "http://" + d.Addr()
}

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
