//go:build linux && cgo

package main

/*
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

// EPISODED_MALLOC_ARENAS is defaultMallocArenas and
// EPISODED_MMAP_THRESHOLD is mmapThreshold (the tests check they agree).
#define EPISODED_MALLOC_ARENAS 2
#define EPISODED_MMAP_THRESHOLD (128 * 1024)

// What the constructor did: 1 applied, 0 refused by the C library (or
// not glibc), -1 left to the environment.
static int episoded_arenas_capped = -1;
static int episoded_mmap_fixed = -1;

static int episoded_arenas_capped_get(void) { return episoded_arenas_capped; }
static int episoded_mmap_fixed_get(void) { return episoded_mmap_fixed; }

// episoded_env_sets reports whether the environment variable name is set,
// or GLIBC_TUNABLES names the tunable: glibc has then applied it.
static int episoded_env_sets(const char *name, const char *tunable) {
	const char *v = getenv(name);
	if (v != NULL && v[0] != '\0') {
		return 1;
	}
	v = getenv("GLIBC_TUNABLES");
	return v != NULL && strstr(v, tunable) != NULL;
}

// Runs when the binary is loaded, before the Go runtime starts a thread.
//
// Arenas: glibc gives each thread that calls malloc its own arena until
// the cap is known, and a thread keeps its arena; set from main, the cap
// came after the runtime's threads had made theirs (wave 4's daemon had
// six arenas under a cap of two).
//
// mmap threshold: a fixed one (which fixes the trim threshold at glibc's
// 128 KiB too). glibc raises both each time an mmapped block is freed, up
// to the size of that block: once Pebble had freed an 8 MiB memtable,
// every C allocation under 8 MiB came from an arena, and an arena gave
// nothing back until 16 MiB were free at its top. The daemon's arenas
// then held 6-12 MB of which about 100 KB were in use, growing all run.
__attribute__((constructor)) static void episoded_bound_malloc(void) {
#ifdef __GLIBC__
	if (!episoded_env_sets("MALLOC_ARENA_MAX", "glibc.malloc.arena_max")) {
		episoded_arenas_capped = mallopt(M_ARENA_MAX, EPISODED_MALLOC_ARENAS) == 1;
	}
	if (!episoded_env_sets("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold")) {
		episoded_mmap_fixed = mallopt(M_MMAP_THRESHOLD, EPISODED_MMAP_THRESHOLD) == 1;
	}
#else
	episoded_arenas_capped = 0;
	episoded_mmap_fixed = 0;
#endif
}

static int episoded_malloc_trim(void) {
#ifdef __GLIBC__
	return malloc_trim(0);
#else
	return 0;
#endif
}

// The rest serves the tests.

// episoded_malloc_arenas counts glibc's arenas: malloc_info writes one
// <heap nr="N"> element per arena. -1 if it cannot tell.
static int episoded_malloc_arenas(void) {
#ifdef __GLIBC__
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (f == NULL) {
		return -1;
	}
	int rc = malloc_info(0, f);
	fclose(f);
	int n = 0;
	for (char *p = buf; rc == 0 && p != NULL && (p = strstr(p, "<heap nr=")) != NULL; p++) {
		n++;
	}
	free(buf);
	return rc == 0 ? n : -1;
#else
	return -1;
#endif
}

// episoded_malloc_here allocates on the calling thread, which gives the
// thread an arena as Pebble's allocations do.
static void episoded_malloc_here(void) {
	void *volatile p = malloc(64);
	free(p);
}

// episoded_is_mmapped reads glibc's IS_MMAPPED bit (0x2) in the size
// field just before a block.
static int episoded_is_mmapped(void *p) { return (((size_t *)p)[-1] & 2) != 0; }

// episoded_mmapped_after_large_free frees an mmapped 1 MiB block (which
// makes glibc raise a dynamic threshold to 1 MiB) and reports whether a
// 512 KiB block is then still mmapped.
static int episoded_mmapped_after_large_free(void) {
	void *volatile big = malloc(1 << 20);
	free(big);
	void *volatile p = malloc(512 << 10);
	int mmapped = episoded_is_mmapped(p);
	free(p);
	return mmapped;
}

// episoded_fragment allocates n blocks of size bytes, touching them, and
// frees all but the last, which keeps the freed memory below it from
// being returned at the top of the heap; episoded_fragment_release frees
// that one.
static void *episoded_fragment_last;

static void episoded_fragment(int n, int size) {
	void **blocks = malloc(sizeof(void *) * n);
	for (int i = 0; i < n; i++) {
		blocks[i] = malloc(size);
		memset(blocks[i], 1, size);
	}
	for (int i = 0; i < n - 1; i++) {
		free(blocks[i]);
	}
	episoded_fragment_last = blocks[n - 1];
	free(blocks);
}

static void episoded_fragment_release(void) {
	free(episoded_fragment_last);
	episoded_fragment_last = NULL;
}
*/
import "C"

// mallocTunable: glibc is linked, whose tunables `episoded run` sets
// (execWithTunables).
const mallocTunable = true

// The caps the C constructor applies.
const (
	cArenaCap      = C.EPISODED_MALLOC_ARENAS
	cMmapThreshold = C.EPISODED_MMAP_THRESHOLD
)

// arenasCapped reports whether glibc's malloc arenas were capped at
// defaultMallocArenas when the binary was loaded (false when the
// environment set them, or the C library refused).
func arenasCapped() bool { return C.episoded_arenas_capped_get() == 1 }

// mmapThresholdFixed reports whether glibc's mmap threshold was fixed at
// mmapThreshold when the binary was loaded.
func mmapThresholdFixed() bool { return C.episoded_mmap_fixed_get() == 1 }

// trimMalloc returns the free memory of glibc's arenas to the kernel
// (malloc_trim(0): the top of each heap and every free page inside it);
// true if it released any.
func trimMalloc() bool { return C.episoded_malloc_trim() == 1 }

// mallocArenas is how many malloc arenas glibc has made; -1 if unknown.
func mallocArenas() int { return int(C.episoded_malloc_arenas()) }

// mallocHere allocates and frees a little C memory on the calling thread.
func mallocHere() { C.episoded_malloc_here() }

// largeStaysMmapped reports whether, after an mmapped 1 MiB block was
// freed, a 512 KiB block is still mmapped: true under the fixed
// threshold, false under glibc's dynamic one.
func largeStaysMmapped() bool { return C.episoded_mmapped_after_large_free() == 1 }

// fragmentMalloc leaves about n*size bytes free and resident in the
// calling thread's arena, below one block still in use (a stand-in for
// Pebble's short-lived C buffers); releaseFragment frees that block.
func fragmentMalloc(n, size int) { C.episoded_fragment(C.int(n), C.int(size)) }

func releaseFragment() { C.episoded_fragment_release() }
