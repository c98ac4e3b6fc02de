package upload_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
	fixtures "github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// The tests in this file run the uploader in a testing/synctest bubble:
// time is fake and jumps ahead whenever every goroutine of the bubble
// waits on it, so hours of windows and minutes of backoff take no wall
// time, and nothing here depends on how loaded the machine is. The target
// is memS3 (see mems3_test.go for why it is a fake); the same code paths
// run against versitygw in the other tests.

// memOptions returns the uploader options for an s3 target served by m.
func memOptions(t testing.TB, m *memS3) upload.Options {
	o := upload.Options{
		Target: upload.Target{Type: "s3", Endpoint: "https://s3.mem.invalid", Bucket: m.bucket, PathStyle: true,
			Region: "us-east-1", AccessKey: "mem-access", SecretKey: "mem-secret", Prefix: "episodes"},
		Site: "plant1", Gateway: "gw7", PartSize: 5 << 20, Concurrency: 2,
		StageDir: t.TempDir(),
		Logger:   slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	upload.WithTransport(&o, m)
	return o
}

// newMemUploader returns an uploader on st whose target is m, with
// memOptions changed by set, and the options it got.
func newMemUploader(t *testing.T, st *storage.Store, m *memS3, set func(*upload.Options)) (*upload.Uploader, upload.Options) {
	t.Helper()
	o := memOptions(t, m)
	if set != nil {
		set(&o)
	}
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	return u, o
}

// runUploader runs u's daemon loop (Run) until stop is called: stop ends
// it and fails the test if Run returned an error. A test that fails first
// ends the loop when it returns.
func runUploader(t *testing.T, u *upload.Uploader) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	runErr := make(chan error, 1)
	go func() { runErr <- u.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		if err := <-runErr; err != nil {
			t.Fatal(err)
		}
	}
}

// waitUntil polls cond every (fake) second until the (fake) deadline.
func waitUntil(t *testing.T, deadline time.Time, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not done by %v", what, deadline)
		}
		time.Sleep(time.Second)
	}
}

// checkObject fails unless the target holds the export of id at key.
func checkObject(t *testing.T, m *memS3, st *storage.Store, id, key string) {
	t.Helper()
	want, size := exportSHA(t, st, id)
	data, ok := m.object(key)
	sum := sha256.Sum256(data)
	if !ok || hex.EncodeToString(sum[:]) != want || int64(len(data)) != size {
		t.Fatalf("object %s: %d bytes (present %v), want %d bytes with sha256 %s", key, len(data), ok, size, want)
	}
}

// TestBandwidthCap checks the token bucket: with a 1 MB/s cap shared by
// two parts in flight, the bytes that reach the server in 20 s are within
// 1% of 20 MB, and the whole object takes at least size/cap.
func TestBandwidthCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 1_000_000
		m := newMemS3(bucket)
		st := fixtures.OpenStore(t)
		fx := fixtures.Build(t, st, fixtures.Spec{ID: "0193a1b2-0000-7000-8000-0000000001a1", RawBytes: 32 << 20})
		key := upload.Dir("episodes", "plant1", "gw7", fx.Episode) + "/episode.mcap"
		u, _ := newMemUploader(t, st, m, func(o *upload.Options) { o.Bandwidth = limit })
		stop := runUploader(t, u)

		start := time.Now()
		waitUntil(t, start.Add(time.Minute), "upload to start", func() bool { return m.putBytes() > 0 })
		time.Sleep(time.Second)
		b0, t0 := m.putBytes(), time.Now()
		time.Sleep(20 * time.Second)
		b1, t1 := m.putBytes(), time.Now()
		rate := float64(b1-b0) / t1.Sub(t0).Seconds()
		t.Logf("%.0f B/s with a cap of %d B/s (%+.2f%%)", rate, limit, 100*(rate/limit-1))
		if math.Abs(rate/limit-1) > 0.01 {
			t.Errorf("rate %.0f B/s is not within 1%% of %d B/s", rate, limit)
		}

		waitUntil(t, start.Add(10*time.Minute), "upload to finish", func() bool {
			return state(t, st, fx.Episode.ID).State == episode.Uploaded
		})
		checkObject(t, m, st, fx.Episode.ID, key)
		data, _ := m.object(key)
		burst := int64(64 << 10)
		if took, least := time.Since(start), time.Duration(float64(int64(len(data))-burst)/limit*float64(time.Second)); took < least {
			t.Errorf("%d bytes took %v at a cap of %d B/s, want at least %v", len(data), took, limit, least)
		}
		stop()
	})
}

