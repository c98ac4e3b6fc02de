// Package procstat is what benchmarks and tests read about a process from
// /proc (Linux only): its CPU time, its resident set (VmRSS, VmHWM), and
// resetting its peak.
//
// CPU reads utime+stime from /proc/PID/stat, which the kernel reports in
// clock ticks of USER_HZ: 100 per second on every Linux architecture Go
// supports, whatever the kernel's internal HZ (sysconf(_SC_CLK_TCK) returns
// the same constant), so figures have 10 ms resolution. The current
// process's own CPU is better read with Self, from getrusage(2), in
// microseconds.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// UserHZ is the unit of the times in /proc/PID/stat: ticks per second.
const UserHZ = 100

// CPU returns the user+system CPU time process pid has used so far, from
// /proc/PID/stat (10 ms resolution).
func CPU(pid int) (time.Duration, error) {
	name := fmt.Sprintf("/proc/%d/stat", pid)
	raw, err := os.ReadFile(name)
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is parenthesised and may hold spaces or
	// ")"; the fields after its last ")" start with state (field 3), so
	// utime and stime (fields 14 and 15) are at indexes 11 and 12.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: no command name", name)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: %d fields after the command name, want at least 13", name, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("%s: utime/stime: %w", name, err)
	}
	return time.Duration(ut+st) * (time.Second / UserHZ), nil
}

// Self returns the user+system CPU time of the current process so far,
// from getrusage(2) (microsecond resolution).
func Self() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return Rusage(&ru), nil
}

// Rusage returns the user+system CPU time in ru (from getrusage(2), or an
// exited child's os.ProcessState.SysUsage()).
func Rusage(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// StatusKB returns a "kB" field of /proc/PID/status, named without its
// colon: "VmRSS" (resident now), "VmHWM" (peak resident), in KiB (the
// kernel's "kB" is 1024 bytes).
func StatusKB(pid int, field string) (int64, error) {
	name := fmt.Sprintf("/proc/%d/status", pid)
	raw, err := os.ReadFile(name)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		v, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s: %s is %q, not a kB figure", name, field, strings.TrimSpace(v))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %w", name, field, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("%s: no %s", name, field)
}

// ResetPeak resets process pid's peak resident set (VmHWM) to its current
// resident set, by writing 5 to /proc/PID/clear_refs (Linux 4.0 and later;
// the process must be ours).
func ResetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}
