//go:build !(linux && cgo)

package main

// Without cgo no C allocator is linked (Pebble then allocates its
// memtables and cache in Go); other systems' C libraries are left at
// their defaults.

const mallocTunable = false

func arenasCapped() bool { return false }

func mmapThresholdFixed() bool { return false }

func trimMalloc() bool { return false }
