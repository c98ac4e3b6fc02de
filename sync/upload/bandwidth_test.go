package upload_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// TestBandwidthCap is a functional check of the token bucket: with a 5 MB/s
// cap the rate measured on the wire over 20 s is within ±10%.
func TestBandwidthCap(t *testing.T) {
	if testing.Short() {
		t.Skip("bandwidth check takes 25 s; skipped under -short")
	}
	const limit = 5_000_000
	s := synctest.StartS3(t)
	makeBucket(t, s, bucket)
	px := newProxy(t, s.Endpoint)
	st := synctest.OpenStore(t)
	synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000f1", RawBytes: 140 << 20})
	o := s3Options(t, s, px.endpoint())
	o.Bandwidth = limit
	o.Logger = nil
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	waitFor(t, 60*time.Second, "upload to start", func() bool { return px.putBytes.Load() > 0 })
	time.Sleep(2 * time.Second)
	b0, t0 := px.putBytes.Load(), time.Now()
	time.Sleep(20 * time.Second)
	b1, t1 := px.putBytes.Load(), time.Now()
	cancel()
	<-done
	rate := float64(b1-b0) / t1.Sub(t0).Seconds()
	t.Logf("measured %.0f B/s with a cap of %d B/s (%.1f%%)", rate, limit, 100*(rate/limit-1))
	if math.Abs(rate/limit-1) > 0.10 {
		t.Fatalf("rate %.0f B/s is not within 10%% of %d B/s", rate, limit)
	}
}
