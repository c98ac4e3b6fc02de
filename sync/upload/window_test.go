package upload_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

func TestWindowsPriorityAndPause(t *testing.T) {
	s := synctest.StartS3(t)
	makeBucket(t, s, bucket)
	px := newProxy(t, s.Endpoint)
	st := synctest.OpenStore(t)
	normal := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000c1", RawBytes: 40 << 20})
	prio := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000c2", Telemetry: true,
		Labels: map[string]string{"priority": "yes"}})
	normalKey := upload.Dir("episodes", "plant1", "gw7", normal.Episode) + "/episode.mcap"

	// Noon in Berlin; the window is 22:00-06:00 there.
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock(time.Date(2026, 11, 26, 12, 0, 0, 0, berlin))
	o := s3Options(t, s, px.endpoint())
	o.Windows, o.Timezone, o.Clock, o.Concurrency = []string{"22:00-06:00"}, "Europe/Berlin", clk, 1
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- u.Run(ctx) }()

	// Outside the window only the priority episode goes.
	waitFor(t, 30*time.Second, "priority upload", func() bool { return state(t, st, prio.Episode.ID).State == episode.Uploaded })
	time.Sleep(300 * time.Millisecond)
	if e := state(t, st, normal.Episode.ID); e.State != episode.Closed {
		t.Fatalf("normal episode is %s outside the window", e.State)
	}
	for _, c := range px.commits() {
		if strings.Contains(c, normal.Episode.ID) {
			t.Fatalf("normal episode committed outside the window: %s", c)
		}
	}
	if len(px.partSends(normalKey)) != 0 {
		t.Fatalf("parts of the normal episode sent outside the window")
	}
	stt, err := u.Status()
	if err != nil || stt.Window.Open || len(stt.Queue) != 1 || stt.Queue[0].ID != normal.Episode.ID ||
		!stt.Window.NextChange.Equal(time.Date(2026, 11, 26, 22, 0, 0, 0, berlin)) || stt.BytesRemaining < 40<<20 || stt.HoursRemaining <= 0 {
		t.Fatalf("status %+v %v", stt, err)
	}

	// The window opens; after 3 parts it closes again.
	var closed atomic.Bool
	px.setHook(func(k string, part int) {
		if k == normalKey && len(px.partsOK(normalKey)) >= 3 && !closed.Load() {
			closed.Store(true)
			clk.Set(time.Date(2026, 11, 27, 6, 0, 0, 0, berlin))
		}
	})
	clk.Set(time.Date(2026, 11, 26, 22, 0, 0, 0, berlin))
	waitFor(t, 30*time.Second, "window to close mid-upload", closed.Load)
	time.Sleep(500 * time.Millisecond)
	n := len(px.partsOK(normalKey))
	time.Sleep(500 * time.Millisecond)
	if m := len(px.partsOK(normalKey)); m != n || n >= 8 {
		t.Fatalf("upload went on after the window closed: %d then %d parts of 8", n, m)
	}
	if e := state(t, st, normal.Episode.ID); e.State != episode.Uploading {
		t.Fatalf("paused episode is %s", e.State)
	}
	us, err := st.UploadState(normal.Episode.ID)
	if err != nil || len(us.Objects[0].Parts) != n {
		t.Fatalf("recorded parts %+v, %d acknowledged", us, n)
	}
	acked := recorded(us)

	// The next window resumes it.
	clk.Set(time.Date(2026, 11, 27, 22, 0, 0, 0, berlin))
	waitFor(t, 30*time.Second, "resume in the next window", func() bool { return state(t, st, normal.Episode.ID).State == episode.Uploaded })
	checkNoResend(t, px, normalKey, acked)
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
}

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
