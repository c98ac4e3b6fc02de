package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/testwait"
)

// binProc is `episoded run` started by a test.
type binProc struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	exited chan error
}

// runBinary starts `episoded run --config cfg` and stops it (SIGTERM, then
// kill) when the test ends.
func runBinary(t *testing.T, cfg string) *binProc {
	t.Helper()
	p := &binProc{cmd: exec.Command(bin, "run", "--config", cfg), stderr: &lockedBuffer{}, exited: make(chan error, 1)}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM and waits for the exit (kill after 10 s).
func (p *binProc) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		t.Errorf("episoded did not stop within 10s of SIGTERM")
	}
}

// alive reports whether the process is still running.
func (p *binProc) alive() bool {
	return p.cmd.Process.Signal(syscall.Signal(0)) == nil
}

// waitUntil polls cond until it holds (testwait.For), failing after within
// with the tail of the daemon's log (log may be nil).
func waitUntil(t testing.TB, within time.Duration, what string, cond func() bool, log fmt.Stringer) {
	t.Helper()
	var detail []func() string
	if log != nil {
		detail = append(detail, func() string { return "stderr:\n" + tail(log.String(), 3000) })
	}
	testwait.For(t, within, what, cond, detail...)
}

// TestOpenListenRefused: no token and a non-loopback listen address is a
// one-line start-up failure unless api.insecure_open says otherwise.
func TestOpenListenRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "c.yaml"), fmt.Sprintf("gateway: {id: gw, site: s}\napi: {listen: \"0.0.0.0:0\"}\nstorage: {dir: %q}\n", filepath.Join(dir, "d")))
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil {
		t.Fatal("episoded started on 0.0.0.0 without a token")
	}
	lines := nonEmptyLines(stderr.String())
	if len(lines) != 1 || !strings.Contains(lines[0], "no api.token is set") || !strings.Contains(lines[0], "insecure_open") {
		t.Fatalf("want one line naming api.token and insecure_open, got:\n%s", stderr.String())
	}
	// With insecure_open it starts (and the Host check still applies).
	cfg2 := writeFile(t, filepath.Join(dir, "c2.yaml"), fmt.Sprintf("gateway: {id: gw, site: s}\napi: {listen: %q, insecure_open: true}\nstorage: {dir: %q, min_free: 1MiB}\n", "0.0.0.0:"+strings.Split(freeAddr(t), ":")[1], filepath.Join(dir, "d2")))
	p := runBinary(t, cfg2)
	waitUntil(t, 30*time.Second, "episoded answers", func() bool { return p.stderr.String() != "" && strings.Contains(p.stderr.String(), "episoded ready") }, p.stderr)
}

