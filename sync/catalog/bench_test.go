package catalog_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/episoded/episoded/sync/bucket"
	"github.com/episoded/episoded/sync/catalog"
)

func benchRow(i int, start int64) catalog.Row {
	cov := 0.99
	return catalog.Row{ID: fmt.Sprintf("0193a1b2-0000-7000-8000-%012d", i), Gateway: fmt.Sprintf("gw-%03d", i%1000), Cell: "cell1",
		Task: "pick-and-place", Robot: "robot1", Operator: "op7", Labels: map[string]string{"part": "A-17", "shift": "early"},
		StartTime: catalog.Micros(start), EndTime: catalog.Micros(start + 60e9), StartNs: start, EndNs: start + 60e9, DurationS: 60,
		QualityStatus: "ok", QualityReasons: []catalog.Reason{}, Coverage: &cov,
		Streams: []catalog.Stream{
			{Name: "cell1/cam-top", Kind: "video", Codec: "h264", Count: 1800, Bytes: 90 << 20, Coverage: &cov, AlignmentBoundMs: 1.2, ClockSource: "device"},
			{Name: "cell1/cam-side", Kind: "video", Codec: "h265", Count: 1800, Bytes: 70 << 20, Coverage: &cov, AlignmentBoundMs: 1.4, ClockSource: "device"},
			{Name: "cell1/lidar", Kind: "pointcloud", Codec: "raw", Count: 600, Bytes: 10 << 20, Coverage: &cov, AlignmentBoundMs: 2.5, ClockSource: "arrival"},
			{Name: "cell1/robot1/joint_states", Kind: "telemetry", Codec: "json", Count: 6000, Bytes: 1 << 20, Coverage: &cov, AlignmentBoundMs: 0.6, ClockSource: "device"},
		},
		Bytes: 171 << 20, Objects: []string{"central/plant1/gw/2026/11/20/id/episode.mcap"}, ManifestKey: "central/plant1/gw/2026/11/20/id/manifest.json",
		ManifestSHA256: "5f2b0c1d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b", SoftwareVer: "v0.3.0", SoftwareCommit: "35cdf37",
		SigningKeyID: "ed25519:3f9a0c1d2b4e5f60", UploadedAt: catalog.Micros(start + 3600e9)}
}

// BenchmarkCompactDay compacts one site-day of single-row files on a dir
// bucket (a local disk: the object store's latency is not measured) and
// reports the bytes per row before and after and rows/s.
func BenchmarkCompactDay(b *testing.B) {
	const rows = 2000
	day := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	for b.Loop() {
		b.StopTimer()
		root := b.TempDir()
		d := &bucket.Dir{Root: root}
		var small int64
		for i := 0; i < rows; i++ {
			start := day.Add(time.Duration(i) * 40 * time.Second).UnixNano()
			data, err := catalog.Encode([]catalog.Row{benchRow(i, start)})
			if err != nil {
				b.Fatal(err)
			}
			small += int64(len(data))
			if err := d.Put(context.Background(), catalog.Key("", "plant1", "gw", fmt.Sprint(i), start), data); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		t0 := time.Now()
		res, err := catalog.Compact(context.Background(), d, catalog.CompactOptions{Before: day.Add(24 * time.Hour), Now: day.Add(10 * 24 * time.Hour)})
		el := time.Since(t0)
		b.StopTimer()
		if err != nil || len(res.Partitions) != 1 || res.Partitions[0].Rows != rows {
			b.Fatalf("%+v %v", res, err)
		}
		st, err := os.Stat(filepath.Join(root, filepath.FromSlash(res.Partitions[0].Outputs[0])))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(small)/rows, "B/row-small")
		b.ReportMetric(float64(st.Size())/rows, "B/row-compacted")
		b.ReportMetric(rows/el.Seconds(), "rows/s")
		b.StartTimer()
	}
}

// BenchmarkRowHeap reports the Go heap a decoded row holds while
// compaction keeps a partition's rows in memory (after GC).
func BenchmarkRowHeap(b *testing.B) {
	const rows = 5000
	data := make([][]byte, 0, rows)
	for i := 0; i < rows; i++ {
		d, err := catalog.Encode([]catalog.Row{benchRow(i, int64(i)*1e9)})
		if err != nil {
			b.Fatal(err)
		}
		data = append(data, d)
	}
	gc := func() { runtime.GC(); runtime.GC() } // twice: sync.Pool victims go in the second
	for b.Loop() {
		gc()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		byID := map[string]catalog.Row{}
		for _, d := range data {
			rs, err := catalog.Decode(d)
			if err != nil {
				b.Fatal(err)
			}
			byID[rs[0].ID] = rs[0]
		}
		gc()
		runtime.ReadMemStats(&m1)
		b.ReportMetric(float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/rows, "B/row-heap")
		runtime.KeepAlive(byID)
	}
}
