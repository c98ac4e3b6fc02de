package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/api"
	"github.com/episoded/episoded/storage"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/json-shapes.golden")

// pagedStore writes n closed episodes (UUIDv7-shaped ids in time order, one
// every 15 s) plus one whose id has a unique prefix, and returns the store
// directory and the ids in store order.
func pagedStore(t *testing.T, n int) (string, []string, time.Time) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	st, err := storage.Open(storage.Options{Dir: dir, MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	var ids []string
	for i := range n {
		id := fmt.Sprintf("01900000-0000-7000-8000-%012d", i)
		if i == n-1 {
			id = "0190ffff-0000-7000-8000-000000000000" // the one unique "0190f..."
		}
		start := base.Add(time.Duration(i) * 15 * time.Second)
		e := episode.Episode{ID: id, Cell: "cell1", State: episode.Closed, Task: "pick", Start: start.UnixNano(), Stop: start.Add(10 * time.Second).UnixNano()}
		if err := st.PutEpisode(e); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, ids, base
}

func pagedDaemon(t *testing.T, storeDir string) (*daemonProc, string) {
	t.Helper()
	addr := freeAddr(t)
	cfg := writeFile(t, filepath.Join(t.TempDir(), "c.yaml"), fmt.Sprintf("gateway:\n  id: gw-test\n  site: test\napi:\n  listen: %s\nstorage:\n  dir: %s\n  min_free: 0\n", addr, storeDir))
	return startDaemon(t, cfg, addr), cfg
}

// TestEpisodesPagingAndPrefixes pages through 250 episodes through the API
// and the CLI, and resolves unique and ambiguous id prefixes.
func TestEpisodesPagingAndPrefixes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon binary; skipped under -short")
	}
	const n = 250
	storeDir, ids, base := pagedStore(t, n)
	d, cfg := pagedDaemon(t, storeDir)
	newestFirst := slices.Clone(ids)
	slices.Reverse(newestFirst)

	// The API: a default page, then the cursor to the end.
	var got []string
	path := "/v1/episodes"
	pages := 0
	for {
		resp, err := http.Get("http://" + d.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		var page []episode.Episode
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		pages++
		if pages == 1 && len(page) != api.DefaultPageLimit {
			t.Fatalf("first page without ?limit: %d episodes, want the default %d", len(page), api.DefaultPageLimit)
		}
		for _, e := range page {
			got = append(got, e.ID)
		}
		next := resp.Header.Get(api.NextCursorHeader)
		if next == "" {
			if resp.Header.Get("Link") != "" {
				t.Errorf("last page has a Link header: %s", resp.Header.Get("Link"))
			}
			break
		}
		if !strings.Contains(resp.Header.Get("Link"), `rel="next"`) {
			t.Errorf("page %d: no Link rel=next: %q", pages, resp.Header.Get("Link"))
		}
		path = "/v1/episodes?limit=70&cursor=" + next
	}
	if !slices.Equal(got, newestFirst) {
		t.Fatalf("paged listing: %d episodes, want all %d newest first without repeats", len(got), n)
	}
	if pages != 1+3 { // 100, then 70+70+10
		t.Errorf("%d pages, want 4", pages)
	}
	for _, bad := range []string{"0", "-1", "1001", "ten"} {
		if code, b := d.api("GET", "/v1/episodes?limit="+bad, nil); code != 400 || !strings.Contains(string(b), "1 to 1000") {
			t.Errorf("limit=%s: %d %s", bad, code, b)
		}
	}

	// The CLI: --limit 0 follows the cursors, --limit N stops at N.
	listIDs := func(args ...string) []string {
		t.Helper()
		c, out, errs := d.cli(append([]string{"episodes", "list", "-o", "json"}, args...)...)
		var eps []episode.Episode
		if c != 0 || json.Unmarshal([]byte(out), &eps) != nil {
			t.Fatalf("episodes list %v: %d %q", args, c, errs)
		}
		var out2 []string
		for _, e := range eps {
			out2 = append(out2, e.ID)
		}
		return out2
	}
	if all := listIDs("--limit", "0"); !slices.Equal(all, newestFirst) {
		t.Fatalf("episodes list --limit 0: %d episodes", len(all))
	}
	if def := listIDs(); len(def) != 100 || def[0] != newestFirst[0] {
		t.Fatalf("episodes list: %d episodes, want the default 100", len(def))
	}
	if some := listIDs("--limit", "7"); !slices.Equal(some, newestFirst[:7]) {
		t.Fatalf("episodes list --limit 7: %v", some)
	}
	// --since/--until on start times: episodes 10..19 start in [base+150s, base+285s].
	win := listIDs("--limit", "0", "--since", base.Add(150*time.Second).Format(time.RFC3339), "--until", base.Add(285*time.Second).Format(time.RFC3339))
	want := slices.Clone(ids[10:20])
	slices.Reverse(want)
	if !slices.Equal(win, want) {
		t.Fatalf("--since/--until: %v, want %v", win, want)
	}
	if c, _, errs := d.cli("episodes", "list", "--since", "yesterday"); c != exitUsage || !strings.Contains(errs, "RFC 3339") {
		t.Errorf("--since yesterday: %d %q", c, errs)
	}
	// Bad values list the valid ones.
	if c, _, errs := d.cli("episodes", "list", "--state", "bogus"); c != exitUsage || !strings.Contains(errs, "recording, closed, interrupted") {
		t.Errorf("--state bogus: %d %q", c, errs)
	}
	if code, b := d.api("GET", "/v1/episodes?state=bogus", nil); code != 400 || !strings.Contains(string(b), "uploaded") {
		t.Errorf("API state=bogus: %d %s", code, b)
	}
	if c, _, errs := d.cli("episodes", "list", "-o", "yaml"); c != exitUsage || !strings.Contains(errs, "table, json") {
		t.Errorf("-o yaml: %d %q", c, errs)
	}

	// Prefixes: unique works everywhere an id goes; ambiguous lists candidates.
	unique := ids[n-1]
	if c, out, errs := d.cli("episodes", "show", "0190f", "-o", "json"); c != 0 || !strings.Contains(out, unique) {
		t.Fatalf("show by unique prefix: %d %q", c, errs)
	}
	if code, b := d.api("GET", "/v1/episodes/0190ff", nil); code != 200 || !strings.Contains(string(b), unique) {
		t.Fatalf("API show by prefix: %d %s", code, b)
	}
	amb := "01900000-0000-7000-8000-00000000012" // 120..129
	c, _, errs := d.cli("episodes", "show", amb)
	if c == 0 || !strings.Contains(errs, "ambiguous") || !strings.Contains(errs, ids[120]) || !strings.Contains(errs, ids[129]) {
		t.Fatalf("ambiguous prefix: %d %q", c, errs)
	}
	if c, _, errs := d.cli("episodes", "show", "0190"); c == 0 || !strings.Contains(errs, "and 240 more") {
		t.Fatalf("very ambiguous prefix: %d %q", c, errs)
	}
	if c, _, errs := d.cli("episodes", "show", "ffff"); c == 0 || !strings.Contains(errs, "404") {
		t.Fatalf("unknown prefix: %d %q", c, errs)
	}
	if c, out, errs := d.cli("episodes", "delete", "0190f"); c != 0 || !strings.Contains(out, "deleted "+unique) {
		t.Fatalf("delete by prefix: %d %q %q", c, out, errs)
	}

	// The store in use names the daemon's pid.
	code, _, errs2 := runBin(t, nil, "replay", "--store", storeDir, ids[0])
	if code == 0 || !strings.Contains(errs2, fmt.Sprintf("process %d", d.cmd.Process.Pid)) {
		t.Fatalf("replay --store on a store in use: %d %q", code, errs2)
	}
	_ = cfg
}

// TestJSONOutputGolden runs every command that prints a result with -o json
// (verify -o json is in central_test.go, replay -o json in replay_test.go,
// dataset build -o json is not tested: they need uploaded or recorded data)
// and compares the shape of its output (JSON type and the keys of objects,
// recursively, values left out) with testdata/json-shapes.golden. Run with
// -update to rewrite it after a deliberate change.
func TestJSONOutputGolden(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon binary; skipped under -short")
	}
	storeDir, ids, _ := pagedStore(t, 3)
	d, cfg := pagedDaemon(t, storeDir)
	cases := []struct {
		name string
		args []string
		api  bool
	}{
		{"version", []string{"version", "-o", "json"}, false},
		{"config check", []string{"config", "check", cfg, "-o", "json"}, false},
		{"config check --no-secrets", []string{"config", "check", "--no-secrets", cfg, "-o", "json"}, false},
		{"status", []string{"status", "-o", "json"}, true},
		{"episodes list", []string{"episodes", "list", "-o", "json"}, true},
		{"episodes show", []string{"episodes", "show", ids[0], "-o", "json"}, true},
		{"episodes delete", []string{"episodes", "delete", ids[1], "-o", "json"}, true},
		{"sync status", []string{"sync", "status", "-o", "json"}, true},
		{"key show", []string{"key", "show", "--config", cfg, "-o", "json"}, false},
		{"catalog compact", []string{"catalog", "compact", "--target", t.TempDir(), "--before", "2026-01-01", "-o", "json"}, false},
	}
	var lines []string
	for _, c := range cases {
		args := c.args
		if c.api {
			args = append(args, "--api", "http://"+d.addr)
		}
		code, out, errs := runBin(t, nil, args...)
		var v any
		if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
			t.Errorf("%s -o json: exit %d, stdout %q, stderr %q", c.name, code, out, errs)
			continue
		}
		lines = append(lines, c.name+": "+shape(v))
	}
	got := strings.Join(lines, "\n") + "\n"
	golden := filepath.Join("testdata", "json-shapes.golden")
	if *updateGolden {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("-o json shapes differ from %s (run with -update after a deliberate change):\ngot:\n%s\nwant:\n%s", golden, got, want)
	}
}

