package catalog_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/npmcache"
	"github.com/episoded/episoded/internal/provenance"
	"github.com/episoded/episoded/internal/signing"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

const (
	bucketName = "fleet"
	prefix     = "central"
)

// gateway is one simulated gateway: its own store, key and uploader
// writing to the shared versitygw bucket.
type gateway struct {
	site, id string
	store    *storage.Store
	key      *signing.Key
	up       *upload.Uploader
}

func newGateway(t *testing.T, s *synctest.S3, site, id string) *gateway {
	t.Helper()
	g := &gateway{site: site, id: id, store: synctest.OpenStore(t)}
	k, created, err := signing.Load(t.TempDir(), "")
	if err != nil || !created {
		t.Fatalf("generate key: %v %v", created, err)
	}
	g.key = k
	cfg := &config.Config{Gateway: config.Gateway{ID: id, Site: site}, Devices: []config.Device{
		{ID: "cam", Type: config.DeviceRTSP, URL: "rtsp://admin:hunter2@cam.local/stream"},
		{ID: "robot1", Type: config.DeviceMQTT, Broker: "plc", Topics: []string{"factory/+/robot1/#"}, Format: "json"},
	}, Brokers: []config.Broker{{ID: "plc", URL: "tcp://user:pw@broker.local:1883"}}}
	static, err := provenance.NewStatic(cfg)
	if err != nil {
		t.Fatal(err)
	}
	u, err := upload.New(g.store, upload.Options{
		Target: upload.Target{Type: "s3", Endpoint: "http://" + s.Endpoint, Bucket: bucketName, PathStyle: true, Region: "us-east-1",
			AccessKey: s.Access, SecretKey: s.Secret, Prefix: prefix},
		Site: site, Gateway: id, PartSize: 5 << 20, RetryMin: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond,
		StageDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Signer: k,
		Provenance: func(e episode.Episode) *provenance.Provenance {
			return static.Build(e, func(stream string) provenance.StreamInfo {
				ds, err := g.store.Descriptors(stream)
				if err != nil || len(ds) == 0 {
					return provenance.StreamInfo{}
				}
				return provenance.StreamInfo{Device: ds[len(ds)-1].Device, Source: ds[len(ds)-1].Source}
			}, func() *episode.TimeSync { ts, _ := provenance.ReadTimeSync("upload"); return ts })
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	g.up = u
	return g
}

func s3Client(t testing.TB, s *synctest.S3) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.Access, s.Secret, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// download copies every object under prefix into dir, keeping the keys as
// paths, and returns the keys.
func download(t testing.TB, c *minio.Client, prefix, dir string) []string {
	t.Helper()
	ctx := context.Background()
	var keys []string
	for o := range c.ListObjects(ctx, bucketName, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
		if err := c.FGetObject(ctx, bucketName, o.Key, filepath.Join(dir, filepath.FromSlash(o.Key)), minio.GetObjectOptions{}); err != nil {
			t.Fatalf("download %s: %v", o.Key, err)
		}
	}
	return keys
}

func getObject(t testing.TB, c *minio.Client, key string) []byte {
	t.Helper()
	o, err := c.GetObject(context.Background(), bucketName, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return b
}

// duck runs SQL statements with DuckDB and returns the last one's rows.
func duck(t *testing.T, sql ...string) []map[string]any {
	t.Helper()
	dir := npmcache.Install(t, "testdata/duckdb", "@duckdb/node-api", "the DuckDB catalog query")
	script := npmcache.Script(t, dir, "testdata/duckdb/query.mjs")
	cmd := exec.Command("node", append([]string{script}, sql...)...)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("duckdb %q: %v", sql, err)
	}
	var rows []map[string]any
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("duckdb output %s: %v", out, err)
	}
	return rows
}

func execLook(name string) (string, error) { return exec.LookPath(name) }

func execOutput(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	return cmd.Output()
}
