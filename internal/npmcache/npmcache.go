// Package npmcache installs, for tests, the npm packages a checked-in
// independent checker needs (package.json and package-lock.json in a
// testdata directory) with `npm ci`, into a cache directory shared by every
// checkout and test process on the machine, keyed by the lock file's
// content. It is the one implementation behind internal/mcapcheck
// (@mcap/core), sync/catalog's DuckDB queries and
// sync/dataset/datasetcheck (hyparquet).
//
// Concurrent test processes are safe: npm ci runs in a private temporary
// directory that is renamed into place, and scripts are stored under a name
// of their own content, written to a temporary file then renamed.
//
// node and npm must be installed (.ci/run installs them); without them the
// test fails, or skips under -short.
package npmcache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Install returns a directory whose node_modules holds the packages pinned
// by srcDir's package-lock.json; probe is a path under node_modules (e.g.
// "@mcap/core") whose presence shows the install is complete. purpose names
// the check in skip and failure messages. If srcDir itself already has the
// packages installed, srcDir is returned.
func Install(t testing.TB, srcDir, probe, purpose string) string {
	t.Helper()
	for _, bin := range []string{"node", "npm"} {
		if _, err := exec.LookPath(bin); err != nil {
			if testing.Short() {
				t.Skipf("%s not installed; %s is skipped under -short", bin, purpose)
			}
			t.Fatalf("%s not installed: %s needs node and npm", bin, purpose)
		}
	}
	src, err := filepath.Abs(srcDir)
	if err != nil {
		t.Fatal(err)
	}
	installed := func(dir string) bool {
		_, err := os.Stat(filepath.Join(dir, "node_modules", filepath.FromSlash(probe)))
		return err == nil
	}
	if installed(src) {
		return src
	}
	lock, err := os.ReadFile(filepath.Join(src, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	parent := filepath.Join(cache, "episoded")
	sum := sha256.Sum256(lock)
	dir := filepath.Join(parent, filepath.Base(src)+"-"+hex.EncodeToString(sum[:6]))
	if installed(dir) {
		return dir
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(parent, filepath.Base(dir)+".tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp) // gone after a successful rename; cleans up otherwise
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"package.json", "package-lock.json"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci for %s in %s: %v\n%s", purpose, tmp, err, out)
	}
	if !installed(tmp) {
		t.Fatalf("npm ci in %s did not install %s", tmp, probe)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process got there first (or an incomplete directory
		// from an older layout is in the way: replace it once).
		if installed(dir) {
			return dir
		}
		if rerr := os.RemoveAll(dir); rerr != nil {
			t.Fatal(errors.Join(err, rerr))
		}
		if err := os.Rename(tmp, dir); err != nil && !installed(dir) {
			t.Fatalf("install %s into %s: %v", probe, dir, err)
		}
	}
	return dir
}

// Script copies the file src into dir (a directory from Install), so node
// resolves its imports from dir's node_modules, and returns its path there.
// The copy is named after its content (check.mjs becomes
// check-<hash>.mjs) and written atomically, so checkouts with different
// versions of the script never run each other's. A script already in dir
// is returned as it is.
func Script(t testing.TB, dir, src string) string {
	t.Helper()
	abs, err := filepath.Abs(src)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(abs) == filepath.Clean(dir) {
		return abs
	}
	b, err := os.ReadFile(abs)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	ext := filepath.Ext(abs)
	base := strings.TrimSuffix(filepath.Base(abs), ext)
	dst := filepath.Join(dir, base+"-"+hex.EncodeToString(sum[:6])+ext)
	if _, err := os.Stat(dst); err == nil {
		return dst
	}
	tmp, err := os.CreateTemp(dir, base+"-*.tmp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		t.Fatal(err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		t.Fatal(err)
	}
	return dst
}
