package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/episoded/episoded/internal/signing"
	"github.com/episoded/episoded/sync/upload"
)

func runBin(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// key show generates the key on first use and prints the same id and
// public key every time; verify checks a dir target with and without
// trusted keys and names each problem with exit code 1.
func TestKeyShowAndVerifyCLI(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	cfg := writeFile(t, filepath.Join(dir, "episoded.yaml"), fmt.Sprintf("gateway: {id: gw-cli, site: lab}\nstorage: {dir: %q}\n", data))
	// Before the daemon first started there is no key, and key show does
	// not make one (storage refuses a non-empty directory that is not yet
	// a store).
	code, _, stderr := runBin(t, nil, "key", "show", "--config", cfg)
	if code != exitFailure || !strings.Contains(stderr, "no key yet") || !strings.Contains(stderr, "LoadCredential=signing.key") {
		t.Fatalf("key show before the first start: %d %q", code, stderr)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("key show created %s: %v", data, err)
	}
	// The daemon generates it on its first start (sync run opens the store
	// and builds the uploader, as run does).
	cfgSync := writeFile(t, filepath.Join(dir, "sync.yaml"), fmt.Sprintf("gateway: {id: gw-cli, site: lab}\nstorage: {dir: %q}\nsync: {mode: oneshot, target: {type: dir, path: %q}}\n", data, t.TempDir()))
	if code, out, stderr := runBin(t, nil, "sync", "run", "--config", cfgSync, "--api", "http://"+freeAddr(t)); code != 0 {
		t.Fatalf("sync run: %d %s %s", code, out, stderr)
	}
	code, show1, _ := runBin(t, nil, "key", "show", "--config", cfg)
	if code != 0 {
		t.Fatalf("key show: %d %q", code, show1)
	}
	code, show2, _ := runBin(t, nil, "key", "show", "--config", cfg)
	if code != 0 || show1 != show2 || !strings.HasPrefix(show1, "ed25519:") || !strings.HasSuffix(show1, " gw-cli\n") {
		t.Fatalf("key show again: %d %q vs %q", code, show2, show1)
	}
	if st, err := os.Stat(filepath.Join(data, signing.FileName)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	// LoadCredential: a key in $CREDENTIALS_DIRECTORY wins.
	creds := t.TempDir()
	credKey, _, err := signing.Load(creds, "")
	if err != nil {
		t.Fatal(err)
	}
	code, show3, _ := runBin(t, []string{"CREDENTIALS_DIRECTORY=" + creds}, "key", "show", "--config", cfg)
	if code != 0 || !strings.HasPrefix(show3, credKey.ShowLine()) {
		t.Fatalf("key show with credentials: %q, want %s", show3, credKey.ShowLine())
	}

	// An episode on a dir target, signed with the gateway's key.
	key, _, err := signing.Load(data, "")
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	epDir := filepath.Join(target, "lab", "gw-cli", "2026", "11", "20", "ep1")
	if err := os.MkdirAll(epDir, 0o755); err != nil {
		t.Fatal(err)
	}
	mcap := make([]byte, 100_000)
	rand.Read(mcap)
	writeFile(t, filepath.Join(epDir, "episode.mcap"), string(mcap))
	sum := sha256.Sum256(mcap)
	m := upload.Manifest{Format: upload.ManifestFormat, Episode: "ep1", Site: "lab", Gateway: "gw-cli", Cell: "cell1", Task: "pick",
		Objects: []upload.ManifestObject{{Name: "episode.mcap", Key: "lab/gw-cli/2026/11/20/ep1/episode.mcap", Size: int64(len(mcap)), SHA256: hex.EncodeToString(sum[:])}}}
	body, _ := json.Marshal(m)
	sig, err := key.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	m.Signature = &sig
	man, _ := json.MarshalIndent(m, "", "  ")
	manPath := writeFile(t, filepath.Join(epDir, "manifest.json"), string(man))
	trusted := writeFile(t, filepath.Join(dir, "trusted"), show1)

	code, out, stderr := runBin(t, nil, "verify", target)
	if code != 0 || !strings.Contains(out, "1 ok, 0 failed") || !strings.Contains(out, "signer not pinned") {
		t.Fatalf("verify unpinned: %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runBin(t, nil, "verify", "--trusted-keys", trusted, manPath)
	if code != 0 || !strings.Contains(out, "(trusted)") || strings.Contains(out, "not pinned") {
		t.Fatalf("verify pinned: %d\n%s\n%s", code, out, stderr)
	}
	// One flipped byte: exit 1, the object named.
	mcap[500] ^= 0x80
	writeFile(t, filepath.Join(epDir, "episode.mcap"), string(mcap))
	code, out, stderr = runBin(t, nil, "verify", "--trusted-keys", trusted, target)
	if code != 1 || !strings.Contains(stderr, "changed object lab/gw-cli/2026/11/20/ep1/episode.mcap") || !strings.Contains(out, "0 ok, 1 failed") {
		t.Fatalf("verify flipped: %d\n%s\n%s", code, out, stderr)
	}
	mcap[500] ^= 0x80
	writeFile(t, filepath.Join(epDir, "episode.mcap"), string(mcap))
	// A changed manifest field: bad signature.
	writeFile(t, manPath, strings.Replace(string(man), `"cell1"`, `"cell9"`, 1))
	code, _, stderr = runBin(t, nil, "verify", target)
	if code != 1 || !strings.Contains(stderr, "bad signature") {
		t.Fatalf("verify changed manifest: %d %s", code, stderr)
	}
	writeFile(t, manPath, string(man))
	// A key not in the trusted list.
	other := writeFile(t, filepath.Join(dir, "other"), credKey.ShowLine()+"\n")
	code, _, stderr = runBin(t, nil, "verify", "--trusted-keys", other, target)
	if code != 1 || !strings.Contains(stderr, "untrusted key") || !strings.Contains(stderr, key.ID) {
		t.Fatalf("verify untrusted: %d %s", code, stderr)
	}
	// Usage and unreadable locations.
	if code, _, _ := runBin(t, nil, "verify"); code != exitUsage {
		t.Fatalf("verify without a location: exit %d", code)
	}
	if code, _, stderr := runBin(t, nil, "verify", filepath.Join(dir, "nope")); code != exitUnreadable {
		t.Fatalf("verify missing dir: exit %d %s", code, stderr)
	}
	if code, _, stderr := runBin(t, nil, "catalog", "compact", "--target", target, "--before", "yesterday"); code != exitUsage || !strings.Contains(stderr, "YYYY-MM-DD") {
		t.Fatalf("compact bad date: exit %d %s", code, stderr)
	}
	code, out, stderr = runBin(t, nil, "catalog", "compact", "--target", target, "--before", "2026-11-25")
	if code != 0 || !strings.Contains(out, "compacted 0 partition(s)") {
		t.Fatalf("compact empty: %d %s %s", code, out, stderr)
	}
}

// versitygw starts the S3-compatible server the upload tests use, over a
// fresh directory, and returns its endpoint.
func versitygw(t *testing.T, access, secret string) string {
	t.Helper()
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		home, _ := os.UserHomeDir()
		gopath = filepath.Join(home, "go")
	}
	vgw := filepath.Join(gopath, "bin", "versitygw")
	if _, err := os.Stat(vgw); err != nil {
		if p, err := exec.LookPath("versitygw"); err == nil {
			vgw = p
		} else if testing.Short() {
			t.Skip("versitygw not installed; skipped under -short")
		} else {
			t.Fatal("versitygw not installed: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0")
		}
	}
	addr := freeAddr(t)
	cmd := exec.Command(vgw, "--port", addr, "--access", access, "--secret", secret, "--quiet", "posix", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitUntil(t, 30*time.Second, "versitygw listening on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, nil)
	return "http://" + addr
}

// verify and catalog compact reach an S3 store: s3://bucket/prefix with
// --endpoint and the AWS_* credentials from the environment.
func TestVerifyCLIS3(t *testing.T) {
	const access, secret = "clitest", "clitestsecret123"
	endpoint := versitygw(t, access, secret)
	cl, err := minio.New(strings.TrimPrefix(endpoint, "http://"), &minio.Options{Creds: credentials.NewStaticV4(access, secret, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := cl.MakeBucket(ctx, "fleet", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	key, _, err := signing.Load(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	mcap := []byte(strings.Repeat("episode bytes ", 1000))
	sum := sha256.Sum256(mcap)
	dir := "central/lab/gw-s3/2026/11/20/ep1"
	m := upload.Manifest{Format: upload.ManifestFormat, Episode: "ep1", Site: "lab", Gateway: "gw-s3",
		Objects: []upload.ManifestObject{{Name: "episode.mcap", Key: dir + "/episode.mcap", Size: int64(len(mcap)), SHA256: hex.EncodeToString(sum[:])}}}
	body, _ := json.Marshal(m)
	sig, err := key.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	m.Signature = &sig
	man, _ := json.MarshalIndent(m, "", "  ")
	for k, v := range map[string][]byte{dir + "/episode.mcap": mcap, dir + "/manifest.json": man} {
		if _, err := cl.PutObject(ctx, "fleet", k, bytes.NewReader(v), int64(len(v)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"AWS_ACCESS_KEY_ID=" + access, "AWS_SECRET_ACCESS_KEY=" + secret}
	trusted := writeFile(t, filepath.Join(t.TempDir(), "trusted"), key.ShowLine()+"\n")
	code, out, stderr := runBin(t, env, "verify", "--endpoint", endpoint, "--trusted-keys", trusted, "s3://fleet/central")
	if code != 0 || !strings.Contains(out, "1 ok, 0 failed") || !strings.Contains(out, "(trusted)") {
		t.Fatalf("verify s3: %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runBin(t, env, "verify", "--endpoint", endpoint, "s3://fleet/"+dir+"/manifest.json")
	if code != 0 || !strings.Contains(out, "1 ok") {
		t.Fatalf("verify one s3 episode: %d\n%s\n%s", code, out, stderr)
	}
	if _, err := cl.PutObject(ctx, "fleet", dir+"/episode.mcap", bytes.NewReader(mcap[1:]), int64(len(mcap)-1), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runBin(t, env, "verify", "--endpoint", endpoint, "s3://fleet/central/")
	if code != 1 || !strings.Contains(stderr, "changed object "+dir+"/episode.mcap: size") {
		t.Fatalf("verify changed s3 object: %d %s", code, stderr)
	}
	// Wrong credentials: the store cannot be read.
	code, _, stderr = runBin(t, []string{"AWS_ACCESS_KEY_ID=" + access, "AWS_SECRET_ACCESS_KEY=wrong"}, "verify", "--endpoint", endpoint, "s3://fleet/central")
	if code != exitUnreadable || strings.Contains(stderr, "wrong") {
		t.Fatalf("verify with bad credentials: %d %s", code, stderr)
	}
	code, out, stderr = runBin(t, env, "catalog", "compact", "--endpoint", endpoint, "--target", "s3://fleet/central", "--before", "2026-11-21")
	if code != 0 || !strings.Contains(out, "compacted 0 partition(s)") {
		t.Fatalf("compact s3: %d %s %s", code, out, stderr)
	}
}
