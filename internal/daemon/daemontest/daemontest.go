// Package daemontest runs a simulated cell and a daemon inside a test, for
// the packages that test the whole daemon from outside (e2e, dashboard, and
// internal/daemon's own external tests).
// Both stop when the test ends; cleanups run last-in first-out, so a daemon
// started after the simulator stops before it.
package daemontest

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/sim"
)

// readyWithin bounds how long start-up may take on a loaded machine.
const readyWithin = 60 * time.Second

// StartSim runs a simulated cell until the test ends and returns it once it
// is ready. A non-nil exit error fails the test.
func StartSim(t testing.TB, o sim.Options) *sim.Sim {
	t.Helper()
	s, err := sim.New(o)
	if err != nil {
		t.Fatalf("sim.New: %v", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("sim: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("sim: %v", err)
	case <-time.After(readyWithin):
		t.Fatalf("sim not ready after %v", readyWithin)
	}
	return s
}

// Start runs the daemon on cfg until the test ends and returns it with its
// API's base URL once it is ready. A non-nil exit error fails the test.
// A nil log logs warnings and errors to the test's output. The daemon never
// notifies a service manager (a test run under systemd must not report
// READY=1 for its service).
func Start(t testing.TB, cfg *config.Config, log *slog.Logger) (*daemon.Daemon, string) {
	t.Helper()
	d, stop := Run(t, cfg, log, nil)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("daemon exit: %v", err)
		}
	})
	return d, "http://" + d.Addr()
}

// Run is Start for a test that stops the daemon itself, for example to
// open its store afterwards: it returns the ready daemon and stop, which
// cancels it and returns its exit error (every call the same one). If the
// test does not call stop, its cleanup does. before, if not nil, is called
// with the daemon before it runs (to set OnEpisode, say).
func Run(t testing.TB, cfg *config.Config, log *slog.Logger, before func(*daemon.Daemon)) (*daemon.Daemon, func() error) {
	t.Helper()
	if log == nil {
		log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	d := daemon.New(cfg, log, nopNotifier{})
	if before != nil {
		before(d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var exit error
	stop := func() error {
		once.Do(func() {
			cancel()
			exit = <-done
		})
		return exit
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case <-d.Ready():
	case err := <-done:
		done <- err // for stop, at cleanup
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(readyWithin):
		t.Fatalf("daemon not ready after %v", readyWithin)
	}
	return d, stop
}

// nopNotifier is a daemon.Notifier that tells nobody.
type nopNotifier struct{}

func (nopNotifier) Ready()                          {}
func (nopNotifier) Stopping()                       {}
func (nopNotifier) WatchdogInterval() time.Duration { return 0 }
func (nopNotifier) Watchdog()                       {}