// TestWindowsPriorityAndPause: outside the windows (01:10-01:11 and
// 01:20-01:21 in Berlin) only the priority episode goes; in the first
// window the other one starts, and when the window closes the part in
// flight finishes and the rest waits, with nothing sent while it is
// closed; the second window finishes it without sending an acknowledged
// part again. Every part starts inside a window. (Short windows keep the
// fake span short: the store's commit ticker runs in the bubble too.)
func TestWindowsPriorityAndPause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		berlin, err := time.LoadLocation("Europe/Berlin")
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().In(berlin)
		at := func(h, min, sec int) time.Time {
			return time.Date(now.Year(), now.Month(), now.Day(), h, min, sec, 0, berlin)
		}
		if now.Before(at(0, 0, 0)) || !now.Before(at(1, 5, 0)) {
			t.Fatalf("the bubble starts at %v, want before 01:05 in Berlin", now)
		}
		inWindow := func(tm time.Time) bool {
			tm = tm.In(berlin)
			return (!tm.Before(at(1, 10, 0)) && tm.Before(at(1, 11, 0))) || (!tm.Before(at(1, 20, 0)) && tm.Before(at(1, 21, 0)))
		}
		m := newMemS3(bucket)
		st := fixtures.OpenStore(t)
		normal := fixtures.Build(t, st, fixtures.Spec{ID: "0193a1b2-0000-7000-8000-0000000001c1", RawBytes: 22 << 20})
		prio := fixtures.Build(t, st, fixtures.Spec{ID: "0193a1b2-0000-7000-8000-0000000001c2", Telemetry: true,
			Labels: map[string]string{"priority": "yes"}})
		normalKey := upload.Dir("episodes", "plant1", "gw7", normal.Episode) + "/episode.mcap"
		_, size := exportSHA(t, st, normal.Episode.ID)
		// A 5 MiB part takes 25 s at 210 kB/s: parts 1-3 start in the
		// first window (01:10:00, :25, :50), part 4 would start at
		// 01:11:15.
		parts := int((size + 5<<20 - 1) / (5 << 20))
		if parts != 5 {
			t.Fatalf("the normal episode exports to %d bytes, %d parts; the test needs 5", size, parts)
		}
		u, _ := newMemUploader(t, st, m, func(o *upload.Options) {
			o.Windows, o.Timezone, o.Concurrency, o.Bandwidth = []string{"01:10-01:11", "01:20-01:21"}, "Europe/Berlin", 1, 210_000
		})
		stop := runUploader(t, u)

		// Outside the windows only the priority episode goes.
		waitUntil(t, at(1, 9, 0), "priority upload", func() bool { return state(t, st, prio.Episode.ID).State == episode.Uploaded })
		synctest.Wait()
		if e := state(t, st, normal.Episode.ID); e.State != episode.Closed {
			t.Fatalf("normal episode is %s outside the window", e.State)
		}
		if n := len(m.sends(normalKey)); n != 0 {
			t.Fatalf("%d parts of the normal episode sent outside the window", n)
		}
		stt, err := u.Status()
		if err != nil || stt.Window.Open || len(stt.Queue) != 1 || stt.Queue[0].ID != normal.Episode.ID ||
			!stt.Window.NextChange.Equal(at(1, 10, 0)) || stt.BytesRemaining < 22<<20 || stt.HoursRemaining <= 0 {
			t.Fatalf("status %+v %v", stt, err)
		}

		// The first window closes with part 3 in flight: it finishes, and
		// nothing more goes until the next window.
		time.Sleep(time.Until(at(1, 12, 0)))
		synctest.Wait()
		if got := m.acked(normalKey); !slices.Equal(got, []int{1, 2, 3}) {
			t.Fatalf("parts acknowledged in the first window: %v, want [1 2 3]", got)
		}
		if e := state(t, st, normal.Episode.ID); e.State != episode.Uploading {
			t.Fatalf("paused episode is %s", e.State)
		}
		us, err := st.UploadState(normal.Episode.ID)
		if err != nil || !slices.Equal(recorded(us), []int{1, 2, 3}) {
			t.Fatalf("recorded parts %+v %v", us, err)
		}
		time.Sleep(time.Until(at(1, 19, 59)))
		synctest.Wait()
		if got := m.acked(normalKey); !slices.Equal(got, []int{1, 2, 3}) {
			t.Fatalf("parts acknowledged while the window was closed: %v", got)
		}

		// The second window finishes it: parts 4 and 5 from 01:20:00.
		waitUntil(t, at(1, 21, 0), "upload in the next window", func() bool {
			return state(t, st, normal.Episode.ID).State == episode.Uploaded
		})
		checkNoResendMem(t, m, normalKey, parts)
		checkObject(t, m, st, normal.Episode.ID, normalKey)
		for _, pt := range m.partTimes() {
			if !inWindow(pt) {
				t.Errorf("a part started at %v, outside the windows", pt.In(berlin))
			}
		}
		stop()
	})
}

