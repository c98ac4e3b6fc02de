//go:build linux && cgo

package main

/*
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// EPISODED_MALLOC_ARENAS is defaultMallocArenas (TestMallocArenasCapped
// checks they agree).
#define EPISODED_MALLOC_ARENAS 2

static void *volatile episoded_malloc_sink;

// EPISODED_MMAP_THRESHOLD is mmapThreshold (TestMmapThresholdFixed).
#define EPISODED_MMAP_THRESHOLD (128 * 1024)

// 1 if the constructor capped the arenas, 0 if glibc refused, -1 if it
// left them to MALLOC_ARENA_MAX.
static int episoded_arenas_capped = -1;

static int episoded_arenas_capped_get(void) { return episoded_arenas_capped; }

// Runs when the binary is loaded, before the Go runtime starts a thread.
// glibc gives each thread that calls malloc its own arena until the cap
// is known, and a thread keeps its arena: set from main, the cap came
// after the runtime's threads had made theirs (wave 4's daemon had six
// arenas under a cap of two). MALLOC_ARENA_MAX, if set, glibc has read.
__attribute__((constructor)) static void episoded_cap_arenas(void) {
	const char *v = getenv("MALLOC_ARENA_MAX");
	if (v != NULL && v[0] != '\0') {
		return;
	}
#ifdef M_ARENA_MAX
	episoded_arenas_capped = mallopt(M_ARENA_MAX, EPISODED_MALLOC_ARENAS) == 1;
#else
	episoded_arenas_capped = 0;
#endif
}

// Also at load: a fixed mmap threshold (which fixes the trim threshold at
// glibc's 128 KiB too), unless MALLOC_MMAP_THRESHOLD_ says otherwise.
// glibc raises both each time an mmapped block is freed, up to the size
// of that block: once Pebble had freed an 8 MiB memtable, every C
// allocation under 8 MiB came from an arena, and an arena gave nothing
// back until 16 MiB were free at its top. In the daemon the arenas then
// held 6 MB of which 84 KB were in use, and grew all run.
__attribute__((constructor)) static void episoded_fix_mmap_threshold(void) {
	const char *v = getenv("MALLOC_MMAP_THRESHOLD_");
	if (v != NULL && v[0] != '\0') {
		return;
	}
	mallopt(M_MMAP_THRESHOLD, EPISODED_MMAP_THRESHOLD);
}

// episoded_mmapped_after_large_free frees an mmapped 1 MiB block (which
// makes glibc raise a dynamic threshold to 1 MiB) and reports whether a
// 512 KiB block is then still mmapped (mallinfo2's hblkhd grows by it).
static int episoded_mmapped_after_large_free(void) {
	episoded_malloc_sink = malloc(1 << 20);
	free(episoded_malloc_sink);
	size_t before = mallinfo2().hblkhd;
	episoded_malloc_sink = malloc(512 << 10);
	size_t after = mallinfo2().hblkhd;
	free(episoded_malloc_sink);
	return after >= before + (512 << 10);
}

// episoded_malloc_arenas counts glibc's arenas: malloc_info writes one
// <heap nr="N"> element per arena. -1 if it cannot tell.
static int episoded_malloc_arenas(void) {
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
}

// episoded_malloc_here allocates on the calling thread, which gives the
// thread an arena as Pebble's allocations do.
static void episoded_malloc_here(void) {
	episoded_malloc_sink = malloc(64);
	free(episoded_malloc_sink);
}
*/
import "C"

// cArenaCap is the cap the C constructor applies (EPISODED_MALLOC_ARENAS).
const cArenaCap = C.EPISODED_MALLOC_ARENAS

// arenasCapped reports whether glibc's malloc arenas were capped at
// defaultMallocArenas when the binary was loaded (false when
// MALLOC_ARENA_MAX was set, or glibc refused).
func arenasCapped() bool { return C.episoded_arenas_capped_get() == 1 }

// mallocArenas is how many malloc arenas glibc has made; -1 if unknown.
func mallocArenas() int { return int(C.episoded_malloc_arenas()) }

// cMmapThreshold is the mmap threshold the C constructor fixes.
const cMmapThreshold = C.EPISODED_MMAP_THRESHOLD

// largeStaysMmapped reports whether, after an mmapped 1 MiB block was
// freed, a 512 KiB block is still mmapped: true under the fixed
// threshold, false under glibc's dynamic one.
func largeStaysMmapped() bool { return C.episoded_mmapped_after_large_free() == 1 }

// mallocHere allocates and frees a little C memory on the calling thread.
func mallocHere() { C.episoded_malloc_here() }
