package catalog_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/episoded/episoded/internal/signing"
	"github.com/episoded/episoded/sync/bucket"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
	"github.com/episoded/episoded/sync/verify"
)

func putObject(t *testing.T, c *minio.Client, key string, data []byte) {
	t.Helper()
	if _, err := c.PutObject(context.Background(), bucketName, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// verify passes on untouched episodes, names episode.mcap after one byte
// of it is flipped, fails after a manifest field is changed, and fails for
// a signer missing from the trusted keys.
func TestVerifyS3(t *testing.T) {
	s := synctest.StartS3(t)
	a, b, fx := uploadFleet(t, s)
	c := s3Client(t, s)
	bk, err := bucket.NewS3(bucketName, bucket.S3Options{Endpoint: "http://" + s.Endpoint, AccessKey: s.Access, SecretKey: s.Secret, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	trustedFile := filepath.Join(t.TempDir(), "trusted")
	if err := os.WriteFile(trustedFile, []byte("# fleet\n"+a.key.ShowLine()+" gw-a\n"+b.key.ShowLine()+" gw-b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	trusted, err := signing.ReadTrusted(trustedFile)
	if err != nil {
		t.Fatal(err)
	}

	// Untouched: every episode under the prefix passes, pinned.
	rep, err := verify.Run(ctx, bk, prefix, verify.Options{Trusted: trusted})
	if err != nil || rep.OK != 3 || rep.Failed != 0 || !rep.Pinned {
		t.Fatalf("untouched: %+v %v", rep, err)
	}
	for _, ep := range rep.Episodes {
		if !ep.Pinned || ep.Objects != 1 {
			t.Fatalf("untouched episode %+v", ep)
		}
	}
	// Without trusted keys: still OK, not pinned.
	rep, err = verify.Run(ctx, bk, prefix, verify.Options{})
	if err != nil || rep.OK != 3 || rep.Pinned {
		t.Fatalf("unpinned: %+v %v", rep, err)
	}

	// One flipped byte in gw-a's first episode.mcap.
	dirA := upload.Dir(prefix, a.site, a.id, fx[0].Episode)
	mcapKey := dirA + "/episode.mcap"
	orig := getObject(t, c, mcapKey)
	flipped := bytes.Clone(orig)
	flipped[len(flipped)/2] ^= 0x01
	putObject(t, c, mcapKey, flipped)
	rep, err = verify.Run(ctx, bk, prefix, verify.Options{Trusted: trusted})
	if err != nil || rep.OK != 2 || rep.Failed != 1 {
		t.Fatalf("flipped byte: %+v %v", rep, err)
	}
	bad := failed(rep)
	if len(bad) != 1 || len(bad[0].Problems) != 1 || bad[0].Problems[0].Kind != verify.ChangedObject || bad[0].Problems[0].Key != mcapKey ||
		!strings.Contains(bad[0].Problems[0].String(), "episode.mcap") {
		t.Fatalf("flipped byte: problems %+v", bad)
	}
	// Only that episode, by its manifest key.
	one, err := verify.Run(ctx, bk, dirA+"/manifest.json", verify.Options{})
	if err != nil || one.Failed != 1 || len(one.Episodes) != 1 {
		t.Fatalf("one episode: %+v %v", one, err)
	}
	putObject(t, c, mcapKey, orig)

	// A manifest field changed (the task), the file otherwise intact.
	manKey := upload.Dir(prefix, b.site, b.id, fx[2].Episode) + "/manifest.json"
	man := getObject(t, c, manKey)
	changed := bytes.Replace(man, []byte(`"task": "pick"`), []byte(`"task": "place"`), 1)
	if bytes.Equal(changed, man) {
		t.Fatalf("no task field to change in %s", man)
	}
	putObject(t, c, manKey, changed)
	rep, err = verify.Run(ctx, bk, prefix, verify.Options{Trusted: trusted})
	if err != nil || rep.Failed != 1 {
		t.Fatalf("changed manifest: %+v %v", rep, err)
	}
	if p := failed(rep)[0].Problems; len(p) != 1 || p[0].Kind != verify.BadSignature || p[0].Key != manKey {
		t.Fatalf("changed manifest: problems %+v", p)
	}
	// Re-signing the changed manifest with a key the fleet does not trust:
	// the signature is valid, the signer is not.
	rogue, _, err := signing.Load(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	var m upload.Manifest
	if err := json.Unmarshal(changed, &m); err != nil {
		t.Fatal(err)
	}
	m.Signature = nil
	body, _ := json.Marshal(m)
	sig, err := rogue.Sign(body)
	if err != nil {
		t.Fatal(err)
	}
	m.Signature = &sig
	resigned, _ := json.MarshalIndent(m, "", "  ")
	putObject(t, c, manKey, resigned)
	rep, err = verify.Run(ctx, bk, prefix, verify.Options{Trusted: trusted})
	if err != nil || rep.Failed != 1 {
		t.Fatalf("untrusted key: %+v %v", rep, err)
	}
	if p := failed(rep)[0].Problems; len(p) != 1 || p[0].Kind != verify.UntrustedKey || !strings.Contains(p[0].Detail, rogue.ID) {
		t.Fatalf("untrusted key: problems %+v", p)
	}
	// Without --trusted-keys the rogue signature verifies (not pinned).
	rep, err = verify.Run(ctx, bk, prefix, verify.Options{})
	if err != nil || rep.OK != 3 || rep.Pinned {
		t.Fatalf("unpinned rogue: %+v %v", rep, err)
	}
	// A trusted id paired with another key is not trusted.
	forged := map[string]ed25519.PublicKey{b.key.ID: rogue.Public, a.key.ID: a.key.Public}
	rep, err = verify.Run(ctx, bk, manKey, verify.Options{Trusted: forged})
	if err != nil || rep.Failed != 1 {
		t.Fatalf("forged trust: %+v %v", rep, err)
	}

	// A valid episode copied over another one's directory: every byte
	// and the signature hold, the place does not.
	dirB := upload.Dir(prefix, b.site, b.id, fx[2].Episode)
	putObject(t, c, mcapKey, orig)
	putObject(t, c, dirB+"/manifest.json", getObject(t, c, dirA+"/manifest.json"))
	putObject(t, c, dirB+"/episode.mcap", orig)
	rep, err = verify.Run(ctx, bk, dirB, verify.Options{Trusted: trusted})
	if err != nil || rep.Failed != 1 || failed(rep)[0].Problems[0].Kind != verify.Misplaced {
		t.Fatalf("misplaced episode: %+v %v", rep, err)
	}
	// A missing object.
	if err := c.RemoveObject(ctx, bucketName, mcapKey, minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	rep, err = verify.Run(ctx, bk, dirA, verify.Options{Trusted: trusted})
	if err != nil || rep.Failed != 1 || failed(rep)[0].Problems[0].Kind != verify.MissingObject || failed(rep)[0].Problems[0].Key != mcapKey {
		t.Fatalf("missing object: %+v %v", rep, err)
	}
}

func failed(r verify.Report) []verify.Episode {
	var out []verify.Episode
	for _, e := range r.Episodes {
		if !e.OK() {
			out = append(out, e)
		}
	}
	return out
}
