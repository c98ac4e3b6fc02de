package main

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"
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
// collector has more room below the limit than it had under 40 MiB
// (after an MQTT burst the store's spare batches may keep up to 8 MiB
// more until the daemon restarts; the collector then runs more often). It
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

// defaultMallocArenas caps glibc's malloc arenas unless the environment
// sets them (MALLOC_ARENA_MAX, or glibc.malloc.arena_max in
// GLIBC_TUNABLES). Pebble's memtables and block cache are C memory,
// allocated and freed from many threads; with glibc's default (an arena
// per thread, up to 8 per core) the freed memory stayed in ~12 arenas and
// the resident set crept up by about 1.3 MB/min, not levelled off after
// 10 minutes (docs/BENCHMARKS.md, "What bounds memory"). The cap is set
// by a C constructor (mallocarena_cgo.go) when the binary is loaded,
// before the Go runtime starts its threads, so it holds for every
// subcommand; set from main, it came too late.
const defaultMallocArenas = 2

// mmapThreshold is glibc's mmap threshold, fixed by the same constructor
// unless the environment sets it (MALLOC_MMAP_THRESHOLD_, or
// glibc.malloc.mmap_threshold): C blocks of 128 KiB and more (Pebble's
// memtables) are mapped and unmapped on their own, and an arena returns
// free memory at its top past 128 KiB. glibc's default raises both
// thresholds to the largest block freed so far, so after the first 8 MiB
// memtable was freed the arenas kept everything below 16 MiB.
const mmapThreshold = 128 << 10

// mallocTrimInterval is how often `episoded run` returns the free memory
// inside glibc's arenas to the kernel (malloc_trim). Short-lived C
// buffers (Pebble's block reads for compactions and exports) leave free
// pages between blocks still in use, which the thresholds above cannot
// return; without it the arenas still grew by about 2 MB in steps over a
// 10-minute run with everything else flat. A trim of two small arenas
// takes well under a millisecond.
const mallocTrimInterval = 30 * time.Second

// logMalloc says how glibc's malloc is bounded: the constructor's caps,
// and whether this process runs with the per-thread caches off
// (tcacheOff, from restoreTunables) or could not be re-executed so.
func logMalloc(log *slog.Logger, tcacheOff bool, execErr error) {
	if v, ok := os.LookupEnv("MALLOC_ARENA_MAX"); ok && v != "" {
		log.Info("malloc arenas from MALLOC_ARENA_MAX", "arenas", v)
	} else if arenasCapped() {
		log.Info("malloc arenas capped (set MALLOC_ARENA_MAX to change)", "arenas", defaultMallocArenas)
	}
	if mmapThresholdFixed() {
		log.Info("malloc mmap threshold fixed (set MALLOC_MMAP_THRESHOLD_ to change)", "bytes", mmapThreshold)
	}
	if tcacheOff {
		log.Info("malloc per-thread caches off (set glibc.malloc.tcache_count in GLIBC_TUNABLES to change)", "tunable", tcacheTunable)
	} else if execErr != nil {
		log.Warn("could not re-execute with glibc's per-thread malloc caches off; memory may creep by a few MB", "err", execErr)
	}
}

// trimMallocEvery calls trimMalloc every interval until ctx ends.
func trimMallocEvery(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			trimMalloc()
		}
	}
}

// tcacheTunable turns off glibc's per-thread malloc caches. Each thread
// keeps up to 7 freed blocks of each small size (up to 1 KiB) for
// itself; they count as in use, so they pin arena pages that neither
// malloc_trim nor any threshold can return, and fill as the daemon's
// threads pass through Pebble's C code: with everything above in place
// the resident set still grew 3.4 MB over the last third of a 10-minute
// run, and 0.4 MB with the caches off (docs/BENCHMARKS.md, "What bounds
// memory"). The daemon's C allocations are few (memtables, cache blocks),
// so the caches buy nothing measurable. glibc reads tunables only when a
// process starts, so `episoded run` re-executes itself with this added
// to GLIBC_TUNABLES, unless that already names glibc.malloc.tcache_count.
const tcacheTunable = "glibc.malloc.tcache_count=0"

// tunablesOrigEnv carries GLIBC_TUNABLES as it was ("-" if unset) across
// the re-execution, so that children (ffmpeg) get the original back.
const tunablesOrigEnv = "EPISODED_GLIBC_TUNABLES_ORIG"

// execWithTunables re-executes the binary with tcacheTunable added to
// GLIBC_TUNABLES; it returns only if there is nothing to do (no glibc,
// the tunable already set, or already re-executed) or exec failed.
func execWithTunables() error {
	if !mallocTunable {
		return nil
	}
	cur, set := os.LookupEnv("GLIBC_TUNABLES")
	if strings.Contains(cur, "glibc.malloc.tcache_count") {
		return nil
	}
	if _, again := os.LookupEnv(tunablesOrigEnv); again {
		return nil // glibc did not take it: do not loop
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	orig, tun := "-", tcacheTunable
	if set {
		orig = "=" + cur
		if cur != "" {
			tun = cur + ":" + tcacheTunable
		}
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GLIBC_TUNABLES=") })
	env = append(env, "GLIBC_TUNABLES="+tun, tunablesOrigEnv+"="+orig)
	return syscall.Exec(exe, os.Args, env)
}

// restoreTunables gives GLIBC_TUNABLES back its value from before the
// re-execution (for the daemon's children) and reports whether this
// process was re-executed with tcacheTunable.
func restoreTunables() bool {
	orig, ok := os.LookupEnv(tunablesOrigEnv)
	if !ok {
		return false
	}
	os.Unsetenv(tunablesOrigEnv)
	if v, isSet := strings.CutPrefix(orig, "="); isSet {
		os.Setenv("GLIBC_TUNABLES", v)
	} else {
		os.Unsetenv("GLIBC_TUNABLES")
	}
	return true
}
