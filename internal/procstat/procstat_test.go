package procstat

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// spin burns CPU in this process until at least d of it is used, per
// Self, so the test waits for the condition, not on the wall clock.
func spin(t *testing.T, d time.Duration) {
	t.Helper()
	start, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	x := 1
	for {
		for i := range 1 << 20 {
			x = x*31 + i
		}
		now, err := Self()
		if err != nil {
			t.Fatal(err)
		}
		if now-start >= d {
			break
		}
	}
	if x == 0 {
		t.Log(x) // keep the loop
	}
}

func TestCPUGrowsWithBusyLoop(t *testing.T) {
	pid := os.Getpid()
	before, err := CPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	spin(t, 300*time.Millisecond)
	after, err := CPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	// /proc counts in 10 ms ticks and getrusage in microseconds: allow
	// a couple of ticks of rounding, but a wrong tick unit (or fields)
	// would be off by far more.
	if d := after - before; d < 250*time.Millisecond || d > 10*time.Second {
		t.Errorf("CPU grew by %s over a busy loop of 300ms of CPU", d)
	}
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if diff := self - after; diff < -50*time.Millisecond || diff > 5*time.Second {
		t.Errorf("CPU(self) %s, getrusage %s: units disagree", after, self)
	}
}

func TestStatusKB(t *testing.T) {
	pid := os.Getpid()
	rss, err := StatusKB(pid, "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	hwm, err := StatusKB(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	if rss <= 0 || hwm < rss {
		t.Errorf("VmRSS %d kB, VmHWM %d kB", rss, hwm)
	}
	// VmHWM must grow by about as much as fresh pages touched.
	unmap := touch(t, 64<<20)
	defer unmap()
	hwm2, err := StatusKB(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	if hwm2 < rss+60<<10 {
		t.Errorf("VmHWM %d kB after touching 64 MiB (VmRSS was %d kB)", hwm2, rss)
	}
}

// touch maps n bytes of fresh anonymous memory (not the Go heap, which may
// reuse pages already resident) and writes every page; the returned func
// unmaps it.
func touch(t *testing.T, n int) (unmap func()) {
	t.Helper()
	buf, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	return func() { syscall.Munmap(buf) } //nolint:errcheck
}

func TestResetPeak(t *testing.T) {
	// Raise the peak by 64 MiB, then drop back below it.
	touch(t, 64<<20)()
	if err := ResetPeak(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	rss, err := StatusKB(os.Getpid(), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	hwm, err := StatusKB(os.Getpid(), "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	// Right after the reset the peak is about the current resident set.
	if hwm > rss+32<<10 {
		t.Errorf("VmHWM %d kB, VmRSS %d kB right after ResetPeak", hwm, rss)
	}
}

func TestErrors(t *testing.T) {
	if _, err := StatusKB(os.Getpid(), "VmNoSuchField"); err == nil || !strings.Contains(err.Error(), "VmNoSuchField") {
		t.Errorf("unknown field: err %v", err)
	}
	if _, err := StatusKB(os.Getpid(), "Name"); err == nil {
		t.Error("Name (not a kB figure): no error")
	}
	// A pid that has exited and been reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	if _, err := CPU(dead); err == nil {
		t.Errorf("CPU(%d) of a reaped process: no error", dead)
	}
	if _, err := StatusKB(dead, "VmRSS"); err == nil {
		t.Errorf("StatusKB(%d) of a reaped process: no error", dead)
	}
	if err := ResetPeak(dead); err == nil {
		t.Errorf("ResetPeak(%d) of a reaped process: no error", dead)
	}
}
