//go:build unix

package api

import (
	"os"
	"syscall"
)

// inode distinguishes a file replaced by rename (same size and mtime
// granularity) from the one before.
func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino)
	}
	return 0
}
