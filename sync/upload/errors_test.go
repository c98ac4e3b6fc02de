package upload_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// TestFullBucketQuarantinesAndAborts runs versitygw on a 12 MiB tmpfs, so
// that the real server runs out of space in the middle of a 24 MiB
// multipart upload (it answers InsufficientStorage, HTTP 507). The episode
// is quarantined at once with the server's code and message, and the
// multipart upload is aborted: the server lists no unfinished upload and
// holds no part. After space is back (a bigger filesystem), Retry uploads
// the episode.
func TestFullBucketQuarantinesAndAborts(t *testing.T) {
	s := synctest.StartS3(t)
	s.Stop()
	if testing.Short() {
		t.Skip("mounts a tmpfs; skipped under -short")
	}
	mount := func(size string) {
		t.Helper()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", s.Dir).CombinedOutput(); err != nil {
			t.Fatalf("mount a %s tmpfs for versitygw (the test needs root): %v: %s", size, err, out)
		}
	}
	umount := func() {
		t.Helper()
		if out, err := exec.Command("umount", s.Dir).CombinedOutput(); err != nil {
			t.Fatalf("umount %s: %v: %s", s.Dir, err, out)
		}
	}
	mount("12m")
	t.Cleanup(func() { s.Stop(); _ = exec.Command("umount", s.Dir).Run() })
	s.Start()
	c := makeBucket(t, s, bucket)

	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000f1", RawBytes: 24 << 20})
	o := s3Options(t, s, "http://"+s.Endpoint)
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatalf("run once: %v", err)
	}
	e := state(t, st, fx.Episode.ID)
	if e.State != episode.Quarantined || !strings.Contains(e.Reason, "InsufficientStorage") || !strings.Contains(e.Reason, "HTTP 507") {
		t.Fatalf("state %s, reason %q; want quarantined with InsufficientStorage, HTTP 507", e.State, e.Reason)
	}
	t.Logf("reason: %s", e.Reason)
	if ups := listIncomplete(t, c); len(ups) != 0 {
		t.Errorf("unfinished multipart uploads left on the server: %+v", ups)
	}
	us, err := st.UploadState(fx.Episode.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range us.Objects {
		if obj.UploadID != "" || len(obj.Parts) != 0 {
			t.Errorf("upload state still records upload %q with %d parts", obj.UploadID, len(obj.Parts))
		}
	}
	if us.Attempts != 1 || !strings.Contains(us.LastError, "InsufficientStorage") {
		t.Errorf("upload state attempts %d, last error %q", us.Attempts, us.LastError)
	}
	stt, err := u.Status()
	if err != nil || len(stt.Quarantined) != 1 || !strings.Contains(stt.Quarantined[0].LastError, "InsufficientStorage") {
		t.Fatalf("status %+v %v", stt.Quarantined, err)
	}

	// Space comes back: Retry uploads it.
	s.Stop()
	umount()
	mount("256m")
	s.Start()
	makeBucket(t, s, bucket)
	if err := u.Retry(fx.Episode.ID); err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e := state(t, st, fx.Episode.ID); e.State != episode.Uploaded {
		t.Fatalf("after retry: %s %q", e.State, e.Reason)
	}
}

// failingProxy sits in front of versitygw and answers every part upload
// with a real-looking S3 InternalError (HTTP 500): a server that keeps
// failing in a way retrying might fix, but never does.
func failingProxy(t *testing.T, backend string) (endpoint string, parts *atomic.Int64) {
	t.Helper()
	u, _ := url.Parse("http://" + backend)
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = r.In.Host
	}}
	parts = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Query().Get("partNumber") != "" {
			parts.Add(1)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>` +
				`<Message>We encountered an internal error. Please try again.</Message></Error>`))
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, parts
}

// TestMaxAttemptsQuarantines: a server error that does not go away is
// retried (with a 1 ms backoff here: the backoff schedule itself is
// checked on fake time in TestBackoffAndMaxAttempts), every attempt recording
// last_error on the upload state and the reason on the episode, until
// max_attempts; then the episode is quarantined with the server's code
// and message, and the multipart upload it had started is aborted.
func TestMaxAttemptsQuarantines(t *testing.T) {
	s := synctest.StartS3(t)
	c := makeBucket(t, s, bucket)
	endpoint, parts := failingProxy(t, s.Endpoint)
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000f2", RawBytes: 12 << 20})
	o := s3Options(t, s, endpoint)
	o.MaxAttempts, o.OnceAttempts = 3, 2
	o.RetryMin, o.RetryMax = time.Millisecond, time.Millisecond
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	// Two attempts in this run: still queued, and it says why.
	if err := u.RunOnce(context.Background()); err == nil {
		t.Fatal("run once: want an error naming the failing episode")
	}
	e := state(t, st, fx.Episode.ID)
	if e.State != episode.Uploading || !strings.Contains(e.Reason, "attempt 2 of 3") || !strings.Contains(e.Reason, "InternalError") {
		t.Fatalf("after 2 attempts: state %s, reason %q", e.State, e.Reason)
	}
	stt, err := u.Status()
	if err != nil || len(stt.Queue) != 1 || stt.Queue[0].Attempts != 2 ||
		!strings.Contains(stt.Queue[0].LastError, "InternalError: HTTP 500: We encountered an internal error") {
		t.Fatalf("status queue %+v %v", stt.Queue, err)
	}
	// The third attempt is the last.
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatalf("run once: %v", err)
	}
	e = state(t, st, fx.Episode.ID)
	if e.State != episode.Quarantined || !strings.Contains(e.Reason, "gave up after 3 attempts") ||
		!strings.Contains(e.Reason, "InternalError: HTTP 500: We encountered an internal error") {
		t.Fatalf("after 3 attempts: state %s, reason %q", e.State, e.Reason)
	}
	if n := parts.Load(); n < 3 {
		t.Fatalf("%d part uploads reached the server, want at least 3", n)
	}
	if ups := listIncomplete(t, c); len(ups) != 0 {
		t.Errorf("unfinished multipart uploads left on the server: %+v", ups)
	}
}

// listIncomplete returns the unfinished multipart uploads in the bucket.
func listIncomplete(t *testing.T, c *minio.Client) []minio.ObjectMultipartInfo {
	t.Helper()
	var out []minio.ObjectMultipartInfo
	for up := range c.ListIncompleteUploads(context.Background(), bucket, "", true) {
		if up.Err != nil {
			t.Fatal(up.Err)
		}
		out = append(out, up)
	}
	return out
}
