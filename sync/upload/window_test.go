package upload_test

import (
	"context"
	"strings"
	"testing"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

func TestTerminalErrorsQuarantine(t *testing.T) {
	s := synctest.StartS3(t)
	makeBucket(t, s, bucket)
	st := synctest.OpenStore(t)
	for _, tc := range []struct {
		name, id, want string
		mod            func(*upload.Options)
	}{
		{"wrong secret", "0193a1b2-0000-7000-8000-0000000000d1", "SignatureDoesNotMatch", func(o *upload.Options) { o.Target.SecretKey = "not-the-secret" }},
		// versitygw answers an unknown access key with a non-standard 404
		// (XAdminUserNotFound); it is not a missing object.
		{"wrong access key", "0193a1b2-0000-7000-8000-0000000000d3", "XAdminUserNotFound", func(o *upload.Options) { o.Target.AccessKey = "not-the-key" }},
		{"missing bucket", "0193a1b2-0000-7000-8000-0000000000d2", "NoSuchBucket", func(o *upload.Options) { o.Target.Bucket = "no-such-bucket" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := synctest.Build(t, st, synctest.Spec{ID: tc.id, Telemetry: true, RawBytes: 1 << 20})
			o := s3Options(t, s, "http://"+s.Endpoint)
			tc.mod(&o)
			u, err := upload.New(st, o)
			if err != nil {
				t.Fatal(err)
			}
			if err := u.RunOnce(context.Background()); err != nil {
				t.Fatalf("run once: %v", err)
			}
			e := state(t, st, fx.Episode.ID)
			if e.State != episode.Quarantined || !strings.Contains(e.Reason, tc.want) {
				t.Fatalf("state %s, reason %q; want quarantined with %s", e.State, e.Reason, tc.want)
			}
			if strings.Contains(e.Reason, "not-the-secret") || strings.Contains(e.Reason, s.Secret) {
				t.Fatalf("reason leaks a secret: %q", e.Reason)
			}
			// The data is kept: the episode still exports in full.
			if _, size := exportSHA(t, st, fx.Episode.ID); size < 1<<20 {
				t.Fatalf("export after quarantine is %d bytes", size)
			}
			stt, err := u.Status()
			if err != nil || len(stt.Quarantined) != 1 || stt.Quarantined[0].ID != fx.Episode.ID || len(stt.Queue) != 0 {
				t.Fatalf("status %+v %v", stt, err)
			}
			// Fixed configuration plus Retry: it uploads.
			good, err := upload.New(st, s3Options(t, s, "http://"+s.Endpoint))
			if err != nil {
				t.Fatal(err)
			}
			if err := good.Retry(fx.Episode.ID); err != nil {
				t.Fatal(err)
			}
			if e := state(t, st, fx.Episode.ID); e.State != episode.Closed || e.Reason != "" {
				t.Fatalf("after retry: %s %q", e.State, e.Reason)
			}
			if err := good.RunOnce(context.Background()); err != nil {
				t.Fatal(err)
			}
			if e := state(t, st, fx.Episode.ID); e.State != episode.Uploaded {
				t.Fatalf("after retry and run: %s %q", e.State, e.Reason)
			}
		})
	}
}