// checkNoResendMem fails unless each of the n parts of key was sent once.
func checkNoResendMem(t *testing.T, m *memS3, key string, n int) {
	t.Helper()
	sends := m.sends(key)
	for p := 1; p <= n; p++ {
		if sends[p] != 1 {
			t.Errorf("part %d of %s sent %d times, want once", p, key, sends[p])
		}
	}
}

// attemptTimes groups part uploads into attempts: the parts of one attempt
// start at the same (fake) instant, since only waiting moves time.
func attemptTimes(parts []time.Time) []time.Time {
	var out []time.Time
	for _, p := range parts {
		if len(out) == 0 || !p.Equal(out[len(out)-1]) {
			out = append(out, p)
		}
	}
	return out
}

// checkBackoff fails unless the gap after failed attempt k (1-based) is
// within [d/2, d+slack], d = min(retryMin·2^(k-1), retryMax). The slack
// covers the store's own waits between a failure and the next part (its
// commits wait on a sync timer, which is fake time here too).
func checkBackoff(t *testing.T, attempts []time.Time, retryMin, retryMax time.Duration) {
	t.Helper()
	const slack = time.Second
	for k := 1; k < len(attempts); k++ {
		d := min(retryMin<<(k-1), retryMax)
		if gap := attempts[k].Sub(attempts[k-1]); gap < d/2 || gap > d+slack {
			t.Errorf("attempt %d came %v after attempt %d, want within [%v, %v]", k+1, gap, k, d/2, d+slack)
		}
	}
}

