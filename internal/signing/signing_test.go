package signing

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func signed(t *testing.T, k *Key, doc map[string]any) []byte {
	t.Helper()
	body, _ := json.Marshal(doc)
	sig, err := k.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	doc["signature"] = sig
	out, _ := json.MarshalIndent(doc, "", "  ")
	return out
}

func TestSignVerify(t *testing.T) {
	k, created, err := Load(t.TempDir(), "")
	if err != nil || !created {
		t.Fatal(created, err)
	}
	doc := signed(t, k, map[string]any{"episode": "e1", "big": json.Number("1795971296520419963"), "objects": []any{map[string]any{"sha256": "ab", "size": 3}}})
	s, _, err := Verify(doc)
	if err != nil || s.KeyID != k.ID {
		t.Fatalf("verify: %v %+v", err, s)
	}
	// Re-indenting does not matter.
	var compact bytes.Buffer
	if err := json.Compact(&compact, doc); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Verify(compact.Bytes()); err != nil {
		t.Fatalf("compacted: %v", err)
	}
	// Any change at any depth does, numbers included (no float rounding).
	for _, c := range []struct{ from, to string }{
		{`"sha256": "ab"`, `"sha256": "ac"`},
		{`1795971296520419963`, `1795971296520419964`},
		{`"size": 3`, `"size": 3.0`},
		{`"episode": "e1"`, `"episode": "e1", "extra": 1`},
	} {
		bad := bytes.Replace(doc, []byte(c.from), []byte(c.to), 1)
		if bytes.Equal(bad, doc) {
			t.Fatalf("%s not in %s", c.from, doc)
		}
		if _, _, err := Verify(bad); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s -> %s: %v", c.from, c.to, err)
		}
	}
	if _, _, err := Verify([]byte(`{"a":1}`)); !errors.Is(err, ErrUnsigned) {
		t.Errorf("unsigned: %v", err)
	}
	// A signature whose key id lies about the key.
	other, _, _ := Load(t.TempDir(), "")
	lie := bytes.Replace(doc, []byte(k.ID), []byte(other.ID), 1)
	if _, _, err := Verify(lie); !errors.Is(err, ErrBadSignature) {
		t.Errorf("lying key id: %v", err)
	}
}

// The key file is PKCS#8 PEM as openssl writes it: a key made by openssl
// loads, and ours is read back by openssl with the same public key.
func TestKeyFileInterop(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if testing.Short() {
			t.Skip("openssl missing; skipped under -short")
		}
		t.Fatal("openssl missing")
	}
	dir := t.TempDir()
	if out, err := exec.Command(openssl, "genpkey", "-algorithm", "ed25519", "-out", filepath.Join(dir, FileName)).CombinedOutput(); err != nil {
		t.Fatalf("openssl genpkey: %v %s", err, out)
	}
	k, created, err := Load(t.TempDir(), dir)
	if err != nil || created {
		t.Fatalf("load openssl key from credentials dir: %v %v", created, err)
	}
	out, err := exec.Command(openssl, "pkey", "-in", k.Path, "-pubout", "-outform", "DER").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(out, k.Public) {
		t.Fatalf("openssl public key %x does not end with ours %x", out, []byte(k.Public))
	}
	// A damaged key file is an error naming the file, never replaced.
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, FileName), []byte("garbage"), 0o600)
	if _, _, err := Load(bad, ""); err == nil || !strings.Contains(err.Error(), FileName) {
		t.Fatalf("damaged key: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(bad, FileName)); string(b) != "garbage" {
		t.Fatal("damaged key file was replaced")
	}
}

func TestReadTrusted(t *testing.T) {
	k, _, _ := Load(t.TempDir(), "")
	p := filepath.Join(t.TempDir(), "trusted")
	os.WriteFile(p, []byte("# comment\n\n"+k.ShowLine()+" gw-1\n"), 0o644)
	m, err := ReadTrusted(p)
	if err != nil || !m[k.ID].Equal(k.Public) {
		t.Fatalf("%v %v", m, err)
	}
	os.WriteFile(p, []byte("ed25519:0000000000000000 "+k.PublicString()+"\n"), 0o644)
	if _, err := ReadTrusted(p); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Fatalf("mismatched id: %v", err)
	}
}
