package upload

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
)

func TestScheduleWindows(t *testing.T) {
	berlin, _ := time.LoadLocation("Europe/Berlin")
	var s schedule
	s.loc = berlin
	for _, w := range []string{"22:00-06:00", "12:30-13:00"} {
		win, err := parseWindow(w)
		if err != nil {
			t.Fatal(err)
		}
		s.windows = append(s.windows, win)
	}
	at := func(h, m int) time.Time { return time.Date(2026, 11, 26, h, m, 0, 0, berlin) }
	for _, tc := range []struct {
		t    time.Time
		open bool
		next time.Time
	}{
		{at(21, 59), false, at(22, 0)},
		{at(22, 0), true, at(6, 0).AddDate(0, 0, 1)},
		{at(3, 0), true, at(6, 0)},
		{at(6, 0), false, at(12, 30)},
		{at(12, 45), true, at(13, 0)},
		{at(13, 0), false, at(22, 0)},
	} {
		if got := s.open(tc.t); got != tc.open {
			t.Errorf("open(%v) = %v", tc.t, got)
		}
		if got := s.nextChange(tc.t); !got.Equal(tc.next) {
			t.Errorf("nextChange(%v) = %v, want %v", tc.t, got, tc.next)
		}
	}
	// UTC 21:30 is 22:30 in Berlin (winter): open.
	if !s.open(time.Date(2026, 11, 26, 21, 30, 0, 0, time.UTC)) {
		t.Errorf("time zone not applied")
	}
	for _, bad := range []string{"22:00", "25:00-01:00", "10:00-10:00", "aa:00-01:00", "10:60-11:00"} {
		if _, err := parseWindow(bad); err == nil {
			t.Errorf("parseWindow(%q) accepted", bad)
		}
	}
	if !(schedule{}).open(time.Now()) {
		t.Errorf("no windows must mean always open")
	}
}

func TestBackoffBounds(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	min, max := time.Second, time.Minute
	prev := time.Duration(0)
	for n := 1; n <= 12; n++ {
		d := backoff(n, min, max, rnd)
		ceil := min << (n - 1)
		if ceil > max {
			ceil = max
		}
		if d < ceil/2 || d > ceil {
			t.Errorf("attempt %d: %v outside [%v, %v]", n, d, ceil/2, ceil)
		}
		_ = prev
		prev = d
	}
}

func TestOptionsValidate(t *testing.T) {
	o := Options{Target: Target{Type: "s3"}, Windows: []string{"nope"}, Timezone: "Mars/Base", PartSize: 1 << 20, Concurrency: -1}
	o.EnsureDefaults()
	err := o.Validate()
	for _, want := range []string{"target.endpoint", "target.bucket", "part_size", "stage_dir", "nope", "Mars/Base", "concurrency"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validate error %v does not mention %q", err, want)
		}
	}
	// The defaults are the config file's (docs/CONFIG.md says why).
	var d Options
	d.EnsureDefaults()
	if d.Concurrency != 2 || d.RetryMin != 5*time.Second || d.RetryMax != 10*time.Minute || d.Timezone != "Local" || d.MaxAttempts != 10 {
		t.Errorf("defaults: concurrency %d, retry %s-%s, timezone %q, max attempts %d", d.Concurrency, d.RetryMin, d.RetryMax, d.Timezone, d.MaxAttempts)
	}
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("network gone")
	}
	n := min(len(p), f.n)
	f.n -= n
	return n, nil
}

// A write that fails half way leaves no file at the final name and no
// temp file: the rename is atomic.
func TestDirWriteAtomic(t *testing.T) {
	root := t.TempDir()
	u := &Uploader{chunk: 64 << 10, m: newMetrics(nil)}
	d := &dirTarget{root: root, u: u}
	if _, _, err := d.writeAtomic(context.Background(), "a/b/episode.mcap", &failingReader{n: 100 << 10}); err == nil {
		t.Fatal("write with a failing reader succeeded")
	}
	if _, err := os.Stat(filepath.Join(root, "a/b/episode.mcap")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial file at the final name: %v", err)
	}
	es, _ := os.ReadDir(filepath.Join(root, "a/b"))
	if len(es) != 0 {
		t.Fatalf("temp files left: %v", es)
	}
	sum, n, err := d.writeAtomic(context.Background(), "a/b/episode.mcap", io.LimitReader(&failingReader{n: 1 << 20}, 1<<20))
	if err != nil || n != 1<<20 || len(sum) != 64 {
		t.Fatalf("write: %v %d %s", err, n, sum)
	}
}

// brokenStore is a store whose episode list cannot be read.
type brokenStore struct{ Store }

func (brokenStore) Episodes() ([]episode.Episode, error) { return nil, errors.New("disk on fire") }

// The status handler answers a store failure with the JSON error of every
// /v1 route, not plain text.
func TestStatusHandlerJSONError(t *testing.T) {
	u, err := New(brokenStore{}, Options{Target: Target{Type: "dir", Path: t.TempDir()}, StageDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	u.StatusHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/uploads", nil))
	var body struct{ Error string }
	if rec.Code != http.StatusInternalServerError || rec.Header().Get("Content-Type") != "application/json" ||
		json.Unmarshal(rec.Body.Bytes(), &body) != nil || !strings.Contains(body.Error, "disk on fire") {
		t.Fatalf("status %d, %s: %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
}

func TestParseWindow(t *testing.T) {
	for in, want := range map[string][2]int{"22:00-06:00": {1320, 360}, "00:00-24:00": {0, 1440}, "9:30 - 17:45": {570, 1065}} {
		a, b, err := ParseWindow(in)
		if err != nil || a != want[0] || b != want[1] {
			t.Errorf("ParseWindow(%q) = %d, %d, %v", in, a, b, err)
		}
	}
	for _, in := range []string{"", "22:00", "25:00-01:00", "10:00-10:00", "10:61-11:00", "24:01-01:00"} {
		if _, _, err := ParseWindow(in); err == nil {
			t.Errorf("ParseWindow(%q) accepted", in)
		}
	}
}
