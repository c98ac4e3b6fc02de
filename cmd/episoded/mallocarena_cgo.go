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

static void *volatile episoded_malloc_sink;

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

// mallocHere allocates and frees a little C memory on the calling thread.
func mallocHere() { C.episoded_malloc_here() }
