// Package signing holds the gateway's Ed25519 signing key and signs and
// verifies JSON documents (upload manifests).
//
// Key. Each gateway has one Ed25519 key, a PKCS#8 PEM file (the format
// `openssl genpkey -algorithm ed25519` writes). Load looks for it in
// $CREDENTIALS_DIRECTORY/signing.key first (systemd
// `LoadCredential=signing.key:/etc/episoded/signing.key`), then in the state
// directory (storage.dir)/signing.key, and the daemon generates the latter,
// mode 0600, on start (after the store is initialised: storage refuses a
// non-empty directory that is not yet a store) when neither exists. The key id is "ed25519:" followed by the first 16
// hex digits of the sha256 of the raw public key.
//
// Signature. A signed document is a JSON object with a member "signature":
// {alg, key_id, public_key, value}. The signed message is a fixed domain
// prefix followed by the canonical form of the document without its
// "signature" member: decoded with numbers kept as written and encoded
// again with Go's encoding/json, which sorts object keys and prints no
// insignificant white space. Any change to any member, at any depth,
// changes the message; re-indenting the file does not.
package signing

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/episoded/episoded/internal/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// FileName is the key's file name in the state and credentials
// directories.
const FileName = "signing.key"

// Alg is the only signature algorithm.
const Alg = "ed25519"

// domain separates manifest signatures from any other use of the key.
const domain = "episoded.signed-json.v1\x00"

// Key is a gateway's signing key.
type Key struct {
	priv ed25519.PrivateKey
	// Public is the public key, ID its id.
	Public ed25519.PublicKey
	ID     string
	// Path is the file the key was read from.
	Path string
}

// KeyID returns the id of a public key.
func KeyID(pub ed25519.PublicKey) string {
	h := sha256.Sum256(pub)
	return "ed25519:" + hex.EncodeToString(h[:8])
}

// PublicString is the public key in base64 (standard encoding).
func (k *Key) PublicString() string { return base64.StdEncoding.EncodeToString(k.Public) }

// Load returns the gateway key: $CREDENTIALS_DIRECTORY/signing.key if
// credDir is set and holds one, else stateDir/signing.key, generated if
// missing. created reports that a new key was written.
func Load(stateDir, credDir string) (k *Key, created bool, err error) {
	if credDir != "" {
		p := filepath.Join(credDir, FileName)
		if _, err := os.Stat(p); err == nil {
			k, err := readKey(p)
			return k, false, err
		}
	}
	if stateDir == "" {
		return nil, false, errors.New("signing key: no state directory")
	}
	p := filepath.Join(stateDir, FileName)
	k, err = readKey(p)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, false, err
	}
	k, err = generate(p)
	return k, err == nil, err
}

// ErrNoKey is returned by Find when there is no key yet.
var ErrNoKey = errors.New("signing: no key yet")

// Find returns the key Load would use without ever generating one.
func Find(stateDir, credDir string) (*Key, error) {
	if credDir != "" {
		p := filepath.Join(credDir, FileName)
		if _, err := os.Stat(p); err == nil {
			return readKey(p)
		}
	}
	p := filepath.Join(stateDir, FileName)
	k, err := readKey(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s", ErrNoKey, p)
	}
	return k, err
}

func readKey(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s: not a PEM \"PRIVATE KEY\" (PKCS#8) file", path)
	}
	anyKey, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	priv, ok := anyKey.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: %T is not an Ed25519 key", path, anyKey)
	}
	return newKey(priv, path), nil
}

func newKey(priv ed25519.PrivateKey, path string) *Key {
	pub := priv.Public().(ed25519.PublicKey)
	return &Key{priv: priv, Public: pub, ID: KeyID(pub), Path: path}
}

// generate writes a new key to path (0600) through a temp file and a
// rename, so that a crash never leaves half a key.
func generate(path string) (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode signing key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("write signing key: %w", err)
	}
	if err := atomicfile.Write(path, 0o600, func(f *os.File) error {
		return pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}); err != nil {
		return nil, fmt.Errorf("write signing key: %w", err)
	}
	return newKey(priv, path), nil
}

