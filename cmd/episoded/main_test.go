package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bin is the episoded binary built once for these tests.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "episoded-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "episoded")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build episoded: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func writeFile(t testing.TB, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// notifySocket listens on a unixgram socket, as systemd does for
// Type=notify services, and returns the messages it receives.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			for _, line := range strings.Split(strings.TrimSpace(string(buf[:n])), "\n") {
				msgs <- line
			}
		}
	}()
	return path, msgs
}

func waitMsg(t *testing.T, msgs <-chan string, want string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-msgs:
			if m == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %s on the notify socket within %s", want, within)
		}
	}
}

// terminate sends cmd SIGTERM and fails the test unless it exits cleanly
// (exited is its Wait) within the given time; stderr is shown on failure.
func terminate(t *testing.T, cmd *exec.Cmd, exited <-chan error, within time.Duration, stderr fmt.Stringer) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; stderr:\n%s", err, stderr)
		}
	case <-time.After(within):
		t.Fatalf("no exit within %s of SIGTERM; stderr:\n%s", within, stderr)
	}
}

func httpCode(url string) int {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestLifecycle(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeFile(t, filepath.Join(dir, "episoded.yaml"), fmt.Sprintf(`
gateway: {id: gw-test, site: lab}
api: {listen: "%s"}
storage: {dir: "%s"}
shutdown_timeout: 5s
`, addr, filepath.Join(dir, "data")))
	sock, msgs := notifySocket(t)

	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })

	waitMsg(t, msgs, "READY=1", 20*time.Second)
	waitMsg(t, msgs, "WATCHDOG=1", 2*time.Second)
	waitUntil(t, 30*time.Second, "healthz and readyz 200", func() bool {
		return httpCode("http://"+addr+"/healthz") == 200 && httpCode("http://"+addr+"/readyz") == 200
	}, &stderr)
	if code := httpCode("http://" + addr + "/metrics"); code != 200 {
		t.Fatalf("/metrics = %d", code)
	}

	start := time.Now()
	terminate(t, cmd, exited, 5*time.Second, &stderr) // the shutdown timeout
	t.Logf("stopped in %s", time.Since(start))
	waitMsg(t, msgs, "STOPPING=1", time.Second)
}

func TestStartFailures(t *testing.T) {
	dir := t.TempDir()
	notADir := writeFile(t, filepath.Join(dir, "file"), "x")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name, config, want string
	}{
		{"bad config", "gateway: {id: gw, site: s}\nstorage: {colour: blue}\n", `unknown key "colour"`},
		{"unusable data dir", fmt.Sprintf("gateway: {id: gw, site: s}\napi: {listen: %q}\nstorage: {dir: %q}\n", freeAddr(t), filepath.Join(notADir, "data")), "open store"},
		{"port in use", fmt.Sprintf("gateway: {id: gw, site: s}\napi: {listen: %q}\nstorage: {dir: %q}\n", busy.Addr(), filepath.Join(dir, "d2")), "listen on " + busy.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeFile(t, filepath.Join(t.TempDir(), "c.yaml"), tc.config)
			cmd := exec.Command(bin, "run", "--config", cfg)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			if err == nil {
				t.Fatal("exit 0 on a failed start")
			}
			lines := nonEmptyLines(stderr.String())
			last := lines[len(lines)-1]
			if !strings.HasPrefix(last, "episoded: ") || !strings.Contains(last, tc.want) {
				t.Fatalf("last stderr line %q should be a one-line reason mentioning %q; all:\n%s", last, tc.want, stderr.String())
			}
		})
	}
}

func nonEmptyLines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		out = []string{""}
	}
	return out
}

// TestExampleConfigs runs `config check` on every YAML file in configs/,
// with the credentials they name provided as systemd would.
func TestExampleConfigs(t *testing.T) {
	files, _ := filepath.Glob("../../configs/*.yaml")
	if len(files) == 0 {
		t.Fatal("no example configs found in configs/")
	}
	creds := t.TempDir()
	for _, name := range []string{"api-token", "api-read-token", "mqtt-password", "cam-password", "s3-access-key", "s3-secret-key"} {
		writeFile(t, filepath.Join(creds, name), "example-"+name+"\n")
	}
	for _, f := range files {
		if strings.HasPrefix(filepath.Base(f), "dataset-") {
			continue // dataset mappings, not daemon configs: TestExampleMappings
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			cmd := exec.Command(bin, "config", "check", f, "--print")
			cmd.Env = append(os.Environ(), "CREDENTIALS_DIRECTORY="+creds)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("config check %s: %v\n%s", f, err, out)
			}
			if strings.Contains(string(out), "example-") {
				t.Fatalf("--print leaks a credential:\n%s", out)
			}
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "episoded ") || !strings.Contains(string(out), "go1.") {
		t.Fatalf("version: %v %q", err, out)
	}
	for _, sub := range [][]string{{"run", "--help"}, {"config", "check", "--help"}, {"version", "--help"}, {"--help"}} {
		out, err := exec.Command(bin, sub...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Usage") {
			t.Errorf("%v: %v %q", sub, err, out)
		}
	}
	if err := exec.Command(bin, "frobnicate").Run(); err == nil {
		t.Error("unknown command exited 0")
	}
}
