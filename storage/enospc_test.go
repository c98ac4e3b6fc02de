package storage

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/smallfs"
)

// TestDiskFilledByAnotherProcess records onto a real 128 MB filesystem
// with min_free 0 while dd, another process, fills the disk to ENOSPC. The
// store must stay up, refuse samples and raise an alarm, take samples again
// by itself once the file is removed, and lose nothing it reported
// durable.
func TestDiskFilledByAnotherProcess(t *testing.T) {
	mnt := smallfs.Mount(t, "128M")
	logs := newCountHandler()
	opts := Options{Dir: filepath.Join(mnt, "store"), MinFree: 0, SyncInterval: 5 * time.Millisecond,
		WatchInterval: 50 * time.Millisecond, TimelineRetention: 24 * time.Hour, Logger: slog.New(logs)}
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

	filler := filepath.Join(mnt, "filler")
	out, err := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=1M").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "No space left on device") {
		t.Fatalf("dd should have filled the disk: %v\n%s", err, out)
	}
	refused := pr.nRefused.Load()
	pr.waitFor("samples refused on the full disk", none, func() bool { return pr.nRefused.Load() > refused+10 })
	u := s.Usage()
	if !u.Full || len(u.Alarms) == 0 {
		t.Errorf("full disk: no alarm: %+v", u)
	}
	t.Logf("disk full: %+v", u)
	if s.failed.Load() {
		t.Fatal("the store failed on ENOSPC")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	target = pr.nDurable.Load() + 50
	pr.waitFor("durable again after the space returned", none, func() bool { return pr.nDurable.Load() >= target })
	t.Logf("durable again %s after the filler was removed", time.Since(removed).Round(time.Millisecond))
	// The alarm clears at the next pass that sees no refusal.
	pr.waitFor("alarm cleared", none, func() bool { u := s.Usage(); return !u.Full && len(u.Alarms) == 0 })
	if _, err := os.Stat(s.ballastPath()); err != nil {
		t.Errorf("ballast not in place after recovery: %v", err)
	}
	t.Logf("ENOSPC logs: segment %d, pebble %d, background errors %d",
		logs.count("disk full (ENOSPC) on commit: refusing samples until space returns"),
		logs.count("disk full (ENOSPC): released the ballast for Pebble, refusing samples until space returns"),
		logs.count("pebble background error"))

	pr.stop()
	cancel()
	if err := <-runDone; err != nil {
		t.Logf("run: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	opts.Logger = testLogger(t)
	s, err = Open(opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	pr.verify(s)
}
