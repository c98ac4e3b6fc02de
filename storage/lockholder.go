package storage

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// ErrInUse means another process holds the store's lock.
var ErrInUse = errors.New("storage: store in use by another process")

// InUseError names the process holding a store's lock.
type InUseError struct {
	Dir string
	PID int    // 0 if unknown
	Cmd string // its command line, if readable
}

func (e *InUseError) Error() string {
	who := "another process"
	if e.PID > 0 {
		who = fmt.Sprintf("process %d", e.PID)
		if e.Cmd != "" {
			who += " (" + e.Cmd + ")"
		}
	}
	return fmt.Sprintf("in use by %s; stop it, or go through its API", who)
}

func (e *InUseError) Unwrap() error { return ErrInUse }

// inUse turns pebble's failure to lock dbDir/LOCK (EAGAIN from fcntl) into
// an *InUseError naming the holder, found with F_GETLK; other errors are
// returned unchanged.
func inUse(dir, lockPath string, err error) error {
	if !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EACCES) {
		return err
	}
	e := &InUseError{Dir: dir}
	if f, ferr := os.Open(lockPath); ferr == nil {
		lk := syscall.Flock_t{Type: syscall.F_WRLCK}
		if syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk) == nil && lk.Type != syscall.F_UNLCK {
			e.PID = int(lk.Pid)
		}
		f.Close()
	}
	if e.PID > 0 {
		if b, rerr := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", e.PID)); rerr == nil {
			e.Cmd = strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return e
}
