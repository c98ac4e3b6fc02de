package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestRunSetsMemoryLimit: `episoded run` (the built binary) applies the
// default soft memory limit, and GOMEMLIMIT overrides it. The figure is
// read from the daemon's own /metrics (go_gc_gomemlimit_bytes, the Go
// runtime's value).
func TestRunSetsMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		env  string
		want float64
	}{
		{"", defaultMemoryLimit},
		{"GOMEMLIMIT=256MiB", 256 << 20},
	} {
		t.Run(c.env, func(t *testing.T) {
			dir := t.TempDir()
			addr := freeAddr(t)
			cfg := writeFile(t, filepath.Join(dir, "c.yaml"), fmt.Sprintf("gateway: {id: gw, site: s}\napi: {listen: %q}\nstorage: {dir: %q}\n", addr, filepath.Join(dir, "d")))
			cmd := exec.Command(bin, "run", "--config", cfg)
			cmd.Env = os.Environ()
			for i, kv := range cmd.Env {
				if len(kv) >= 11 && kv[:11] == "GOMEMLIMIT=" {
					cmd.Env[i] = "EPISODED_UNSET_GOMEMLIMIT=" // the test's own environment must not decide
				}
			}
			if c.env != "" {
				cmd.Env = append(cmd.Env, c.env)
			}
			stderr := &lockedBuffer{}
			cmd.Stderr = stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			base := "http://" + addr
			waitUntil(t, 30*time.Second, "the daemon's /metrics", func() bool { return metric(base, "go_gc_gomemlimit_bytes") >= 0 }, stderr)
			if got := metric(base, "go_gc_gomemlimit_bytes"); got != c.want {
				t.Errorf("go_gc_gomemlimit_bytes = %v, want %v", got, c.want)
			}
		})
	}
}
