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
// double. It is soft: a live heap above it (a saturating MQTT burst filling
// storage.MaxPending) is not refused, the collector just runs more (Go caps
// its CPU at half). GOMEMLIMIT (e.g. 256MiB, or off) overrides it.
const defaultMemoryLimit = 40 << 20

// setMemoryLimit applies defaultMemoryLimit unless GOMEMLIMIT is set.
func setMemoryLimit(log *slog.Logger) {
	if v, ok := os.LookupEnv("GOMEMLIMIT"); ok && v != "" {
		log.Info("Go memory limit from GOMEMLIMIT", "limit", v)
		return
	}
	debug.SetMemoryLimit(defaultMemoryLimit)
	log.Info("Go memory limit (set GOMEMLIMIT to change)", "limit_bytes", defaultMemoryLimit)
}
