// Package verify checks uploaded episodes from the central side: every
// object's size and sha256 against the manifest, and the manifest's
// Ed25519 signature (internal/signing), optionally against a list of
// trusted gateway keys. `episoded verify` is its command line.
//
// Objects are looked up next to their manifest (the manifest's directory
// plus the object's base name), so an episode directory copied elsewhere
// verifies as well as the bucket it came from.
package verify

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/episoded/episoded/internal/signing"
	"github.com/episoded/episoded/sync/bucket"
	"github.com/episoded/episoded/sync/upload"
)

// Problem kinds.
const (
	ChangedObject = "changed object"
	MissingObject = "missing object"
	BadManifest   = "bad manifest"
	BadSignature  = "bad signature"
	Unsigned      = "unsigned manifest"
	UntrustedKey  = "untrusted key"
	// Misplaced: a valid manifest (and its objects) copied into another
	// episode's directory.
	Misplaced = "misplaced episode"
)

// Problem is one thing wrong with an episode.
type Problem struct {
	Kind string `json:"kind"`
	// Key is the object (or manifest) concerned.
	Key    string `json:"key"`
	Detail string `json:"detail"`
}

func (p Problem) String() string { return p.Kind + " " + p.Key + ": " + p.Detail }

// Episode is the result for one manifest.
type Episode struct {
	Manifest string    `json:"manifest"`
	Episode  string    `json:"episode"`
	Gateway  string    `json:"gateway"`
	KeyID    string    `json:"key_id,omitempty"`
	Pinned   bool      `json:"pinned"` // the signer is in the trusted keys
	Objects  int       `json:"objects"`
	Bytes    int64     `json:"bytes"`
	Problems []Problem `json:"problems"`
}

// OK reports whether the episode has no problem.
func (e Episode) OK() bool { return len(e.Problems) == 0 }

// Report is the result of a run.
type Report struct {
	Episodes []Episode `json:"episodes"`
	OK       int       `json:"ok"`
	Failed   int       `json:"failed"`
	// Pinned is false when no trusted keys were given.
	Pinned bool `json:"pinned"`
}

// Options configure Run.
type Options struct {
	// Trusted keys by id; nil means signatures are checked against the key
	// each manifest names, and the signer is not pinned.
	Trusted map[string]ed25519.PublicKey
	// Progress, if set, is called after each episode.
	Progress func(Episode)
}

// ErrNoManifest is returned when nothing under the prefix is a manifest.
var ErrNoManifest = errors.New("verify: no manifest.json found")

// Run verifies the episode whose manifest is at prefix (a key ending in
// manifest.json, or an episode directory), or every episode under prefix.
func Run(ctx context.Context, b bucket.Bucket, prefix string, o Options) (Report, error) {
	rep := Report{Pinned: o.Trusted != nil, Episodes: []Episode{}}
	var manifests []string
	if path.Base(prefix) == upload.ObjectManifest {
		manifests = []string{prefix}
	} else {
		lp := prefix
		if lp != "" && !strings.HasSuffix(lp, "/") {
			lp += "/"
		}
		objs, err := b.List(ctx, lp)
		if err != nil {
			return rep, err
		}
		for _, ob := range objs {
			if path.Base(ob.Key) == upload.ObjectManifest {
				manifests = append(manifests, ob.Key)
			}
		}
	}
	if len(manifests) == 0 {
		return rep, fmt.Errorf("%w under %q in %s", ErrNoManifest, prefix, b)
	}
	for _, key := range manifests {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		ep, err := One(ctx, b, key, o.Trusted)
		if err != nil {
			return rep, err
		}
		if ep.OK() {
			rep.OK++
		} else {
			rep.Failed++
		}
		rep.Episodes = append(rep.Episodes, ep)
		if o.Progress != nil {
			o.Progress(ep)
		}
	}
	return rep, nil
}

// One verifies the episode of one manifest. Problems with the episode are
// in the result; the error is for failures to read at all (network,
// permissions).
func One(ctx context.Context, b bucket.Bucket, manKey string, trusted map[string]ed25519.PublicKey) (Episode, error) {
	ep := Episode{Manifest: manKey, Problems: []Problem{}}
	add := func(kind, key, format string, args ...any) {
		ep.Problems = append(ep.Problems, Problem{Kind: kind, Key: key, Detail: fmt.Sprintf(format, args...)})
	}
	data, err := bucket.ReadAll(ctx, b, manKey)
	if errors.Is(err, bucket.ErrNotExist) {
		add(MissingObject, manKey, "the manifest is missing")
		return ep, nil
	}
	if err != nil {
		return ep, fmt.Errorf("read %s: %w", manKey, err)
	}
	var m upload.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		add(BadManifest, manKey, "not a manifest: %v", err)
		return ep, nil
	}
	ep.Episode, ep.Gateway = m.Episode, m.Gateway
	sig, pub, err := signing.Verify(data)
	ep.KeyID = sig.KeyID
	switch {
	case errors.Is(err, signing.ErrUnsigned):
		add(Unsigned, manKey, "the manifest carries no signature")
	case err != nil:
		add(BadSignature, manKey, "%v", strings.TrimPrefix(err.Error(), "signing: "))
	case trusted != nil:
		if tk, ok := trusted[sig.KeyID]; ok && tk.Equal(pub) {
			ep.Pinned = true
		} else {
			add(UntrustedKey, manKey, "signed by %s, which is not in the trusted keys", sig.KeyID)
		}
	}
	if len(m.Objects) == 0 {
		add(BadManifest, manKey, "the manifest lists no objects")
	}
	dir := path.Dir(manKey)
	if dir != "." && (path.Base(dir) != m.Episode || !strings.HasSuffix("/"+path.Dir(firstKey(m)), "/"+dir)) {
		add(Misplaced, manKey, "the manifest describes episode %s stored under %s, but lies in %s", m.Episode, path.Dir(firstKey(m)), dir)
	}
	for _, o := range m.Objects {
		key := path.Join(dir, path.Base(o.Key))
		if dir == "." {
			key = path.Base(o.Key)
		}
		ep.Objects++
		ep.Bytes += o.Size
		size, sum, err := hashObject(ctx, b, key)
		switch {
		case errors.Is(err, bucket.ErrNotExist):
			add(MissingObject, key, "listed in the manifest (%d bytes) but not found", o.Size)
		case err != nil:
			return ep, fmt.Errorf("read %s: %w", key, err)
		case size != o.Size:
			add(ChangedObject, key, "size %d, manifest says %d", size, o.Size)
		case sum != o.SHA256:
			add(ChangedObject, key, "sha256 %s, manifest says %s", sum, o.SHA256)
		}
	}
	return ep, nil
}

func hashObject(ctx context.Context, b bucket.Bucket, key string) (int64, string, error) {
	r, err := b.Open(ctx, key)
	if err != nil {
		return 0, "", err
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return n, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// firstKey is the key of the manifest's first object ("" if none).
func firstKey(m upload.Manifest) string {
	if len(m.Objects) == 0 {
		return ""
	}
	return m.Objects[0].Key
}
