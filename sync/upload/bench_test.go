package upload

import (
	"context"
	"testing"
	"time"

	"github.com/episoded/episoded/sync/export"
	"github.com/episoded/episoded/sync/internal/synctest"
)

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
