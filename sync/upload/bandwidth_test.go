package upload_test

import (
	"context"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// TestBandwidthCapS3 checks that the cap is wired into the real S3 path:
// through versitygw, at 2 MB/s, an 8 MiB episode takes at least
// (bytes on the wire - burst)/cap of wall time. It asserts only that lower
// bound, which a loaded machine cannot break (it only makes the upload
// slower); the rate itself is measured on fake time in TestBandwidthCap.
func TestBandwidthCapS3(t *testing.T) {
	const limit = 2_000_000
	s := synctest.StartS3(t)
	cl := makeBucket(t, s, bucket)
	px := newProxy(t, s.Endpoint)
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000f1", RawBytes: 8 << 20})
	key := upload.Dir("episodes", "plant1", "gw7", fx.Episode) + "/episode.mcap"
	o := s3Options(t, s, px.endpoint())
	o.Bandwidth = limit
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if e := state(t, st, fx.Episode.ID); e.State != episode.Uploaded {
		t.Fatalf("state %s (%s)", e.State, e.Reason)
	}
	want, size := exportSHA(t, st, fx.Episode.ID)
	if got, n := objectSHA(t, cl, bucket, key); got != want || n != size {
		t.Fatalf("object %s/%d, want %s/%d", got, n, want, size)
	}
	wire := px.putBytes.Load()
	burst := int64(limit / 20)
	least := time.Duration(float64(wire-burst) / limit * float64(time.Second))
	t.Logf("%d bytes on the wire in %v at a cap of %d B/s (%.0f B/s)", wire, took, limit, float64(wire)/took.Seconds())
	if wire < size {
		t.Fatalf("%d bytes on the wire for a %d byte object", wire, size)
	}
	if took < least {
		t.Fatalf("%d bytes took %v at a cap of %d B/s, want at least %v", wire, took, limit, least)
	}
}
