package upload

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/export"
	"github.com/episoded/episoded/sync/internal/synctest"
)

// BenchmarkUpload500MB uploads the staged export of a 500 MB episode to
// versitygw on loopback, unthrottled, with the uploader's S3 path
// (multipart, Content-MD5 per part, ETag checks, HEAD verify), and in the
// same run copies the same file to the same server with rclone (defaults,
// and with the same part size as ours). It reports MB/s of each and the
// ratio to the faster rclone run.
//
//	go test -run '^$' -bench BenchmarkUpload500MB -benchtime 3x ./sync/upload/
func BenchmarkUpload500MB(b *testing.B) {
	if testing.Short() {
		b.Skip("needs versitygw and rclone; skipped under -short")
	}
	rclone, err := exec.LookPath("rclone")
	if err != nil {
		b.Fatal("rclone not installed (apt-get install -y --no-install-recommends rclone)")
	}
	s := synctest.StartS3(b)
	cl, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.Access, s.Secret, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		b.Fatal(err)
	}
	if err := cl.MakeBucket(context.Background(), "bench", minio.MakeBucketOptions{}); err != nil {
		b.Fatal(err)
	}
	st := synctest.OpenStore(b)
	fx := synctest.Build(b, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-00000000be01", RawBytes: 500 << 20, RawChunk: 512 << 10})
	stage := b.TempDir()
	path := filepath.Join(stage, fx.Episode.ID+".mcap")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	stats, err := export.Write(context.Background(), f, st, fx.Episode.ID, export.Options{})
	if err != nil {
		b.Fatal(err)
	}
	f.Close()
	size := stats.Size
	sum, _ := hashFile(path)

	u, err := New(st, Options{
		Target:   Target{Type: "s3", Endpoint: "http://" + s.Endpoint, Bucket: "bench", PathStyle: true, AccessKey: s.Access, SecretKey: s.Secret},
		StageDir: stage,
	})
	if err != nil {
		b.Fatal(err)
	}
	tgt := u.target.(*s3Target)
	// AWS_CA_BUNDLE (set on some CI hosts) makes rclone's AWS SDK fail on
	// its custom transport; the server is plain http anyway.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "RCLONE_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"RCLONE_CONFIG_X_TYPE=s3", "RCLONE_CONFIG_X_PROVIDER=Other", "RCLONE_CONFIG_X_ENDPOINT=http://"+s.Endpoint,
		"RCLONE_CONFIG_X_ACCESS_KEY_ID="+s.Access, "RCLONE_CONFIG_X_SECRET_ACCESS_KEY="+s.Secret,
		"RCLONE_CONFIG_X_REGION=us-east-1", "RCLONE_CONFIG_X_FORCE_PATH_STYLE=true")
	runRclone := func(key string, extra ...string) time.Duration {
		args := append([]string{"copyto", "--config", "/dev/null", "--no-check-dest"}, extra...)
		args = append(args, path, "x:bench/"+key)
		cmd := exec.Command(rclone, args...)
		cmd.Env = env
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("rclone %v: %v\n%s", args, err, out)
		}
		return time.Since(t0)
	}
	var ours, rcDefault, rcMatched time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		key := fmt.Sprintf("ours/%d/episode.mcap", i)
		obj := &storage.ObjectState{Key: key, Size: size, SHA256: sum}
		t0 := time.Now()
		if err := tgt.putFile(context.Background(), path, obj, func() error { return nil }, func() error { return nil }); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(t0)
		if !obj.Done {
			b.Fatal("not done")
		}
		b.StopTimer()
		rcDefault += runRclone(fmt.Sprintf("rclone/%d/episode.mcap", i))
		rcMatched += runRclone(fmt.Sprintf("rclone16/%d/episode.mcap", i), "--s3-chunk-size", "16M", "--s3-upload-concurrency", "4")
		b.StartTimer()
	}
	b.StopTimer()
	mb := float64(size) * float64(b.N) / 1e6
	oursMBs, defMBs, matMBs := mb/ours.Seconds(), mb/rcDefault.Seconds(), mb/rcMatched.Seconds()
	b.ReportMetric(oursMBs, "ours_MB/s")
	b.ReportMetric(defMBs, "rclone_MB/s")
	b.ReportMetric(matMBs, "rclone16M_MB/s")
	b.ReportMetric(oursMBs/max(defMBs, matMBs), "ratio_vs_best_rclone")
}

// BenchmarkExport exports a 500 MB episode (two cameras, telemetry and
// large raw payloads) to io.Discard, and in the same run reads the same
// samples through storage's Merge as the baseline; it reports the output
// MB/s and the ratio to the plain read.
//
//	go test -run '^$' -bench BenchmarkExport -benchtime 3x ./sync/upload/
func BenchmarkExport(b *testing.B) {
	st := synctest.OpenStore(b)
	fx := synctest.Build(b, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-00000000be02", Video: true, Telemetry: true, Lidar: true,
		RawBytes: 500 << 20, RawChunk: 256 << 10, Duration: 60 * time.Second})
	from, to := fx.Episode.Window(0)
	var exp, read time.Duration
	var size int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		var n int64
		for s, err := range st.Merge(fx.Episode.Streams, from, to) {
			if err != nil {
				b.Fatal(err)
			}
			n += int64(len(s.Payload))
		}
		read += time.Since(t0)
		t0 = time.Now()
		stats, err := export.Write(context.Background(), discard{}, st, fx.Episode.ID, export.Options{})
		if err != nil {
			b.Fatal(err)
		}
		exp += time.Since(t0)
		size = stats.Size
		_ = n
	}
	b.StopTimer()
	b.SetBytes(size)
	expMBs := float64(size) * float64(b.N) / 1e6 / exp.Seconds()
	readMBs := float64(size) * float64(b.N) / 1e6 / read.Seconds()
	b.ReportMetric(expMBs, "export_MB/s")
	b.ReportMetric(readMBs, "merge_read_MB/s")
	b.ReportMetric(expMBs/readMBs, "ratio_vs_read")
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
