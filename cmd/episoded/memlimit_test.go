package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunSetsMemoryLimit: `episoded run` (the built binary) applies the
// default soft memory limit, and GOMEMLIMIT overrides it. The figure is
// read from the daemon's own /metrics (go_gc_gomemlimit_bytes, the Go
// runtime's value). Likewise it caps glibc's malloc arenas (mallopt, which
// reports success only if glibc took it) unless MALLOC_ARENA_MAX is set;
// that is read from its log, the only place it shows.
func TestRunSetsMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		env    string
		want   float64
		arenas string // the log line about malloc arenas
	}{
		{"", defaultMemoryLimit, fmt.Sprintf("malloc arenas capped (set MALLOC_ARENA_MAX to change)\" arenas=%d", defaultMallocArenas)},
		{"GOMEMLIMIT=256MiB", 256 << 20, ""},
		{"MALLOC_ARENA_MAX=4", defaultMemoryLimit, "malloc arenas from MALLOC_ARENA_MAX\" arenas=4"},
	} {
		t.Run(c.env, func(t *testing.T) {
			_, base, stderr := startRun(t, c.env)
			if got := metric(base, "go_gc_gomemlimit_bytes"); got != c.want {
				t.Errorf("go_gc_gomemlimit_bytes = %v, want %v", got, c.want)
			}
			if c.arenas != "" && !strings.Contains(stderr.String(), c.arenas) {
				t.Errorf("log has no %q:\n%s", c.arenas, stderr.String())
			}
		})
	}
}

// startRun starts the built `episoded run` on an empty store with env
// (space-separated NAME=value) added to an environment cleared of the
// settings it tests, and waits for its /metrics. It returns the
// process id, the API's base URL and its stderr.
func startRun(t *testing.T, env string) (pid int, base string, stderr *lockedBuffer) {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeFile(t, filepath.Join(dir, "c.yaml"), fmt.Sprintf("gateway: {id: gw, site: s}\napi: {listen: %q}\nstorage: {dir: %q}\n", addr, filepath.Join(dir, "d")))
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = os.Environ()
	for i, kv := range cmd.Env {
		for _, name := range []string{"GOMEMLIMIT=", "MALLOC_ARENA_MAX=", "MALLOC_MMAP_THRESHOLD_=", "GLIBC_TUNABLES=", tunablesOrigEnv + "="} {
			if strings.HasPrefix(kv, name) {
				cmd.Env[i] = "EPISODED_UNSET=" // the test's own environment must not decide
			}
		}
	}
	cmd.Env = append(cmd.Env, strings.Fields(env)...)
	stderr = &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	base = "http://" + addr
	waitUntil(t, 30*time.Second, "the daemon's /metrics", func() bool { return metric(base, "go_gc_gomemlimit_bytes") >= 0 }, stderr)
	return cmd.Process.Pid, base, stderr
}
