//go:build linux && cgo

package main

import (
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// TestMallocArenasCapped: with the binary's constructor (it runs in this
// test binary too), 24 threads allocating C memory at once leave glibc
// with at most defaultMallocArenas arenas; glibc's default would give
// each of them its own, up to 8 per core. Under MALLOC_ARENA_MAX the
// bound is that value. The constructor's cap agrees with the Go constant.
func TestMallocArenasCapped(t *testing.T) {
	if cArenaCap != defaultMallocArenas {
		t.Fatalf("the C constructor caps at %d arenas, defaultMallocArenas is %d", cArenaCap, defaultMallocArenas)
	}
	want := defaultMallocArenas
	if v := os.Getenv("MALLOC_ARENA_MAX"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("MALLOC_ARENA_MAX=%q", v)
		}
		want = n
	} else if !arenasCapped() {
		t.Fatal("the constructor did not cap the arenas (glibc refused mallopt, or it did not run)")
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