// shape describes a JSON value's structure without its values: objects as
// {key:shape,...} with sorted keys, arrays as [shape of the first element].
func shape(v any) string {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, k+":"+shape(x[k]))
		}
		return "{" + strings.Join(parts, ",") + "}"
	case []any:
		if len(x) == 0 {
			return "[]"
		}
		return "[" + shape(x[0]) + "]"
	case string:
		return "s"
	case float64:
		return "n"
	case bool:
		return "b"
	case nil:
		return "null"
	}
	return "?"
}

// TestUploadUnitWithOnlyS3Credentials runs the upload unit's command line
// on the shipped example config with only the two S3 credential files
// present (as episoded-upload.service loads them), and the checks that do
// not need secrets on the same file.
func TestUploadUnitWithOnlyS3Credentials(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary; skipped under -short")
	}
	b, err := os.ReadFile("../../configs/episoded.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The example's store and S3 endpoint, moved into the test: a store
	// here, and a dir target so that no server is needed (the credentials
	// are still resolved as for S3: the target's keys are read).
	cfgText := strings.Replace(string(b), "dir: /var/lib/episoded", "dir: "+filepath.Join(dir, "store"), 1)
	cfgText = strings.Replace(cfgText, "  min_free: 5GiB", "  min_free: 0", 1)
	cfgPath := writeFile(t, filepath.Join(dir, "episoded.yaml"), cfgText)
	creds := t.TempDir()
	writeFile(t, filepath.Join(creds, "s3-access-key"), "AKIDTEST\n")
	writeFile(t, filepath.Join(creds, "s3-secret-key"), "s3cr3t-value-never-printed\n")

	unit, err := os.ReadFile("../../configs/episoded-upload.service")
	if err != nil {
		t.Fatal(err)
	}
	var execStart []string
	for _, l := range strings.Split(string(unit), "\n") {
		if rest, ok := strings.CutPrefix(l, "ExecStart="); ok {
			execStart = strings.Fields(strings.ReplaceAll(rest, "${CONFIGURATION_DIRECTORY}/episoded.yaml", cfgPath))[1:]
		}
	}
	if len(execStart) == 0 || execStart[0] != "sync" {
		t.Fatalf("no ExecStart=episoded sync ... in the upload unit: %v", execStart)
	}
	cmd := exec.Command(bin, execStart...)
	cmd.Env = append(os.Environ(), "CREDENTIALS_DIRECTORY="+creds, "EPISODED_API=http://"+freeAddr(t))
	out, err := cmd.CombinedOutput()
	s := string(out)
	// The S3 endpoint of the example does not exist here, so the run may
	// fail to reach it, but never for a secret it does not use.
	for _, secret := range []string{"api.token_file", "password_file", "cannot read secret"} {
		if strings.Contains(s, secret) {
			t.Fatalf("upload unit command with only S3 credentials: %v\n%s", err, s)
		}
	}
	if strings.Contains(s, "s3cr3t-value") {
		t.Fatalf("the secret key is printed:\n%s", s)
	}
	if !strings.Contains(s, "target:") && !strings.Contains(s, "s3") {
		t.Fatalf("upload unit command did not get as far as the target: %v\n%s", err, s)
	}

	// Without the S3 keys it names the one it misses.
	cmd = exec.Command(bin, execStart...)
	cmd.Env = append(os.Environ(), "CREDENTIALS_DIRECTORY="+t.TempDir(), "EPISODED_API=http://"+freeAddr(t))
	out, _ = cmd.CombinedOutput()
	if !strings.Contains(string(out), "sync.target.access_key_file") || strings.Contains(string(out), "api.token_file") {
		t.Fatalf("sync run without S3 keys: %s", out)
	}
	// config check --no-secrets reads none; config check reads them all.
	if c, out, errs := runBin(t, nil, "config", "check", "--no-secrets", cfgPath); c != 0 || !strings.Contains(out, "secret files not read") {
		t.Fatalf("config check --no-secrets: %d %q %q", c, out, errs)
	}
	if c, _, errs := runBin(t, nil, "config", "check", cfgPath); c == 0 || !strings.Contains(errs, "api.token_file") {
		t.Fatalf("config check without the secret files: %d %q", c, errs)
	}
}
