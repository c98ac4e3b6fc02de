package storage

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/episoded/episoded/sample"
)

// TestPebbleFatalOnCommitPath: a WAL fsync that fails with EIO is fatal to
// Pebble (it calls Fatalf). The store must not take the process down: the
// commit reports the error to its producers, Append returns ErrFailed, the
// alarm says a restart is needed, reads still work, and after a reopen
// everything reported durable is there.
func TestPebbleFatalOnCommitPath(t *testing.T) {
	dir := t.TempDir()
	var walSync atomic.Bool
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if walSync.Load() && strings.HasSuffix(op.Path, ".log") && (op.Kind == errorfs.OpFileSyncData || op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncTo) {
			return syscall.EIO
		}
		return nil
	})
	opts := Options{Dir: dir, FS: errorfs.Wrap(vfs.Default, inj), MinFree: -1, MemTableSize: 2 << 20,
		SyncInterval: 5 * time.Millisecond, WatchInterval: 20 * time.Millisecond, TimelineRetention: 24 * time.Hour,
		Logger: slog.New(newCountHandler())}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- s.Run(ctx) }()
	pr := startProducer(t, s)
	none := func() string { return "" }
	target := int64(50)
	pr.waitFor("first durable commits", none, func() bool { return pr.nDurable.Load() >= target })
	walSync.Store(true)
	pr.waitFor("the store failed", none, func() bool { return s.failed.Load() })
	failed := pr.nFailed.Load()
	pr.stop()
	if failed == 0 {
		t.Error("no commit reported the WAL failure")
	}
	err = s.Append([]sample.Sample{{Stream: "c/tel", Seq: 1 << 40, T: time.Now().UnixNano(), Payload: []byte("x")}}, nil)
	if !errors.Is(err, ErrFailed) {
		t.Errorf("append after the fatal error: %v, want ErrFailed", err)
	}
	u := s.Usage()
	found := false
	for _, a := range u.Alarms {
		found = found || strings.HasPrefix(a, "storage_failed")
	}
	if !found || !u.Full {
		t.Errorf("no storage_failed alarm: %+v", u)
	}
	if n := len(collect(t, s.Range("c/tel", 0, maxTime))); n == 0 {
		t.Error("reads fail after the fatal error")
	}
	cancel()
	<-runDone
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		t.Logf("close after the fatal error: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("Close hangs after a fatal Pebble error")
	}
	walSync.Store(false)
	opts.Logger = testLogger(t)
	s, err = Open(opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	pr.verify(s)
}
