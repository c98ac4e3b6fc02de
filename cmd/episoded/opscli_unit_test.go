package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sync/upload"
)

// TestSyncStatusInWords: sync status prints words and a table, never Go
// struct syntax such as {Always:true Open:true ...}.
func TestSyncStatusInWords(t *testing.T) {
	next := time.Date(2026, 3, 1, 22, 0, 0, 0, time.UTC)
	st := upload.Status{
		Target: "s3://bucket/raw",
		Window: upload.WindowStatus{Open: false, Windows: []string{"22:00-06:00"}, Timezone: "Europe/Berlin", NextChange: next},
		Queue:  []upload.QueueEntry{{ID: "0190aaaa", Cell: "cell1", State: "closed", Bytes: 3 << 20, Seconds: 42, Priority: true}},
		Failed: []upload.QueueEntry{{ID: "0190bbbb", Cell: "cell1", State: "failed", Attempts: 5, LastError: "403 Forbidden"}},
	}
	var b bytes.Buffer
	printUploads(&b, st)
	out := b.String()
	for _, want := range []string{"closed (22:00-06:00 Europe/Berlin), opens at", "queued (priority)", "0190aaaa", "3.0 MiB", "42s", "failed", "403 Forbidden"} {
		if !strings.Contains(out, want) {
			t.Errorf("sync status lacks %q:\n%s", want, out)
		}
	}
	for _, bad := range []string{"{", "Always:", "Open:"} {
		if strings.Contains(out, bad) {
			t.Errorf("sync status prints Go syntax %q:\n%s", bad, out)
		}
	}
	b.Reset()
	printUploads(&b, upload.Status{Window: upload.WindowStatus{Always: true}})
	if !strings.Contains(b.String(), "always open") {
		t.Errorf("no window: %s", b.String())
	}
}

// TestUntilIdle: sync run --until-idle stops when nothing is due now.
func TestUntilIdle(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	open := upload.WindowStatus{Always: true}
	for _, c := range []struct {
		name string
		st   upload.Status
		want bool
	}{
		{"empty", upload.Status{Window: open}, true},
		{"queued", upload.Status{Window: open, Queue: []upload.QueueEntry{{ID: "a"}}}, false},
		{"uploading", upload.Status{Window: open, Active: &upload.ActiveStatus{Episode: "a"}}, false},
		{"waiting for a retry", upload.Status{Window: open, Queue: []upload.QueueEntry{{ID: "a", NextAttempt: now.Add(time.Minute)}}}, true},
		{"window closed", upload.Status{Window: upload.WindowStatus{Open: false}, Queue: []upload.QueueEntry{{ID: "a"}}}, true},
	} {
		if got := idle(c.st, now); got != c.want {
			t.Errorf("%s: idle = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestDemoSummaryTruthful: after Ctrl-C the demo counts only uploaded
// episodes as uploaded and names the others.
func TestDemoSummaryTruthful(t *testing.T) {
	tl := newDemoTally()
	tl.see(episode.Episode{ID: "e1", State: episode.Closed})
	tl.see(episode.Episode{ID: "e1", State: episode.Uploaded})
	tl.see(episode.Episode{ID: "e2", State: episode.Closed})
	var b bytes.Buffer
	tl.summary(&b, "/tmp/central", true)
	out := b.String()
	if !strings.Contains(out, "closed 2 episode(s); 1 uploaded") || !strings.Contains(out, "not uploaded: e2 (closed)") || !strings.Contains(out, "interrupted on the next run") {
		t.Fatalf("summary:\n%s", out)
	}
	b.Reset()
	newDemoTally().summary(&b, "/tmp/central", false)
	if strings.Contains(b.String(), "under /tmp/central") || !strings.Contains(b.String(), "0 uploaded") || strings.Contains(b.String(), "Ctrl-C") {
		t.Fatalf("empty summary claims uploads:\n%s", b.String())
	}
}

func TestCLITime(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	if got, err := cliTime("24h", now); err != nil || got != "2026-02-28T12:00:00Z" {
		t.Errorf("24h: %q %v", got, err)
	}
	if got, err := cliTime("2026-03-01T08:00:00Z", now); err != nil || got != "2026-03-01T08:00:00Z" {
		t.Errorf("RFC 3339: %q %v", got, err)
	}
	if _, err := cliTime("-5h", now); err == nil {
		t.Error("-5h accepted")
	}
}