// openssl runs the openssl CLI (an independent implementation makes the
// certificates the daemon and curl must agree on).
func openssl(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// pki makes, with openssl, a CA and leaf certificates signed by it.
type pki struct {
	t   *testing.T
	dir string
	ca  string // CA name: files <ca>.pem, <ca>.key
}

func newPKI(t *testing.T, dir, ca string) *pki {
	if _, err := exec.LookPath("openssl"); err != nil {
		if testing.Short() {
			t.Skip("openssl not installed; skipped under -short")
		}
		t.Fatal("openssl not found: apt-get install -y openssl (.ci/run installs it)")
	}
	openssl(t, dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", ca+".key", "-out", ca+".pem", "-days", "2", "-subj", "/CN="+ca)
	return &pki{t: t, dir: dir, ca: ca}
}

// leaf issues name.pem and name.key with common name cn, for a server on
// 127.0.0.1 (server) or a client.
func (p *pki) leaf(name, cn string, server bool) (cert, key string) {
	ext := "extendedKeyUsage=clientAuth\n"
	if server {
		ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
	}
	writeFile(p.t, filepath.Join(p.dir, name+".ext"), ext)
	openssl(p.t, p.dir, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", name+".key", "-out", name+".csr", "-subj", "/CN="+cn)
	openssl(p.t, p.dir, "x509", "-req", "-in", name+".csr", "-CA", p.ca+".pem", "-CAkey", p.ca+".key",
		"-CAcreateserial", "-out", name+".pem", "-days", "2", "-extfile", name+".ext")
	return filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+".key")
}

// servedCN dials addr over TLS, trusting caFile, optionally with a client
// certificate, and returns the common name of the certificate served.
func servedCN(addr, caFile string, client *tls.Certificate) (string, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	if client != nil {
		cfg.Certificates = []tls.Certificate{*client}
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	// TLS 1.3 reports a refused client certificate only on the first read.
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
	st, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	if !strings.Contains(st, " 200 ") {
		return "", fmt.Errorf("healthz: %q", st)
	}
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
}

// curl runs curl (an independent TLS client) and returns the HTTP status
// it got, or 0 when the connection failed.
func curl(t *testing.T, args ...string) int {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		if testing.Short() {
			t.Skip("curl not installed; skipped under -short")
		}
		t.Fatal("curl not found: apt-get install -y curl (.ci/run installs it)")
	}
	out, _ := exec.Command("curl", append([]string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"}, args...)...).Output()
	var code int
	fmt.Sscan(string(out), &code)
	return code
}

// replaceFile writes data to path atomically (rename), as certbot and
// cert-manager do.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestAPITLS: the built binary serves HTTPS with a certificate openssl
// made; curl reaches it with the token; plain HTTP gets nothing; a new
// certificate written over the files is served without a restart, and
// SIGHUP reloads too.
func TestAPITLS(t *testing.T) {
	dir := t.TempDir()
	ca := newPKI(t, dir, "ca")
	ca.leaf("gen1", "gen1", true)
	ca.leaf("gen2", "gen2", true)
	cert, key := filepath.Join(dir, "api.pem"), filepath.Join(dir, "api.key")
	for src, dst := range map[string]string{"gen1.pem": cert, "gen1.key": key} {
		b, _ := os.ReadFile(filepath.Join(dir, src))
		writeFile(t, dst, string(b))
	}
	addr := freeAddr(t)
	cfg := writeFile(t, filepath.Join(dir, "c.yaml"), fmt.Sprintf(`gateway: {id: gw, site: s}
api:
  listen: %q
  token: tls-admin-token-1
  tls: {cert_file: %q, key_file: %q}
storage: {dir: %q, min_free: 1MiB}
`, addr, cert, key, filepath.Join(dir, "data")))
	p := runBinary(t, cfg)
	caFile := filepath.Join(dir, "ca.pem")
	waitUntil(t, 30*time.Second, "HTTPS healthz", func() bool { cn, _ := servedCN(addr, caFile, nil); return cn == "gen1" }, p.stderr)

	base := "https://" + addr
	if code := curl(t, "--cacert", caFile, "-H", "Authorization: Bearer tls-admin-token-1", base+"/v1/status"); code != 200 {
		t.Errorf("curl /v1/status over TLS with the token: %d, want 200", code)
	}
	if code := curl(t, "--cacert", caFile, base+"/v1/status"); code != 401 {
		t.Errorf("curl /v1/status over TLS without the token: %d, want 401", code)
	}
	if code := curl(t, base+"/healthz"); code != 0 {
		t.Errorf("curl without the CA trusted the certificate: %d", code)
	}
	if code := httpCode("http://" + addr + "/healthz"); code == 200 {
		t.Errorf("plain HTTP on the TLS port answered 200")
	}
	if code := curl(t, "--cacert", caFile, "-H", "Host: attacker.example", "-H", "Authorization: Bearer tls-admin-token-1", base+"/v1/status"); code != 421 {
		t.Errorf("foreign Host over TLS: %d, want 421", code)
	}

	// The CLI finds the address, scheme, token and certificate in the
	// daemon's config.
	if out, err := exec.Command(bin, "status", "--config", cfg).CombinedOutput(); err != nil || !strings.Contains(string(out), "gw") {
		t.Errorf("episoded status --config over TLS: %v\n%s", err, out)
	}

	// Rotation: the new pair is renamed over the old files; the next
	// connection gets it, from the same process.
	pid := p.cmd.Process.Pid
	for src, dst := range map[string]string{"gen2.key": key, "gen2.pem": cert} {
		b, _ := os.ReadFile(filepath.Join(dir, src))
		replaceFile(t, dst, b)
	}
	waitUntil(t, 20*time.Second, "the rotated certificate is served", func() bool { cn, _ := servedCN(addr, caFile, nil); return cn == "gen2" }, p.stderr)
	if code := curl(t, "--cacert", caFile, "-H", "Authorization: Bearer tls-admin-token-1", base+"/v1/status"); code != 200 {
		t.Errorf("curl after rotation: %d, want 200", code)
	}

	// A half-written pair (a certificate whose key is not there yet) keeps
	// the old one serving.
	b, _ := os.ReadFile(filepath.Join(dir, "gen1.pem"))
	replaceFile(t, cert, b)
	if cn, err := servedCN(addr, caFile, nil); err != nil || cn != "gen2" {
		t.Errorf("with a mismatched pair on disk: served %q, %v; want gen2 still", cn, err)
	}
	b, _ = os.ReadFile(filepath.Join(dir, "gen1.key"))
	replaceFile(t, key, b)
	waitUntil(t, 20*time.Second, "the completed pair is served", func() bool { cn, _ := servedCN(addr, caFile, nil); return cn == "gen1" }, p.stderr)

	// SIGHUP reloads (and does not kill, as it would by default).
	// Two reloads so far (gen2, then gen1 again); the log line of the
	// last may follow the handshake that caused it.
	const loads = 2
	waitUntil(t, 10*time.Second, "two reloads logged", func() bool {
		return strings.Count(p.stderr.String(), "tls certificate loaded") == loads
	}, p.stderr)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "SIGHUP reload logged", func() bool {
		return strings.Count(p.stderr.String(), "tls certificate loaded") == loads+1
	}, p.stderr)
	if !p.alive() || p.cmd.Process.Pid != pid {
		t.Fatal("the daemon did not survive rotation and SIGHUP")
	}
	if cn, err := servedCN(addr, caFile, nil); err != nil || cn != "gen1" {
		t.Errorf("after SIGHUP: served %q, %v", cn, err)
	}
}

// TestAPIMutualTLS: with client_ca_file, only clients with a certificate
// from that CA get through, on every route, probes included.
func TestAPIMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newPKI(t, dir, "ca")
	cert, key := ca.leaf("srv", "srv", true)
	ccert, ckey := ca.leaf("operator", "operator", false)
	other := newPKI(t, dir, "otherca")
	ocert, okey := other.leaf("intruder", "intruder", false)
	addr := freeAddr(t)
	cfg := writeFile(t, filepath.Join(dir, "c.yaml"), fmt.Sprintf(`gateway: {id: gw, site: s}
api:
  listen: %q
  token: mtls-admin-token-1
  tls: {cert_file: %q, key_file: %q, client_ca_file: %q}
storage: {dir: %q, min_free: 1MiB}
`, addr, cert, key, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "data")))
	p := runBinary(t, cfg)
	caFile := filepath.Join(dir, "ca.pem")
	client, err := tls.LoadX509KeyPair(ccert, ckey)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "mutual TLS healthz", func() bool { cn, _ := servedCN(addr, caFile, &client); return cn == "srv" }, p.stderr)
	base := "https://" + addr
	if _, err := servedCN(addr, caFile, nil); err == nil {
		t.Error("a client without a certificate got through")
	}
	for _, path := range []string{"/healthz", "/v1/status"} {
		if code := curl(t, "--cacert", caFile, "-H", "Authorization: Bearer mtls-admin-token-1", base+path); code != 0 {
			t.Errorf("curl %s without a client certificate: %d, want no connection", path, code)
		}
		if code := curl(t, "--cacert", caFile, "--cert", ocert, "--key", okey, "-H", "Authorization: Bearer mtls-admin-token-1", base+path); code != 0 {
			t.Errorf("curl %s with a certificate from another CA: %d, want no connection", path, code)
		}
		if code := curl(t, "--cacert", caFile, "--cert", ccert, "--key", ckey, "-H", "Authorization: Bearer mtls-admin-token-1", base+path); code != 200 {
			t.Errorf("curl %s with the client certificate: %d, want 200", path, code)
		}
	}
	// The token still applies on top of the certificate.
	if code := curl(t, "--cacert", caFile, "--cert", ccert, "--key", ckey, base+"/v1/status"); code != 401 {
		t.Errorf("client certificate without the token: %d, want 401", code)
	}
}

