package sim

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// startSim runs a Sim on free loopback ports until the test ends.
func startSim(t testing.TB, o Options) *Sim {
	t.Helper()
	if o.RTSPAddr == "" {
		o.RTSPAddr = "127.0.0.1:0"
	}
	if o.MQTTAddr == "" {
		o.MQTTAddr = "127.0.0.1:0"
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("sim run: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("sim not ready after 10s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sim run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("sim did not stop within 10s of cancel")
		}
	})
	return s
}

func TestRunTwice(t *testing.T) {
	s := startSim(t, Options{})
	if err := s.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run: %v, want ErrRunning", err)
	}
}

func TestBeforeRun(t *testing.T) {
	s, err := New(Options{RTSPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Truth("cell1/cam1", 1); ok {
		t.Error("Truth before Run")
	}
	if s.T0() != 0 || s.RTSPAddr() != "127.0.0.1:0" || s.MQTTAddr() != DefaultMQTTAddr {
		t.Errorf("T0 %d, addrs %s %s", s.T0(), s.RTSPAddr(), s.MQTTAddr())
	}
	if got := s.Streams(); len(got) != 2+3+1 || got[0] != "cell1/cam1" || got[2] != TopicJointStates || got[4] != StreamLidar {
		t.Errorf("Streams() = %v", got)
	}
	if _, ok := s.Stats("cell1/nope"); ok {
		t.Error("Stats of an unknown stream")
	}
	select {
	case <-s.Ready():
		t.Error("ready before Run")
	default:
	}
}
