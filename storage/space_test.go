package storage

import (
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
		{2 << 30, 16 << 20, "142.6MiB"},
		{4 << 30, 32 << 20, "280.2MiB"},
		{1 << 40, 32 << 20, "280.2MiB"},
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
