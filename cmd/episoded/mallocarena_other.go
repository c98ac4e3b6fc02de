//go:build !(linux && cgo)

package main

// Without cgo no C allocator is linked (Pebble then allocates its
// memtables and cache in Go), so there are no arenas to cap.

const cArenaCap = defaultMallocArenas

func arenasCapped() bool { return false }

func mallocArenas() int { return -1 }

func mallocHere() {}

const cMmapThreshold = mmapThreshold

func largeStaysMmapped() bool { return false }
