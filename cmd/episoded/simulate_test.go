package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/config"
)

// lockedBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSimulateStopsOnSIGINT runs cmdSimulate in-process on free ports,
// checks what it prints and serves, then sends this process SIGINT: the
// command has registered for it (signal.NotifyContext) before printing,
// so the signal stops the command, not the test binary.
func TestSimulateStopsOnSIGINT(t *testing.T) {
	var out, errOut lockedBuffer
	cfgPath := filepath.Join(t.TempDir(), "sim.yaml")
	uploadDir := filepath.Join(t.TempDir(), "upload")
	code := make(chan int, 1)
	go func() {
		code <- cmdSimulate([]string{"--rtsp", "127.0.0.1:0", "--mqtt", "127.0.0.1:0", "--cameras", "3",
			"--outage", "cam2@1h+1s", "--config", cfgPath, "--data-dir", t.TempDir(), "--upload-dir", uploadDir}, &out, &errOut)
	}()
	mqttRE := regexp.MustCompile(`MQTT broker: tcp://(127\.0\.0\.1:\d+)`)
	rtspRE := regexp.MustCompile(`rtsp://(127\.0\.0\.1:\d+)/cam3`)
	var mqttAddr, rtspAddr string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case c := <-code:
			t.Fatalf("simulate exited with %d before serving\nstdout:\n%s\nstderr:\n%s", c, out.String(), errOut.String())
		default:
		}
		if m, r := mqttRE.FindStringSubmatch(out.String()), rtspRE.FindStringSubmatch(out.String()); m != nil && r != nil &&
			bytes.Contains([]byte(out.String()), []byte("Faults:")) {
			mqttAddr, rtspAddr = m[1], r[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no addresses printed\nstdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
		}
	}
	t.Logf("simulate printed:\n%s", out.String())
	for _, addr := range []string{mqttAddr, rtspAddr} {
		if addr == "127.0.0.1:0" {
			t.Fatalf("printed an unbound address %s", addr)
		}
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("nothing serves %s: %v", addr, err)
		}
		c.Close()
	}
	for _, want := range []string{"cell1/robot1/joint_states", "cell1/gripper/state", "cell1/lidar/points", "cell1/episode/trigger", "cam2@1h0m0s+1s"} {
		if !bytes.Contains([]byte(out.String()), []byte(want)) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatalf("--config wrote a config that does not load: %v", err)
	}
	if cfg.Brokers[0].URL != "tcp://"+mqttAddr || len(cfg.Devices) != 6 {
		t.Errorf("config: broker %s, %d devices", cfg.Brokers[0].URL, len(cfg.Devices))
	}
	if fi, err := os.Stat(cfg.Sync.Target.Path); err != nil || !fi.IsDir() || cfg.Sync.Target.Path != uploadDir {
		t.Errorf("upload dir %s (want %s) not created: %v", cfg.Sync.Target.Path, uploadDir, err)
	}

	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-code:
		if c != exitOK {
			t.Fatalf("exit code %d after SIGINT\nstderr:\n%s", c, errOut.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("simulate did not stop within 15s of SIGINT")
	}
	if !bytes.Contains([]byte(out.String()), []byte("simulated cell stopped")) {
		t.Errorf("no stop message:\n%s", out.String())
	}
	if c, err := net.DialTimeout("tcp", mqttAddr, time.Second); err == nil {
		c.Close()
		t.Error("MQTT port still open after stop")
	}
}

func TestSimulateBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--loss", "2"},
		{"--outage", "bogus"},
		{"--outage", "cam5@1s+1s"},
		{"--log-level", "loud"},
		{"extra"},
		{"--cameras", "0"},
	} {
		var out, errOut bytes.Buffer
		if c := cmdSimulate(args, &out, &errOut); c != exitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", args, c, exitUsage, errOut.String())
		} else if errOut.Len() == 0 {
			t.Errorf("%v: no message on stderr", args)
		}
	}
	var out, errOut bytes.Buffer
	if c := cmdSimulate([]string{"--help"}, &out, &errOut); c != exitOK || !bytes.Contains(out.Bytes(), []byte("-trigger-period")) {
		t.Errorf("--help: exit %d, stdout %q", c, out.String())
	}
}
