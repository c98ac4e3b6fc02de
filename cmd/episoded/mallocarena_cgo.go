//go:build linux && cgo

package main

/*
#include <malloc.h>

static int episoded_set_arena_max(int n) {
#ifdef M_ARENA_MAX
	return mallopt(M_ARENA_MAX, n);
#else
	(void)n;
	return 0;
#endif
}
*/
import "C"

// setArenaMax caps the C library's malloc arenas (glibc's M_ARENA_MAX),
// reporting false where the C library has no such setting.
func setArenaMax(n int) bool { return C.episoded_set_arena_max(C.int(n)) == 1 }