// rtspAuthWall is a hostile camera: it answers every RTSP request with 401,
// so the client tries (and retries) its credentials.
func rtspAuthWall(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := textproto.NewReader(bufio.NewReader(c))
				for {
					if _, err := r.ReadLine(); err != nil {
						return
					}
					h, err := r.ReadMIMEHeader()
					if err != nil {
						return
					}
					fmt.Fprintf(c, "RTSP/1.0 401 Unauthorized\r\nCSeq: %s\r\nWWW-Authenticate: Basic realm=\"cam\"\r\n\r\n", h.Get("Cseq"))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestRedaction: a config with inline credentials in every URL field and
// every secret key. None of them appears in --print, in the debug log of a
// running daemon whose camera rejects them, in /v1/status, or in the
// errors for the URLs that may not carry credentials at all.
func TestRedaction(t *testing.T) {
	dir := t.TempDir()
	cam := rtspAuthWall(t)
	secrets := []string{
		"cam-url-pass-1", "cam-field-pass-2", "broker-pass-3", "s3-access-4", "s3-secret-5",
		"api-admin-token-6", "api-read-token-7", "broker-url-pass-8", "s3-url-pass-9",
	}
	addr := freeAddr(t)
	good := fmt.Sprintf(`gateway: {id: gw, site: s}
log: {level: debug}
api: {listen: %q, token: api-admin-token-6, read_token: api-read-token-7}
storage: {dir: %q, min_free: 1MiB}
brokers:
  - {id: b1, url: "tcp://127.0.0.1:1", username: robot, password: broker-pass-3, backoff: {min: 100ms, max: 200ms}}
devices:
  - {id: cam1, type: rtsp, url: "rtsp://camuser:cam-url-pass-1@%s/cam1", backoff: {min: 100ms, max: 200ms}}
  - {id: cam2, type: rtsp, url: "rtsp://%s/cam2", username: camuser, password: cam-field-pass-2, backoff: {min: 100ms, max: 200ms}}
  - {id: joints, type: mqtt, broker: b1, topics: [robot/joints]}
cells:
  - {id: cell1, devices: [cam1, cam2, joints]}
sync:
  target: {type: s3, endpoint: "http://127.0.0.1:1", bucket: b, access_key: s3-access-4, secret_key: s3-secret-5}
`, addr, filepath.Join(dir, "data"), cam, cam)
	cfg := writeFile(t, filepath.Join(dir, "good.yaml"), good)
	check := func(what, text string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s contains %q:\n%s", what, s, text)
			}
		}
		if strings.Contains(text, "camuser:") {
			t.Errorf("%s contains URL userinfo:\n%s", what, text)
		}
	}

	out, err := exec.Command(bin, "config", "check", cfg, "--print").CombinedOutput()
	if err != nil {
		t.Fatalf("config check --print: %v\n%s", err, out)
	}
	check("config check --print", string(out))
	if !strings.Contains(string(out), "<redacted>") && !strings.Contains(string(out), "%3Credacted%3E") {
		t.Errorf("--print shows no redaction mark:\n%s", out)
	}

	// URLs that may not carry credentials: the errors say so without them.
	bad := strings.NewReplacer(
		`"tcp://127.0.0.1:1"`, `"tcp://robot:broker-url-pass-8@127.0.0.1:1"`,
		`"http://127.0.0.1:1"`, `"http://AKIA:s3-url-pass-9@127.0.0.1:1"`,
	).Replace(good)
	badCfg := writeFile(t, filepath.Join(dir, "bad.yaml"), bad)
	for _, args := range [][]string{{"config", "check", badCfg}, {"config", "check", badCfg, "--print"}, {"run", "--config", badCfg}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil {
			t.Fatalf("%v accepted URLs with credentials", args)
		}
		check(strings.Join(args, " "), string(out))
		if args[0] == "config" && !strings.Contains(string(out), "access_key") {
			t.Errorf("the S3 endpoint error does not point to access_key:\n%s", out)
		}
	}

	// The running daemon, at debug level, with a camera that refuses the
	// credentials and a broker and S3 endpoint that are not there.
	p := runBinary(t, cfg)
	status := func() string {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/status", nil)
		req.Header.Set("Authorization", "Bearer api-read-token-7")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return ""
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return string(b)
	}
	// Wait until both cameras have been refused at least twice and the
	// broker has failed: the error paths have run.
	waitUntil(t, 60*time.Second, "cameras and broker failing with their errors in /v1/status", func() bool {
		st := status()
		return strings.Count(st, `"last_error"`) >= 3 && strings.Contains(st, "401")
	}, p.stderr)
	st := status()
	check("/v1/status", st)
	req, _ := http.NewRequest("GET", "http://"+addr+"/v1/uploads", nil)
	req.Header.Set("Authorization", "Bearer api-read-token-7")
	if res, err := http.DefaultClient.Do(req); err == nil {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		check("/v1/uploads", string(b))
	}
	p.stop(t)
	logs := p.stderr.String()
	if !strings.Contains(logs, "level=DEBUG") {
		t.Errorf("no debug lines in the log:\n%s", logs)
	}
	check("the debug log", logs)
	t.Logf("%d log lines, status %d bytes", strings.Count(logs, "\n"), len(st))
	if os.Getenv("EPISODED_SHOW") != "" {
		t.Logf("status:\n%s\nlog:\n%s", st, logs)
	}
}
