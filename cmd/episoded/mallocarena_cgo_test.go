//go:build linux && cgo

package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/episoded/episoded/internal/procstat"
)

// envInt is the integer value of an environment variable; ok is false
// when it is not set.
func envInt(t *testing.T, name string) (n int, ok bool) {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q", name, v)
	}
	return n, true
}

// TestMallocArenasCapped: with the binary's constructor (it runs in this
// test binary too), 24 threads allocating C memory at once leave glibc
// with at most defaultMallocArenas arenas; glibc's default would give
// each of them its own, up to 8 per core. Under MALLOC_ARENA_MAX the
// bound is that value. The constructor's cap agrees with the Go constant.
func TestMallocArenasCapped(t *testing.T) {
	if cArenaCap != defaultMallocArenas {
		t.Fatalf("the C constructor caps at %d arenas, defaultMallocArenas is %d", cArenaCap, defaultMallocArenas)
	}
	want, set := envInt(t, "MALLOC_ARENA_MAX")
	if !set {
		want = defaultMallocArenas
		if !arenasCapped() {
			t.Fatal("the constructor did not cap the arenas (glibc refused mallopt, or it did not run)")
		}
	}
	const threads = 24
	var started, allocated sync.WaitGroup
	started.Add(threads)
	allocated.Add(threads)
	release := make(chan struct{})
	for range threads {
		go func() {
			runtime.LockOSThread() // one OS thread each, all alive at once
			defer runtime.UnlockOSThread()
			started.Done()
			<-release
			mallocHere()
			allocated.Done()
			allocated.Wait()
		}()
	}
	started.Wait()
	close(release)
	allocated.Wait()
	got := mallocArenas()
	if got < 1 {
		t.Fatalf("malloc_info gave no arena count (%d)", got)
	}
	if got > want {
		t.Errorf("%d malloc arenas after %d threads allocated, want at most %d", got, threads, want)
	}
	t.Logf("%d malloc arenas after %d threads allocated (cap %d)", got, threads, want)
}

// TestMmapThresholdFixed: the constructor fixes glibc's mmap threshold,
// so a 512 KiB block is mmapped (and so unmapped when freed) even after a
// 1 MiB mmapped block was freed, which under glibc's dynamic threshold
// moves every block under 1 MiB into the arenas.
func TestMmapThresholdFixed(t *testing.T) {
	if cMmapThreshold != mmapThreshold {
		t.Fatalf("the C constructor fixes the mmap threshold at %d, mmapThreshold is %d", cMmapThreshold, mmapThreshold)
	}
	want := true
	if n, set := envInt(t, "MALLOC_MMAP_THRESHOLD_"); set {
		want = n <= 512<<10
	} else if !mmapThresholdFixed() {
		t.Fatal("the constructor did not fix the mmap threshold")
	}
	if got := largeStaysMmapped(); got != want {
		t.Errorf("after a 1 MiB block was freed, a 512 KiB block mmapped: %v, want %v", got, want)
	}
}

// TestTrimMallocReturnsFreePages: 32 MiB of small C blocks freed below
// one still in use stay resident (the top of the heap is not free, so no
// threshold returns them) until trimMalloc, which `episoded run` calls
// every mallocTrimInterval, gives their pages back.
func TestTrimMallocReturnsFreePages(t *testing.T) {
	runtime.LockOSThread() // the blocks in this thread's arena
	defer runtime.UnlockOSThread()
	rss := func() float64 {
		kb, err := procstat.StatusKB(os.Getpid(), "VmRSS")
		if err != nil {
			t.Fatal(err)
		}
		return float64(kb) / 1024
	}
	trimMalloc() // start from trimmed arenas
	before := rss()
	fragmentMalloc(32<<10, 1<<10) // 32 MiB in 1 KiB blocks
	defer releaseFragment()
	held := rss()
	if held-before < 24 {
		t.Fatalf("RSS %.1f -> %.1f MiB after 32 MiB of blocks were written and freed: the arena returned them by itself", before, held)
	}
	if !trimMalloc() {
		t.Error("malloc_trim released nothing")
	}
	after := rss()
	if held-after < 24 {
		t.Errorf("RSS %.1f MiB with 32 MiB free in the arena, %.1f MiB after trimMalloc: want at least 24 MiB back", held, after)
	}
	t.Logf("RSS %.1f MiB, %.1f with 32 MiB freed below a live block, %.1f after trimMalloc", before, held, after)
}

// TestRunTurnsTcacheOff: `episoded run` re-executes itself (same process)
// with glibc's per-thread malloc caches off, added to any GLIBC_TUNABLES
// it was given, and leaves an operator's own tcache setting alone. What
// the process was last executed with is in /proc/PID/environ: the
// marker carrying the original value, and GLIBC_TUNABLES as glibc left
// it (glibc ends each tunable it parsed with a NUL in place, so of
// several only the first shows).
func TestRunTurnsTcacheOff(t *testing.T) {
	const logLine = "malloc per-thread caches off"
	for _, c := range []struct {
		env     string
		environ []string // what /proc/PID/environ must hold
		off     bool
	}{
		{"", []string{"GLIBC_TUNABLES=" + tcacheTunable, tunablesOrigEnv + "=-"}, true},
		{"GLIBC_TUNABLES=glibc.malloc.arena_max=3", []string{"GLIBC_TUNABLES=glibc.malloc.arena_max=3", tunablesOrigEnv + "==glibc.malloc.arena_max=3"}, true},
		{"GLIBC_TUNABLES=glibc.malloc.tcache_count=5", []string{"GLIBC_TUNABLES=glibc.malloc.tcache_count=5"}, false},
	} {
		t.Run(c.env, func(t *testing.T) {
			pid, _, stderr := startRun(t, c.env)
			raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if err != nil {
				t.Fatal(err)
			}
			environ := strings.Split(string(raw), "\x00")
			for _, kv := range c.environ {
				if !slices.Contains(environ, kv) {
					t.Errorf("the daemon runs without %q in its environment", kv)
				}
			}
			reexecuted := slices.ContainsFunc(environ, func(kv string) bool { return strings.HasPrefix(kv, tunablesOrigEnv+"=") })
			if reexecuted != c.off {
				t.Errorf("re-executed: %v, want %v", reexecuted, c.off)
			}
			if got := strings.Contains(stderr.String(), logLine); got != c.off {
				t.Errorf("log says %q: %v, want %v\n%s", logLine, got, c.off, stderr.String())
			}
		})
	}
}

// TestRestoreTunables: after the re-execution the daemon's own
// environment, which its children inherit, is what it was before.
func TestRestoreTunables(t *testing.T) {
	t.Setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=3:"+tcacheTunable)
	t.Setenv(tunablesOrigEnv, "=glibc.malloc.arena_max=3")
	if !restoreTunables() {
		t.Fatal("not seen as re-executed")
	}
	if v := os.Getenv("GLIBC_TUNABLES"); v != "glibc.malloc.arena_max=3" {
		t.Errorf("GLIBC_TUNABLES=%q after restoring, want the original", v)
	}
	t.Setenv("GLIBC_TUNABLES", tcacheTunable)
	t.Setenv(tunablesOrigEnv, "-")
	restoreTunables()
	if v, ok := os.LookupEnv("GLIBC_TUNABLES"); ok {
		t.Errorf("GLIBC_TUNABLES=%q after restoring, want it unset as before", v)
	}
	if _, ok := os.LookupEnv(tunablesOrigEnv); ok {
		t.Errorf("%s left in the environment", tunablesOrigEnv)
	}
}
