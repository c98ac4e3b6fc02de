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

// TestMmapThresholdFixed: the constructor fixes glibc's mmap threshold,
// so a 512 KiB block is mmapped (and so unmapped when freed) even after a
// 1 MiB mmapped block was freed, which under glibc's dynamic threshold
// moves every block under 1 MiB into the arenas.
func TestMmapThresholdFixed(t *testing.T) {
	if cMmapThreshold != mmapThreshold {
		t.Fatalf("the C constructor fixes the mmap threshold at %d, mmapThreshold is %d", cMmapThreshold, mmapThreshold)
	}
	want := true
	if v := os.Getenv("MALLOC_MMAP_THRESHOLD_"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("MALLOC_MMAP_THRESHOLD_=%q", v)
		}
		want = n <= 512<<10
	}
	if got := largeStaysMmapped(); got != want {
		t.Errorf("after a 1 MiB block was freed, a 512 KiB block mmapped: %v, want %v", got, want)
	}
}
