package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
