package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/episoded/episoded/sample"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// openRunning opens a store in dir and runs it until the test ends.
func openRunning(t testing.TB, opts Options) *Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if opts.MinFree == 0 {
		opts.MinFree = -1
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if err := s.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// appendWait appends and waits until the samples are durable.
func appendWait(t testing.TB, s *Store, samples []sample.Sample) {
	t.Helper()
	ch := make(chan error, 1)
	if err := s.Append(samples, func(err error) { ch <- err }); err != nil {
		t.Fatalf("append: %v", err)
	}
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("append: done: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("append: not durable after 30s")
	}
}

// payloadFor returns a deterministic payload for (stream, seq) of size n.
func payloadFor(stream string, seq uint64, n int) []byte {
	p := make([]byte, n+8)
	h := uint64(14695981039346656037)
	for _, c := range []byte(stream) {
		h = (h ^ uint64(c)) * 1099511628211
	}
	h ^= seq * 0x9e3779b97f4a7c15
	for i := 0; i < n; i += 8 {
		h ^= h << 13
		h ^= h >> 7
		h ^= h << 17
		binary.LittleEndian.PutUint64(p[i:], h)
	}
	return p[:n:n]
}

func collect(t testing.TB, seq func(func(sample.Sample, error) bool)) []sample.Sample {
	t.Helper()
	var out []sample.Sample
	for sm, err := range seq {
		if err != nil {
			t.Fatalf("iterate: %v", err)
		}
		out = append(out, sm)
	}
	return out
}

// countHandler counts log records per message, for tests that want to see
// which recovery paths ran.
type countHandler struct {
	mu     *sync.Mutex
	counts map[string]int
}

func newCountHandler() *countHandler {
	return &countHandler{mu: new(sync.Mutex), counts: make(map[string]int)}
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.counts[r.Message]++
	h.mu.Unlock()
	return nil
}
func (h *countHandler) WithAttrs(attrs []slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler            { return h }

func (h *countHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}
