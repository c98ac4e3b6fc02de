package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/config/configtest"
)

// runExit runs the built binary with args and returns its exit code and
// stderr. The environment has no CREDENTIALS_DIRECTORY, so that relative
// *_file paths resolve next to the config file.
func runExit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CREDENTIALS_DIRECTORY=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("episoded %s did not return within 60s (a bad config was accepted and the daemon started?); stderr:\n%s", strings.Join(args, " "), stderr.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stderr.String()
	}
	t.Fatalf("episoded %s: %v", strings.Join(args, " "), err)
	return 0, ""
}

// TestConfigCheckAgreesWithStart: `episoded config check` and the daemon's
// start-up (`episoded run`) reject exactly the same configs, with the same
// message (run folds it on one line for journald), because both go through
// config.Load and the components' own Validate methods. Every file in
// internal/config/testdata/*.bad.yaml holds one kind of mistake, for every
// component (storage, brokers, rtsp, mqtt and whip devices, WebRTC, cells,
// sync, the API, the parser and secrets), and names the message it must get
// on its first line. A config using every component is accepted by both:
// the check passes and the daemon starts.
func TestConfigCheckAgreesWithStart(t *testing.T) {
	configtest.EachBad(t, "../../internal/config/testdata", 15, func(t *testing.T, f string, _ []byte, want string) {
		checkCode, checkErr := runExit(t, "config", "check", f)
		if checkCode == exitOK {
			// Do not start a daemon on it: it would use the default
			// storage.dir of this machine.
			t.Fatalf("config check accepted a bad config; want %q", want)
		}
		runCode, runErr := runExit(t, "run", "--config", f)
		if checkCode != exitUsage || runCode != exitUsage {
			t.Fatalf("exit codes: config check %d, run %d; want %d for both\ncheck: %s\nrun: %s", checkCode, runCode, exitUsage, checkErr, runErr)
		}
		checkMsg := oneLine(errors.New(strings.TrimSpace(checkErr)))
		runLines := nonEmptyLines(runErr)
		runMsg := runLines[len(runLines)-1]
		if checkMsg != runMsg {
			t.Fatalf("config check and run disagree:\ncheck: %s\nrun:   %s", checkMsg, runMsg)
		}
		if !strings.Contains(checkErr, want) {
			t.Fatalf("the message does not say %q:\n%s", want, checkErr)
		}
	})

	t.Run("every component, good", func(t *testing.T) {
		dir := t.TempDir()
		addr := freeAddr(t)
		cfg := writeFile(t, filepath.Join(dir, "good.yaml"), fmt.Sprintf(`
gateway: {id: gw1, site: lab}
api: {listen: %q, webrtc: {interfaces: [lo]}}
storage: {dir: %q, sync_interval: 50ms, min_free: 0}
shutdown_timeout: 5s
brokers:
  - {id: b1, url: "tcp://127.0.0.1:1", keepalive: 5s, backoff: {min: 1s, max: 2s}}
devices:
  - {id: cam, type: rtsp, url: "rtsp://127.0.0.1:1/s", transport: tcp, read_timeout: 2s}
  - {id: robot, type: mqtt, broker: b1, topics: ["robot/+/joints"], stream: "robot/{2}", time_field: header.stamp, time_unit: ms}
  - id: lidar
    type: mqtt
    broker: b1
    topics: [lidar]
    format: pointcloud
    layout: {header_size: 8, time_offset: 0, stride: 4, fields: [{name: x, offset: 0, type: float32}]}
  - {id: pub, type: whip, clock: arrival}
cells:
  - {id: c1, devices: [cam, robot, lidar, pub], preroll: 2s, trigger: {broker: b1, topic: cell/c1/trigger}}
sync:
  target: {type: dir, path: %q}
  windows: ["22:00-06:00"]
`, addr, filepath.Join(dir, "data"), filepath.Join(dir, "central")))
		if code, out := runExit(t, "config", "check", cfg); code != exitOK {
			t.Fatalf("config check rejected a good config (%d): %s", code, out)
		}
		sock, msgs := notifySocket(t)
		cmd := exec.Command(bin, "run", "--config", cfg)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
		var stderr lockedBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() { cmd.Process.Kill() })
		ready := make(chan struct{})
		go func() {
			for m := range msgs {
				if m == "READY=1" {
					close(ready)
					return
				}
			}
		}()
		select {
		case <-ready:
		case err := <-exited:
			t.Fatalf("the daemon refused a config that config check accepted: %v\n%s", err, stderr.String())
		case <-time.After(60 * time.Second):
			t.Fatalf("the daemon was not ready within 60s; stderr:\n%s", stderr.String())
		}
		terminate(t, cmd, exited, 30*time.Second, &stderr)
	})
}
