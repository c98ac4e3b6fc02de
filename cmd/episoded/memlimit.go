package main

import (
	"log/slog"
	"os"
	"runtime/debug"
)

// defaultMemoryLimit is the Go runtime's soft memory limit for `episoded
// run` when the GOMEMLIMIT environment variable is not set. It is the Go
// heap's share of the daemon's 100 MB budget at 8 cameras with telemetry
// and lidar (docs/BENCHMARKS.md, "What bounds memory"): the mapped binary
// (~33 MB), Pebble's memtables (up to two of 8 MiB) and block cache (8 MiB)
// are outside it. Below the limit the collector paces itself as usual
// (GOGC=100); near it, it collects more often instead of letting the heap
// double. 32 MiB since wave 5, when the live heap at that load fell from
// ~25 MB to ~10 MB (smaller store batches and export zstd window): the
// collector has more room below the limit than it had under 40 MiB. It
// is soft: a live heap above it (a saturating MQTT burst filling
// storage.MaxPending) is not refused, the collector just runs more (Go caps
// its CPU at half). GOMEMLIMIT (e.g. 256MiB, or off) overrides it.
const defaultMemoryLimit = 32 << 20

// setMemoryLimit applies defaultMemoryLimit unless GOMEMLIMIT is set.
func setMemoryLimit(log *slog.Logger) {
	if v, ok := os.LookupEnv("GOMEMLIMIT"); ok && v != "" {
		log.Info("Go memory limit from GOMEMLIMIT", "limit", v)
		return
	}
	debug.SetMemoryLimit(defaultMemoryLimit)
	log.Info("Go memory limit (set GOMEMLIMIT to change)", "limit_bytes", defaultMemoryLimit)
}

// defaultMallocArenas caps glibc's malloc arenas when the
// MALLOC_ARENA_MAX environment variable is not set. Pebble's memtables
// and block cache are C memory, allocated and freed from many threads;
// with glibc's default (an arena per thread, up to 8 per core) the freed
// memory stayed in ~12 arenas and the resident set crept up by about
// 1.3 MB/min, not levelled off after 10 minutes; with two it was flat and
// about 10 MB lower (docs/BENCHMARKS.md, "What bounds memory"). The cap is
// set by a C constructor (mallocarena_cgo.go) when the binary is loaded,
// before the Go runtime starts its threads, so it holds for every
// subcommand; from main it came too late.
const defaultMallocArenas = 2

// mmapThreshold is glibc's mmap threshold, fixed when the binary is
// loaded (unless MALLOC_MMAP_THRESHOLD_ is set): C blocks of 128 KiB and
// more (Pebble's memtables) are mapped and unmapped on their own, and an
// arena returns free memory at its top past 128 KiB. glibc's default
// raises both thresholds to the largest block freed so far, so after the
// first 8 MiB memtable was freed the arenas kept everything below 16 MiB
// (docs/BENCHMARKS.md, "What bounds memory").
const mmapThreshold = 128 << 10

// logMallocArenas says how glibc's malloc arenas are bounded.
func logMallocArenas(log *slog.Logger) {
	if v, ok := os.LookupEnv("MALLOC_ARENA_MAX"); ok && v != "" {
		log.Info("malloc arenas from MALLOC_ARENA_MAX", "arenas", v)
		return
	}
	if arenasCapped() {
		log.Info("malloc arenas capped (set MALLOC_ARENA_MAX to change)", "arenas", defaultMallocArenas)
	}
}
