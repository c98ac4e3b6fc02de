// Package daemonproc starts the built episoded binary as its own process
// for whole-daemon benchmarks (and tests): `episoded run --config FILE`,
// its output to a log file, ready once GET /readyz answers 200, stopped
// with SIGTERM and required to exit 0. cmd/episoded's
// BenchmarkDaemonRSS8Cameras and devices/rtsp's BenchmarkDaemonRecord8Cameras
// start the daemon through it, so both measure the same process started
// the same way.
//
// It imports no episoded package: devices/rtsp's in-package benchmark can
// use it without an import cycle (internal/daemon/daemontest, which runs
// the daemon in the test's own process, imports the devices).
package daemonproc

import (
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/testwait"
)

// Package is the import path of the daemon's main package.
const Package = "github.com/episoded/episoded/cmd/episoded"

// Build builds the daemon into dir and returns the binary's path. It takes
// a while on a cold build cache.
func Build(tb testing.TB, dir string) string {
	tb.Helper()
	bin := filepath.Join(dir, "episoded")
	if out, err := exec.Command("go", "build", "-o", bin, Package).CombinedOutput(); err != nil {
		tb.Fatalf("build episoded: %v\n%s", err, out)
	}
	return bin
}

// Options say which daemon to start.
type Options struct {
	Bin    string // the episoded binary
	Config string // its configuration file
	// API is the configuration's api.listen address (host:port), where
	// readiness is polled.
	API string
	// Log is the file the daemon's stdout and stderr go to.
	Log string
	// Env is added to this process's environment for the daemon only
	// (e.g. GOMEMLIMIT=off).
	Env []string
	// ReadyWithin bounds the wait for /readyz (default 60 s, for a
	// loaded machine).
	ReadyWithin time.Duration
}

// Daemon is a started daemon process.
type Daemon struct {
	Cmd  *exec.Cmd
	Base string // "http://" + Options.API
	log  string
	done chan struct{}
	err  error // the exit status, once done is closed
}

// Start starts the daemon and waits until it is ready. The test fails if
// it exits first or is not ready in time. A daemon still running when the
// test ends is killed.
func Start(tb testing.TB, o Options) *Daemon {
	tb.Helper()
	if o.ReadyWithin <= 0 {
		o.ReadyWithin = 60 * time.Second
	}
	logf, err := os.Create(o.Log)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(o.Bin, "run", "--config", o.Config)
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		tb.Fatal(err)
	}
	d := &Daemon{Cmd: cmd, Base: "http://" + o.API, log: o.Log, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	tb.Cleanup(func() {
		if !d.Exited() {
			_ = cmd.Process.Kill()
			<-d.done
		}
	})
	c := http.Client{Timeout: 5 * time.Second}
	testwait.For(tb, o.ReadyWithin, "the daemon ready (GET /readyz 200)", func() bool {
		if d.Exited() {
			tb.Fatalf("the daemon exited during start-up: %v\n%s", d.err, d.LogTail())
		}
		r, err := c.Get(d.Base + "/readyz")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == http.StatusOK
	}, d.LogTail)
	return d
}

// Pid is the daemon's process id (for internal/procstat).
func (d *Daemon) Pid() int { return d.Cmd.Process.Pid }

// Exited reports whether the process has ended.
func (d *Daemon) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// LogTail is the end of the daemon's log, for failure messages.
func (d *Daemon) LogTail() string {
	data, _ := os.ReadFile(d.log)
	return string(data[max(0, len(data)-4000):])
}

// ErrStopTimeout: the daemon did not exit within Stop's bound.
var ErrStopTimeout = errors.New("daemonproc: the daemon did not exit in time after SIGTERM")

// Stop sends SIGTERM and waits up to within for the daemon to exit. It
// returns the exit error (nil for a clean exit 0), or ErrStopTimeout,
// after which the daemon is killed.
func (d *Daemon) Stop(within time.Duration) error {
	if !d.Exited() {
		if err := d.Cmd.Process.Signal(syscall.SIGTERM); err != nil && !d.Exited() {
			return err
		}
	}
	select {
	case <-d.done:
		return d.err
	case <-time.After(within):
		_ = d.Cmd.Process.Kill()
		<-d.done
		return ErrStopTimeout
	}
}
