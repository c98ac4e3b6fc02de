package dataset_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/episoded/episoded/sync/bucket"
	"github.com/episoded/episoded/sync/dataset"
	"github.com/episoded/episoded/sync/dataset/datasetcheck"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

func treeHash(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	m := map[string][32]byte{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		m[rel] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestS3Source builds from uploaded episodes in a real S3-compatible
// server (versitygw) under s3://bucket/prefix: the same dataset as from a
// directory; an object changed after upload is refused, named.
func TestS3Source(t *testing.T) {
	if testing.Short() {
		t.Skip("runs versitygw, ffmpeg, node and PyAV; skipped under -short")
	}
	aus, _, _ := ffmpegClip(t, 4, 0, 30)
	src := t.TempDir()
	for i, id := range []string{"ep1", "ep2"} {
		start := t0 + int64(i)*100e9
		fakeEpisode(t, src, id, "pick", start, []telemetry{joints(start, 4)}, map[string][]camFrame{
			"cell1/cam": frames(aus, nil, start, 2_000_000, uint64(i), 0, 0),
		})
	}
	m := testMapping(t, dataset.PolicyFillPrevious, "cam")
	fromDir := filepath.Join(t.TempDir(), "dir")
	build(t, src, fromDir, m)

	s3 := synctest.StartS3(t)
	t.Setenv("AWS_ACCESS_KEY_ID", s3.Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3.Secret)
	cl, err := minio.New(s3.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s3.Access, s3.Secret, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := cl.MakeBucket(ctx, "central", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	put := func(key string, b []byte) {
		t.Helper()
		if _, err := cl.PutObject(ctx, "central", key, synctest.Bytes(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"ep1", "ep2"} {
		mcap, err := os.ReadFile(filepath.Join(src, id, upload.ObjectMCAP))
		if err != nil {
			t.Fatal(err)
		}
		var man upload.Manifest
		b, _ := os.ReadFile(filepath.Join(src, id, upload.ObjectManifest))
		if err := json.Unmarshal(b, &man); err != nil {
			t.Fatal(err)
		}
		prefix := "site/gw/2026/11/29/" + id + "/"
		man.Objects[0].Key = prefix + upload.ObjectMCAP
		mb, _ := json.Marshal(man)
		put(prefix+upload.ObjectMCAP, mcap)
		put(prefix+upload.ObjectManifest, mb)
	}
	s3src, err := dataset.OpenLocation("s3://central/site", bucket.S3Options{Endpoint: "http://" + s3.Endpoint, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	fromS3 := filepath.Join(t.TempDir(), "s3")
	if _, err := dataset.Build(ctx, s3src, dataset.Options{Out: fromS3, Mapping: m, Version: "test"}); err != nil {
		t.Fatal(err)
	}
	datasetcheck.Run(t, fromS3)
	a, b := treeHash(t, fromDir), treeHash(t, fromS3)
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s differs between the dir and s3 builds", k)
		}
	}

	// Tamper with one object after upload.
	mcap, _ := os.ReadFile(filepath.Join(src, "ep2", upload.ObjectMCAP))
	mcap[len(mcap)/3] ^= 1
	key := "site/gw/2026/11/29/ep2/" + upload.ObjectMCAP
	put(key, mcap)
	_, err = dataset.Build(ctx, s3src, dataset.Options{Out: filepath.Join(t.TempDir(), "bad"), Mapping: m})
	if !errors.Is(err, dataset.ErrTampered) || !strings.Contains(err.Error(), "s3://central/"+key) {
		t.Fatalf("tampered object: %v; want ErrTampered naming s3://central/%s", err, key)
	}
}
