package dashboard

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestHealthItems runs the banner's rules (health.js, as embedded) in node
// on status snapshots the browser test cannot easily produce: a storage
// alarm, a full store, quarantined uploads, a backlog the window cannot
// drain within a day, a device that never connects.
func TestHealthItems(t *testing.T) {
	if testing.Short() {
		t.Skip("needs node; skipped under -short")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: the banner rules test needs it (apt-get install -y nodejs), or run with -short")
	}
	dir := t.TempDir()
	for _, name := range []string{"health.js", "ui.js"} {
		b, err := fs.ReadFile(Files(), name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The dashboard's files are ES modules; node 20 needs to be told.
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"type":"module"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `
import { healthItems } from './health.js';
const now = Date.parse('2026-01-01T12:00:00Z');
const ago = (s) => new Date(now - s * 1000).toISOString();
const dev = (device, state, since, reconnects, last_error) => ({ device, state, since: ago(since), reconnects, last_error });
const good = () => ({
  cells: [{ cell: 'c1', recording: null }],
  devices: [dev('cam1', 'streaming', 100, 0)],
  storage: { bytes: 1e6, free: 1e9, alarms: [], full: false },
});
const up = (o) => ({ target: 'dir /x', window: { always: true, open: true }, queue: [], bytes_remaining: 0, drain_seconds: 0, ...o });
const cases = {
  fine: [good(), [], up()],
  recording: [{ ...good(), cells: [{ cell: 'c1', recording: { id: 'e1' } }] }, [], up()],
  backoff: [{ ...good(), devices: [dev('cam1', 'backoff', 3, 2, 'refused')] }, [], up()],
  firstConnect: [{ ...good(), devices: [dev('cam1', 'connecting', 3, 0)] }, [], up()],
  neverConnects: [{ ...good(), devices: [dev('cam1', 'connecting', 30, 0)] }, [], up()],
  reconnecting: [{ ...good(), devices: [dev('cam1', 'connecting', 1, 1, 'EOF')] }, [], up()],
  alarm: [{ ...good(), storage: { bytes: 1, free: 1, alarms: ['free space below min_free'], full: false } }, [], up()],
  full: [{ ...good(), storage: { bytes: 1, free: 1, full: true } }, [], up()],
  degraded: [good(), [{ id: 'e1', verdict: { status: 'degraded', reasons: [{ stream: 'c1/cam1', code: 'low_coverage', detail: 'x' }] } }, { id: 'e2' }], up()],
  quarantined: [good(), [], up({ quarantined: [{ id: 'e1' }] })],
  slowBacklog: [good(), [], up({ queue: [{ id: 'e1' }], bytes_remaining: 5e9, drain_seconds: 2 * 86400, window: { open: false } })],
  unknownDrain: [good(), [], up({ queue: [{ id: 'e1' }], bytes_remaining: 5e9, drain_seconds: -1 })],
  fastBacklog: [good(), [], up({ queue: [{ id: 'e1' }], bytes_remaining: 5e9, drain_seconds: 3600 })],
  noTarget: [good(), [], { note: 'no target' }],
};
const out = {};
for (const [k, [st, deg, u]] of Object.entries(cases)) {
  out[k] = Object.fromEntries(healthItems(st, deg, u, now).map((i) => [i.key, i.level + ' ' + i.title + ': ' + i.text]));
}
console.log(JSON.stringify(out));
`
	if err := os.WriteFile(filepath.Join(dir, "check.mjs"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, "check.mjs")
	cmd.Dir = dir
	b, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("node: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var got map[string]map[string]string
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("node output %q: %v", b, err)
	}
	level := func(c, key string) string {
		s := got[c][key]
		for i := range len(s) {
			if s[i] == ' ' {
				return s[:i]
			}
		}
		return s
	}
	want := []struct{ c, key, level string }{
		{"fine", "recording", "ok"}, {"fine", "devices", "ok"}, {"fine", "degraded", "ok"}, {"fine", "storage", "ok"}, {"fine", "uploads", "ok"},
		{"recording", "recording", "info"},
		{"backoff", "devices", "bad"},
		{"firstConnect", "devices", "ok"},
		{"neverConnects", "devices", "bad"},
		{"reconnecting", "devices", "bad"},
		{"alarm", "storage", "bad"},
		{"full", "storage", "bad"},
		{"degraded", "degraded", "warn"},
		{"quarantined", "uploads", "bad"},
		{"slowBacklog", "uploads", "warn"},
		{"unknownDrain", "uploads", "warn"},
		{"fastBacklog", "uploads", "ok"},
		{"noTarget", "uploads", "ok"},
	}
	for _, w := range want {
		if l := level(w.c, w.key); l != w.level {
			t.Errorf("%s: %s item %q, want level %s", w.c, w.key, got[w.c][w.key], w.level)
		}
	}
	t.Logf("%s", b)
}
