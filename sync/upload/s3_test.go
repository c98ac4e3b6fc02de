package upload_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/export"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

const bucket = "factory"

func s3Options(t testing.TB, s *synctest.S3, endpoint string) upload.Options {
	return upload.Options{
		Target: upload.Target{Type: "s3", Endpoint: endpoint, Bucket: bucket, PathStyle: true, Region: "us-east-1",
			AccessKey: s.Access, SecretKey: s.Secret, Prefix: "episodes"},
		Site: "plant1", Gateway: "gw7", PartSize: 5 << 20, Concurrency: 2,
		RetryMin: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond,
		StageDir: t.TempDir(),
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func exportSHA(t testing.TB, st *storage.Store, id string) (string, int64) {
	t.Helper()
	h := sha256.New()
	stats, err := export.Write(context.Background(), h, st, id, export.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), stats.Size
}

func state(t testing.TB, st *storage.Store, id string) episode.Episode {
	t.Helper()
	e, err := st.Episode(id)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestS3UploadVerifiedIdempotent(t *testing.T) {
	s := synctest.StartS3(t)
	cl := makeBucket(t, s, bucket)
	px := newProxy(t, s.Endpoint)
	st := synctest.OpenStore(t)
	small := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000a1", Telemetry: true, Video: true, RawBytes: 1 << 20})
	big := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000a2", RawBytes: 200 << 20,
		Start: time.Date(2026, 11, 26, 23, 59, 0, 0, time.UTC)})

	var uploaded []string
	o := s3Options(t, s, px.endpoint())
	o.PartSize = 16 << 20
	o.Concurrency = 4
	o.OnUploaded = func(e episode.Episode) { uploaded = append(uploaded, e.ID) }
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatalf("run once: %v", err)
	}
	if !slices.Equal(uploaded, []string{small.Episode.ID, big.Episode.ID}) {
		t.Fatalf("uploaded %v", uploaded)
	}
	for _, fx := range []synctest.Fixture{small, big} {
		if e := state(t, st, fx.Episode.ID); e.State != episode.Uploaded {
			t.Fatalf("%s: state %s (%s)", fx.Episode.ID, e.State, e.Reason)
		}
		dir := upload.Dir("episodes", "plant1", "gw7", fx.Episode)
		want, size := exportSHA(t, st, fx.Episode.ID)
		got, n := objectSHA(t, cl, bucket, dir+"/episode.mcap")
		if got != want || n != size {
			t.Fatalf("%s: object sha256 %s (%d bytes), export %s (%d bytes)", fx.Episode.ID, got, n, want, size)
		}
		obj, err := cl.GetObject(context.Background(), bucket, dir+"/manifest.json", minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var m upload.Manifest
		if err := json.NewDecoder(obj).Decode(&m); err != nil {
			t.Fatalf("manifest: %v", err)
		}
		obj.Close()
		if m.Episode != fx.Episode.ID || m.Site != "plant1" || m.Gateway != "gw7" || len(m.Objects) != 1 ||
			m.Objects[0].SHA256 != want || m.Objects[0].Size != size || m.Objects[0].Key != dir+"/episode.mcap" ||
			len(m.Quality) == 0 || m.Counts.Samples == 0 {
			t.Fatalf("manifest %+v", m)
		}
		// The manifest is committed after the object, never before.
		c := px.commits()
		im, io := slices.Index(c, dir+"/manifest.json"), slices.Index(c, dir+"/episode.mcap")
		if im < 0 || io < 0 || im < io {
			t.Fatalf("commit order %v", c)
		}
	}
	// Layout: date of the big episode's start (UTC).
	if d := upload.Dir("episodes", "plant1", "gw7", big.Episode); d != "episodes/plant1/gw7/2026/11/26/"+big.Episode.ID {
		t.Fatalf("dir %s", d)
	}
	if len(px.partsOK(upload.Dir("episodes", "plant1", "gw7", big.Episode)+"/episode.mcap")) < 12 {
		t.Fatalf("the 200 MB episode did not go multipart: %v %v", px.commits(), px.mu.partsOK)
	}

	// A re-run sends nothing.
	before := px.putBytes.Load()
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Even if the local state is lost, the manifest on the target makes the
	// upload a no-op.
	e := state(t, st, small.Episode.ID)
	e.State = episode.Closed
	if err := st.PutEpisode(e); err != nil {
		t.Fatal(err)
	}
	if err := st.PutUploadState(storage.UploadState{Episode: e.ID}); err != nil {
		t.Fatal(err)
	}
	u2, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u2.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := px.putBytes.Load(); got != before {
		t.Fatalf("re-runs sent %d bytes", got-before)
	}
	if e := state(t, st, small.Episode.ID); e.State != episode.Uploaded {
		t.Fatalf("state %s", e.State)
	}
	// Staged exports are gone once uploaded.
	if n, _ := dirEntries(o.StageDir); n != 0 {
		t.Fatalf("%d staged files left", n)
	}
	stt, err := u.Status()
	if err != nil || len(stt.Queue) != 0 || stt.BytesRemaining != 0 || !strings.HasPrefix(stt.Target, "s3 http://") {
		t.Fatalf("status %+v %v", stt, err)
	}
	b, _ := json.Marshal(stt)
	if bytes.Contains(b, []byte(s.Secret)) {
		t.Fatalf("status leaks the secret: %s", b)
	}
}