// Signature is a document's "signature" member.
type Signature struct {
	Alg       string `json:"alg"`
	KeyID     string `json:"key_id"`
	PublicKey string `json:"public_key"`
	Value     string `json:"value"`
}

// Canonical returns the signed message of a JSON object: the domain prefix
// and the object without its "signature" member in canonical form.
func Canonical(doc []byte) ([]byte, error) {
	if !utf8.Valid(doc) {
		return nil, errors.New("document is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("parse document: %w", err)
	}
	if dec.More() {
		return nil, errors.New("parse document: trailing data after the object")
	}
	delete(m, "signature")
	var buf bytes.Buffer
	buf.WriteString(domain)
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("canonical form: %w", err)
	}
	return buf.Bytes(), nil
}

// Sign signs a JSON object (its "signature" member, if any, is ignored).
func (k *Key) Sign(doc []byte) (Signature, error) {
	msg, err := Canonical(doc)
	if err != nil {
		return Signature{}, fmt.Errorf("sign: %w", err)
	}
	return Signature{Alg: Alg, KeyID: k.ID, PublicKey: k.PublicString(),
		Value: base64.StdEncoding.EncodeToString(ed25519.Sign(k.priv, msg))}, nil
}

// Errors of Verify.
var (
	ErrUnsigned     = errors.New("signing: document has no signature")
	ErrBadSignature = errors.New("signing: bad signature")
)

// Verify checks the signature a JSON object carries against the public key
// it names, and returns that signature. It does not decide whether the key
// is trusted.
func Verify(doc []byte) (Signature, ed25519.PublicKey, error) {
	var w struct {
		Signature *Signature `json:"signature"`
	}
	if err := json.Unmarshal(doc, &w); err != nil {
		return Signature{}, nil, fmt.Errorf("parse document: %w", err)
	}
	if w.Signature == nil {
		return Signature{}, nil, ErrUnsigned
	}
	s := *w.Signature
	if s.Alg != Alg {
		return s, nil, fmt.Errorf("%w: algorithm %q, want %s", ErrBadSignature, s.Alg, Alg)
	}
	pub, err := ParsePublic(s.PublicKey)
	if err != nil {
		return s, nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if id := KeyID(pub); id != s.KeyID {
		return s, pub, fmt.Errorf("%w: key id %s does not match the public key (%s)", ErrBadSignature, s.KeyID, id)
	}
	sig, err := base64.StdEncoding.DecodeString(s.Value)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return s, pub, fmt.Errorf("%w: malformed signature value", ErrBadSignature)
	}
	msg, err := Canonical(doc)
	if err != nil {
		return s, pub, err
	}
	if !ed25519.Verify(pub, msg, sig) {
		return s, pub, fmt.Errorf("%w: the document was changed after signing, or signed by another key", ErrBadSignature)
	}
	return s, pub, nil
}

// ParsePublic parses a base64 raw Ed25519 public key.
func ParsePublic(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("malformed Ed25519 public key %q", s)
	}
	return ed25519.PublicKey(b), nil
}

// ShowLine is the line `episoded key show` prints and a trusted-keys file
// holds: "<key id> <base64 public key> [comment]".
func (k *Key) ShowLine() string { return k.ID + " " + k.PublicString() }

// ReadTrusted reads a trusted-keys file: one key per line, "<key id>
// <base64 public key>" (what `episoded key show` prints) optionally followed
// by a comment such as the gateway name; blank lines and lines starting
// with # are ignored. A line whose id does not match its key is an error.
// It returns the keys by id.
func ReadTrusted(path string) (map[string]ed25519.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read trusted keys: %w", err)
	}
	defer f.Close()
	out := map[string]ed25519.PublicKey{}
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("trusted keys %s:%d: want \"<key id> <public key>\"", path, n)
		}
		pub, err := ParsePublic(fields[1])
		if err != nil {
			return nil, fmt.Errorf("trusted keys %s:%d: %v", path, n, err)
		}
		if KeyID(pub) != fields[0] {
			return nil, fmt.Errorf("trusted keys %s:%d: id %s does not match its key (%s)", path, n, fields[0], KeyID(pub))
		}
		out[fields[0]] = pub
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read trusted keys: %w", err)
	}
	return out, nil
}
