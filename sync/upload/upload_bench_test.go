package upload_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/export"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// BenchmarkUploadDefaults measures what the daemon does with a closed
// episode, at the daemon's default sync settings (sync.concurrency and
// sync.part_size: the defaults in sync/upload, no bandwidth cap, no
// window): stage the export to the outbox (export, sha256, fsync), upload
// it multipart with Content-MD5 per part and ETag checks, HEAD-verify it,
// then write the manifest and the catalog row. That is one
// Uploader.RunOnce over one pending episode, timed from start to end.
//
// The peer, in the same run and against the same versitygw: `rclone copy`
// of the same bytes (the export, staged beforehand, so rclone does not pay
// for the export), once with rclone's defaults and once with our part size
// and concurrency. The ratio is ours over the faster rclone run: above 1
// means the daemon's whole path, staging included, beats rclone's upload
// alone.
//
// EPISODED_UPLOAD_BENCH_MB sets the episode's raw payload (default 500;
// random, incompressible, like video).
//
//	go test -run '^$' -bench BenchmarkUploadDefaults -benchtime 3x -timeout 900s ./sync/upload/
func BenchmarkUploadDefaults(b *testing.B) {
	if testing.Short() {
		b.Skip("needs versitygw and rclone; skipped under -short")
	}
	rclone, err := exec.LookPath("rclone")
	if err != nil {
		b.Fatal("rclone not installed (apt-get install -y --no-install-recommends rclone)")
	}
	mb := int64(500)
	if v, err := strconv.Atoi(os.Getenv("EPISODED_UPLOAD_BENCH_MB")); err == nil && v > 0 {
		mb = int64(v)
	}
	// The daemon's defaults (internal/config builds upload.Options from these).
	concurrency, partSize := upload.DefaultConcurrency, int64(upload.DefaultPartSize)

	s := synctest.StartS3(b)
	cl, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.Access, s.Secret, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := cl.MakeBucket(ctx, "bench", minio.MakeBucketOptions{}); err != nil {
		b.Fatal(err)
	}
	st := synctest.OpenStore(b)
	fx := synctest.Build(b, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-00000000be01", RawBytes: mb << 20, RawChunk: 512 << 10})
	dataDir := b.TempDir()

	// rclone's input: the same export, staged the same way (file + fsync).
	peerFile := filepath.Join(dataDir, "peer", "episode.mcap")
	if err := os.MkdirAll(filepath.Dir(peerFile), 0o750); err != nil {
		b.Fatal(err)
	}
	stageStart := time.Now()
	size := exportTo(b, st, fx.Episode.ID, peerFile)
	stageTook := time.Since(stageStart)

	env := rcloneEnv(s)
	runRclone := func(dst string, extra ...string) time.Duration {
		args := append([]string{"copy", "--config", "/dev/null", "--no-check-dest"}, extra...)
		args = append(args, peerFile, "x:bench/"+dst)
		cmd := exec.Command(rclone, args...)
		cmd.Env = env
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("rclone %v: %v\n%s", args, err, out)
		}
		return time.Since(t0)
	}
	removePrefix := func(prefix string) {
		for o := range cl.ListObjects(ctx, "bench", minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
			if o.Err != nil {
				b.Fatal(o.Err)
			}
			if err := cl.RemoveObject(ctx, "bench", o.Key, minio.RemoveObjectOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	}

	var ours, rcDefault, rcMatched time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		// A fresh pending episode: closed, no upload state, a new prefix.
		e := fx.Episode
		e.State = episode.Closed
		if err := st.PutEpisode(e); err != nil {
			b.Fatal(err)
		}
		if err := st.PutUploadState(storage.UploadState{Episode: e.ID}); err != nil {
			b.Fatal(err)
		}
		prefix := fmt.Sprintf("ours%d", i)
		u, err := upload.New(st, upload.Options{
			Target: upload.Target{Type: "s3", Endpoint: "http://" + s.Endpoint, Bucket: "bench", Prefix: prefix,
				PathStyle: true, AccessKey: s.Access, SecretKey: s.Secret},
			Site: "bench", Gateway: "gw1",
			Concurrency: concurrency, PartSize: partSize,
			StageDir: filepath.Join(dataDir, "outbox"),
		})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if err := u.RunOnce(ctx); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(t0)
		b.StopTimer()
		if got, err := st.Episode(e.ID); err != nil || got.State != episode.Uploaded {
			b.Fatalf("episode after RunOnce: %v %v", got.State, err)
		}
		if n := objectBytes(b, cl, prefix); n < size {
			b.Fatalf("uploaded %d bytes under %s, want at least the export's %d", n, prefix, size)
		}
		removePrefix(prefix)
		rcDefault += runRclone(fmt.Sprintf("rclone/%d/", i))
		removePrefix("rclone/")
		rcMatched += runRclone(fmt.Sprintf("rclone-matched/%d/", i),
			"--s3-chunk-size", strconv.FormatInt(partSize>>20, 10)+"M", "--s3-upload-concurrency", strconv.Itoa(concurrency))
		removePrefix("rclone-matched/")
		b.StartTimer()
	}
	b.StopTimer()
	total := float64(size) * float64(b.N) / 1e6
	oursMBs, defMBs, matMBs := total/ours.Seconds(), total/rcDefault.Seconds(), total/rcMatched.Seconds()
	best := max(defMBs, matMBs)
	b.ReportMetric(oursMBs, "ours_MB/s")
	b.ReportMetric(best, "rclone_best_MB/s")
	b.ReportMetric(defMBs, "rclone_default_MB/s")
	b.ReportMetric(matMBs, "rclone_matched_MB/s")
	b.ReportMetric(oursMBs/best, "ratio_vs_best_rclone")
	b.ReportMetric(float64(size)/1e6/stageTook.Seconds(), "stage_MB/s")
	b.ReportMetric(float64(concurrency), "concurrency")
	b.ReportMetric(float64(partSize>>20), "part_MiB")
	b.ReportMetric(0, "ns/op")
}

// exportTo writes the export of episode id to path and fsyncs it, as the
// uploader stages it, and returns its size.
func exportTo(b *testing.B, st *storage.Store, id, path string) int64 {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	stats, err := export.Write(context.Background(), f, st, id, export.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return stats.Size
}

func objectBytes(b *testing.B, cl *minio.Client, prefix string) int64 {
	var n int64
	for o := range cl.ListObjects(context.Background(), "bench", minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			b.Fatal(o.Err)
		}
		n += o.Size
	}
	return n
}

// rcloneEnv configures remote "x:" through environment variables only.
// AWS_CA_BUNDLE (set on some CI hosts) makes rclone's AWS SDK fail on its
// custom transport; the server is plain http anyway.
func rcloneEnv(s *synctest.S3) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "RCLONE_") {
			env = append(env, kv)
		}
	}
	return append(env,
		"RCLONE_CONFIG_X_TYPE=s3", "RCLONE_CONFIG_X_PROVIDER=Other", "RCLONE_CONFIG_X_ENDPOINT=http://"+s.Endpoint,
		"RCLONE_CONFIG_X_ACCESS_KEY_ID="+s.Access, "RCLONE_CONFIG_X_SECRET_ACCESS_KEY="+s.Secret,
		"RCLONE_CONFIG_X_REGION=us-east-1", "RCLONE_CONFIG_X_FORCE_PATH_STYLE=true")
}
