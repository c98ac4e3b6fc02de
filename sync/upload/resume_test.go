package upload_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// checkNoResend fails if a part acknowledged before the interruption was
// sent again afterwards.
func checkNoResend(t *testing.T, px *proxy, key string, acked []int) {
	t.Helper()
	sends := px.partSends(key)
	for _, p := range acked {
		if sends[p] != 1 {
			t.Errorf("part %d was acknowledged before the interruption but sent %d times", p, sends[p])
		}
	}
}

// recorded returns the part numbers the store holds as finished.
func recorded(us storage.UploadState) []int {
	var out []int
	for _, o := range us.Objects {
		for _, p := range o.Parts {
			out = append(out, p.Number)
		}
	}
	return out
}

func TestResumeAfterS3ServerKilled(t *testing.T) {
	s := synctest.StartS3(t)
	cl := makeBucket(t, s, bucket)
	px := newProxy(t, s.Endpoint)
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000b1", RawBytes: 60 << 20})
	key := upload.Dir("episodes", "plant1", "gw7", fx.Episode) + "/episode.mcap"

	killed := make(chan struct{})
	var once sync.Once
	px.setHook(func(k string, part int) {
		if k == key && len(px.partsOK(key)) >= 4 {
			once.Do(func() { close(killed) })
		}
	})
	o := s3Options(t, s, px.endpoint())
	o.MaxAttempts = 3
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- u.Run(ctx) }()

	<-killed
	s.Stop() // SIGKILL mid-upload
	// The uploader keeps retrying against the dead server, past
	// MaxAttempts: an unreachable server quarantines nothing.
	waitFor(t, 60*time.Second, "retries past max_attempts", func() bool {
		us, err := st.UploadState(fx.Episode.ID)
		return err == nil && us.Attempts > o.MaxAttempts
	})
	if e := state(t, st, fx.Episode.ID); e.State != episode.Uploading {
		t.Fatalf("state while the server is down: %s (%s)", e.State, e.Reason)
	}
	us, err := st.UploadState(fx.Episode.ID)
	if err != nil || us.Attempts == 0 || us.LastError == "" || us.Objects[0].UploadID == "" {
		t.Fatalf("upload state while down: %+v %v", us, err)
	}
	acked := recorded(us)
	if len(acked) < 4 {
		t.Fatalf("only %d parts recorded", len(acked))
	}
	s.Start() // same port, same data dir
	waitFor(t, 60*time.Second, "upload after restart", func() bool {
		return state(t, st, fx.Episode.ID).State == episode.Uploaded
	})
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	checkNoResend(t, px, key, acked)
	want, size := exportSHA(t, st, fx.Episode.ID)
	if got, n := objectSHA(t, cl, bucket, key); got != want || n != size {
		t.Fatalf("object %s/%d, want %s/%d", got, n, want, size)
	}
	// Every part was sent at most once more than needed for the ones in
	// flight at the kill (Concurrency of them).
	extra := 0
	for _, n := range px.partSends(key) {
		extra += n - 1
	}
	if extra > o.Concurrency {
		t.Errorf("%d part resends, want at most %d (in flight at the kill)", extra, o.Concurrency)
	}
}

func TestResumeAfterUploaderRestart(t *testing.T) {
	s := synctest.StartS3(t)
	cl := makeBucket(t, s, bucket)
	px := newProxy(t, s.Endpoint)
	dir := t.TempDir()
	st := synctest.OpenStoreAt(t, dir)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000b2", RawBytes: 60 << 20, Video: true, Telemetry: true})
	key := upload.Dir("episodes", "plant1", "gw7", fx.Episode) + "/episode.mcap"

	ctx, cancel := context.WithCancel(context.Background())
	px.setHook(func(k string, part int) {
		if k == key && len(px.partsOK(key)) >= 5 {
			cancel() // the daemon stops mid-upload
		}
	})
	o := s3Options(t, s, px.endpoint())
	u1, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u1.Run(ctx); err != nil {
		t.Fatal(err)
	}
	px.setHook(nil)
	us, err := st.UploadState(fx.Episode.ID)
	if err != nil || len(us.Objects) != 1 || len(us.Objects[0].Parts) < 4 || us.Objects[0].Done {
		t.Fatalf("state after stop: %+v %v", us, err)
	}
	acked := recorded(us)
	if e := state(t, st, fx.Episode.ID); e.State != episode.Uploading {
		t.Fatalf("state %s", e.State)
	}
	// The staged export is lost too (e.g. a wiped outbox): it is
	// re-created byte for byte, so the recorded parts stay valid.
	if err := os.Remove(filepath.Join(o.StageDir, fx.Episode.ID+".mcap")); err != nil {
		t.Fatal(err)
	}
	u2, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u2.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e := state(t, st, fx.Episode.ID); e.State != episode.Uploaded {
		t.Fatalf("state %s (%s)", e.State, e.Reason)
	}
	checkNoResend(t, px, key, acked)
	want, size := exportSHA(t, st, fx.Episode.ID)
	if got, n := objectSHA(t, cl, bucket, key); got != want || n != size {
		t.Fatalf("object %s/%d, want %s/%d", got, n, want, size)
	}
	// Bytes on the wire: the object once, plus at most the parts that were
	// in flight when the daemon stopped.
	if sent := px.putBytes.Load(); sent > size+int64(o.Concurrency)*o.PartSize+64<<10 {
		t.Errorf("sent %d bytes for a %d byte object", sent, size)
	}
}
