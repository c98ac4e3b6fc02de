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
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/episoded/episoded/internal/npmcache"
)

// srcDir is sync/export/testdata/mcapcheck in this checkout.
func srcDir(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("mcapcheck: cannot locate the source tree")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "sync", "export", "testdata", "mcapcheck")
}

// Dir returns the directory holding check.mjs's node_modules, installing
// @mcap/core with npm (npm ci, pinned by package-lock.json) into a cache
// directory (internal/npmcache) if the source directory has none.
func Dir(t testing.TB) string {
	t.Helper()
	return npmcache.Install(t, srcDir(t), "@mcap/core", "the independent MCAP reader check")
}

// Run checks the MCAP bytes and returns check.mjs's JSON report. A file
// the reader rejects (bad CRC, bad index, bad record) fails the test.
func Run(t testing.TB, data []byte) []byte {
	t.Helper()
	dir := Dir(t)
	script := npmcache.Script(t, dir, filepath.Join(srcDir(t), "check.mjs"))
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
