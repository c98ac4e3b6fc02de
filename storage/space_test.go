package storage

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestFixedOverheadTable keeps docs/CONFIG.md's overhead table true.
func TestFixedOverheadTable(t *testing.T) {
	for _, c := range []struct {
		capacity int64
		memTable int64
		overhead string
	}{
		{100 << 20, 2 << 20, "22.2MiB"},
		{512 << 20, 4 << 20, "39.4MiB"},
		{1 << 30, 8 << 20, "73.8MiB"},
		{2 << 30, 8 << 20, "73.8MiB"},
		{1 << 40, 8 << 20, "73.8MiB"},
	} {
		if m := memTableFor(c.capacity); m != c.memTable {
			t.Errorf("capacity %s: memtable %s, want %s", FormatSize(c.capacity), FormatSize(m), FormatSize(c.memTable))
		}
		if got := FormatSize(FixedOverhead(c.capacity)); got != c.overhead {
			t.Errorf("capacity %s: overhead %s, want %s", FormatSize(c.capacity), got, c.overhead)
		}
	}
	if err := CheckQuota(100 << 20); err != nil {
		t.Errorf("100MiB quota refused: %v", err)
	}
	if err := CheckQuota(50 << 20); err == nil {
		t.Error("50MiB quota accepted")
	}
}

// TestOpenRefusesLimitsThatCannotFit: a min_free or quota the filesystem
// cannot hold is a start-up error naming the figures, not an instant
// alarm.
func TestOpenRefusesLimitsThatCannotFit(t *testing.T) {
	dir := t.TempDir()
	total, _, err := fsSize(dir)
	if err != nil {
		t.Fatal(err)
	}
	fsName := FormatSize(total)
	for _, c := range []struct {
		name string
		opts Options
		want string
	}{
		{"min_free", Options{MinFree: total + 1<<30}, "min_free " + FormatSize(total+1<<30) + " is larger than the " + fsName + " filesystem"},
		{"quota", Options{MinFree: 1 << 30, Quota: total}, "quota " + fsName + " plus min_free 1GiB do not fit the " + fsName + " filesystem"},
		{"tiny", Options{MinFree: total - 10<<20}, "leaves 10MiB after min_free"},
	} {
		c.opts.Dir = filepath.Join(dir, c.name)
		s, err := Open(c.opts)
		if err == nil {
			s.Close()
			t.Errorf("%s: opened", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q, want it to say %q", c.name, err, c.want)
		}
	}
	// min_free 0 is 0.
	s, err := Open(Options{Dir: filepath.Join(dir, "zero"), MinFree: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if u := s.Usage(); u.MinFree != 0 || u.Room <= 0 {
		t.Errorf("min_free 0: %+v", u)
	}
}

// TestDiskFullReportDuringRecovery: an ENOSPC reported while the watcher
// restores the ballast (Pebble released it again) is not cleared by that
// recovery; the store keeps refusing until a later pass clears it.
func TestDiskFullReportDuringRecovery(t *testing.T) {
	var d diskFull
	if d.refusing() || d.clear(d.latest()) {
		t.Fatal("a fresh state refuses or clears")
	}
	if !d.report() {
		t.Fatal("the first report did not start an ENOSPC episode")
	}
	seen := d.latest() // the watcher starts restoring the ballast
	if d.report() {    // meanwhile Pebble meets ENOSPC again
		t.Fatal("a second report started a new episode")
	}
	if d.clear(seen) || !d.refusing() {
		t.Fatal("the recovery cleared a report that came after it started")
	}
	if !d.clear(d.latest()) || d.refusing() {
		t.Fatal("the next pass did not clear the report")
	}
}