// TestBackoffAndMaxAttempts: a server that answers every part with a 500
// InternalError. RunOnce tries OnceAttempts times with exponential backoff
// and full jitter between the attempts, returns without waiting out a
// backoff it will not use, and names the episode; the daemon loop goes on
// from there (the attempt count survives across runs) until MaxAttempts,
// then quarantines the episode and aborts its multipart upload. Every gap
// between attempts is within the backoff bounds.
func TestBackoffAndMaxAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemS3(bucket)
		m.failParts(true)
		st := fixtures.OpenStore(t)
		fx := fixtures.Build(t, st, fixtures.Spec{ID: "0193a1b2-0000-7000-8000-0000000001f2", RawBytes: 12 << 20})
		u, o := newMemUploader(t, st, m, func(o *upload.Options) {
			o.Concurrency = 1
			o.RetryMin, o.RetryMax = 5*time.Second, 2*time.Minute
			o.MaxAttempts, o.OnceAttempts = 8, 3
		})
		err := u.RunOnce(t.Context())
		if err == nil || !strings.Contains(err.Error(), fx.Episode.ID) || !strings.Contains(err.Error(), "after 3 attempts") {
			t.Fatalf("run once: %v; want an error naming %s after 3 attempts", err, fx.Episode.ID)
		}
		attempts := attemptTimes(m.partTimes())
		if len(attempts) != 3 {
			t.Fatalf("%d attempts in RunOnce, want 3", len(attempts))
		}
		checkBackoff(t, attempts, o.RetryMin, o.RetryMax)
		if d := time.Since(attempts[2]); d > time.Second {
			t.Errorf("RunOnce returned %v after its last attempt, want at once", d)
		}
		e := state(t, st, fx.Episode.ID)
		if e.State != episode.Uploading || !strings.Contains(e.Reason, "attempt 3 of 8") || !strings.Contains(e.Reason, "InternalError") {
			t.Fatalf("after RunOnce: state %s, reason %q", e.State, e.Reason)
		}

		stop := runUploader(t, u)
		waitUntil(t, time.Now().Add(time.Hour), "quarantine", func() bool {
			return state(t, st, fx.Episode.ID).State == episode.Quarantined
		})
		e = state(t, st, fx.Episode.ID)
		if !strings.Contains(e.Reason, "gave up after 8 attempts") || !strings.Contains(e.Reason, "InternalError: HTTP 500") {
			t.Errorf("quarantine reason %q", e.Reason)
		}
		attempts = attemptTimes(m.partTimes())
		if len(attempts) != 8 {
			t.Fatalf("%d attempts, want 8", len(attempts))
		}
		checkBackoff(t, attempts, o.RetryMin, o.RetryMax)
		if n := m.uploads(); n != 0 {
			t.Errorf("%d unfinished multipart uploads left on the server", n)
		}
		// Quarantined: nothing more is tried, however long we wait.
		time.Sleep(15 * time.Minute)
		synctest.Wait()
		if n := len(attemptTimes(m.partTimes())); n != 8 {
			t.Errorf("%d attempts after the quarantine, want 8", n)
		}
		stop()
	})
}

// TestRunWakesOnClose: the daemon loop idles until PollInterval (a minute)
// passes, but an episode closed in between is uploaded at once when Wake
// says so.
func TestRunWakesOnClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemS3(bucket)
		st := fixtures.OpenStore(t)
		u, _ := newMemUploader(t, st, m, nil)
		stop := runUploader(t, u)
		time.Sleep(10 * time.Second)
		synctest.Wait()

		fx := fixtures.Build(t, st, fixtures.Spec{ID: "0193a1b2-0000-7000-8000-0000000001e1", Telemetry: true})
		woken := time.Now()
		u.Wake()
		for state(t, st, fx.Episode.ID).State != episode.Uploaded {
			if time.Since(woken) > 2*time.Minute {
				t.Fatal("not uploaded two minutes after Wake")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if d := time.Since(woken); d > time.Second {
			t.Errorf("uploaded %v after Wake, want at once (the poll interval is a minute)", d)
		}
		stop()
	})
}

// TestRunStopsWhenStoreClosed: once the store is closed (the daemon is
// stopping), Run returns instead of retrying a pass that can only fail.
func TestRunStopsWhenStoreClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemS3(bucket)
		st := fixtures.OpenStore(t)
		u, _ := newMemUploader(t, st, m, nil)
		runErr := make(chan error, 1)
		go func() { runErr <- u.Run(t.Context()) }()
		synctest.Wait()
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		u.Wake()
		select {
		case err := <-runErr:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(time.Hour):
			t.Fatal("Run still running an hour after the store closed")
		}
	})
}
