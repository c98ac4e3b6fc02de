//go:build !(linux && cgo)

package main

// setArenaMax: without cgo no C allocator is linked (Pebble then allocates
// its memtables and cache in Go), so there are no arenas to cap.
func setArenaMax(int) bool { return false }
