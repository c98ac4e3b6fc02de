package replay

import (
	"syscall"
	"time"
)

// nanosleep blocks the calling thread for d with nanosleep(2).
func nanosleep(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	for syscall.Nanosleep(&ts, &ts) == syscall.EINTR {
	}
}
