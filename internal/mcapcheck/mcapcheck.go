// Package mcapcheck runs the independent MCAP check for tests: the official
// TypeScript reader (@mcap/core, npm) over a file, through the script in
// sync/export/testdata/mcapcheck/check.mjs, which prints a JSON report.
// Tests in any package use it to validate what sync/export produced with
// code no one in episoded wrote.
//
// node and npm must be installed (.ci/run installs them); without them the
// check fails, or skips under -short.
package mcapcheck

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// srcDir is sync/export/testdata/mcapcheck in this checkout.
func srcDir(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("mcapcheck: cannot locate the source tree")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "sync", "export", "testdata", "mcapcheck")
}

// Dir returns the directory holding check.mjs with its node_modules,
// installing @mcap/core with npm (npm ci, pinned by package-lock.json) into
// a cache directory if the source directory has none.
func Dir(t testing.TB) string {
	t.Helper()
	dir, _ := dirAndScript(t)
	return dir
}

// dirAndScript is Dir, also returning the name of the check script in it.
// The cache directory is shared by every checkout on the machine, so the
// script is stored under a name of its own content, written atomically: a
// checkout with another version of check.mjs never runs this one's.
func dirAndScript(t testing.TB) (string, string) {
	t.Helper()
	for _, bin := range []string{"node", "npm"} {
		if _, err := exec.LookPath(bin); err != nil {
			if testing.Short() {
				t.Skipf("%s not installed; the independent MCAP reader check is skipped under -short", bin)
			}
			t.Fatalf("%s not installed: the independent MCAP check needs node 20 and npm", bin)
		}
	}
	src := srcDir(t)
	if _, err := os.Stat(filepath.Join(src, "node_modules", "@mcap", "core")); err == nil {
		return src, "check.mjs"
	}
	lock, err := os.ReadFile(filepath.Join(src, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	sum := sha256.Sum256(lock)
	dir := filepath.Join(cache, "episoded", "mcapcheck-"+hex.EncodeToString(sum[:6]))
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@mcap", "core")); err != nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"package.json", "package-lock.json"} {
			b, err := os.ReadFile(filepath.Join(src, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(src, "check.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	cs := sha256.Sum256(b)
	name := "check-" + hex.EncodeToString(cs[:6]) + ".mjs"
	if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
		tmp, err := os.CreateTemp(dir, "check-*.tmp")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tmp.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := tmp.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir, name
}

// Run checks the MCAP bytes and returns check.mjs's JSON report. A file
// the reader rejects (bad CRC, bad index, bad record) fails the test.
func Run(t testing.TB, data []byte) []byte {
	t.Helper()
	dir, script := dirAndScript(t)
	f := filepath.Join(t.TempDir(), "episode.mcap")
	if err := os.WriteFile(f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", script, f)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node check.mjs: %v\n%s", err, stderr.String())
	}
	return out
}
