//go:build linux && cgo

package main

import (
	"os"
	"runtime"
	"strconv"
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
