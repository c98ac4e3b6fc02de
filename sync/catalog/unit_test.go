package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sync/bucket"
	"github.com/episoded/episoded/sync/catalog"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// crashingBucket fails every Delete after the first n, as a compactor
// killed half way through its deletions would leave things.
type crashingBucket struct {
	bucket.Bucket
	mu sync.Mutex
	n  int
}

func (c *crashingBucket) Delete(ctx context.Context, key string) error {
	c.mu.Lock()
	if c.n == 0 {
		c.mu.Unlock()
		return errors.New("killed")
	}
	c.n--
	c.mu.Unlock()
	return c.Bucket.Delete(ctx, key)
}

func allRows(t *testing.T, b bucket.Bucket) []catalog.Row {
	t.Helper()
	objs, err := b.List(context.Background(), "catalog/")
	if err != nil {
		t.Fatal(err)
	}
	var rows []catalog.Row
	for _, o := range objs {
		data, err := bucket.ReadAll(context.Background(), b, o.Key)
		if err != nil {
			t.Fatal(err)
		}
		r, err := catalog.Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r...)
	}
	return rows
}

// A compactor killed between writing the compacted file and deleting the
// inputs loses nothing; the next run merges again and converges to one
// file with each row once.
func TestCompactCrashConverges(t *testing.T) {
	root := t.TempDir()
	d := &bucket.Dir{Root: root}
	ctx := context.Background()
	day := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	var ids []string
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("ep%02d", i)
		ids = append(ids, id)
		start := day.Add(time.Duration(i) * time.Hour).UnixNano()
		data, err := catalog.Encode([]catalog.Row{{ID: id, Gateway: fmt.Sprintf("gw%d", i%3), StartNs: start, StartTime: catalog.Micros(start),
			Labels: map[string]string{"i": fmt.Sprint(i)}, Streams: []catalog.Stream{{Name: "s", Count: int64(i)}}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Put(ctx, catalog.Key("", "plant1", fmt.Sprintf("gw%d", i%3), id, start), data); err != nil {
			t.Fatal(err)
		}
	}
	now := day.Add(10 * 24 * time.Hour)
	_, err := catalog.Compact(ctx, &crashingBucket{Bucket: d, n: 5}, catalog.CompactOptions{Before: now, Now: now, MaxRows: 8})
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("crash: %v", err)
	}
	// Mid-crash: every row is still there (some twice, which the
	// reader-facing view removes by id).
	mid := allRows(t, d)
	var midIDs []string
	for _, r := range mid {
		midIDs = append(midIDs, r.ID)
	}
	slices.Sort(midIDs)
	if got := slices.Compact(midIDs); !slices.Equal(got, ids) {
		t.Fatalf("rows lost in the crash: %v", got)
	}
	res, err := catalog.Compact(ctx, d, catalog.CompactOptions{Before: now, Now: now, MaxRows: 8})
	if err != nil {
		t.Fatal(err)
	}
	objs, _ := d.List(ctx, "catalog/")
	if len(objs) != 3 { // 20 rows, 8 per file
		t.Fatalf("after recovery: %v (%+v)", objs, res)
	}
	rows := allRows(t, d)
	var got []string
	for _, r := range rows {
		got = append(got, r.ID)
		if r.Labels["i"] != strings.TrimPrefix(r.ID, "ep") && r.Labels["i"] != strings.TrimPrefix(r.ID, "ep0") {
			t.Errorf("row %s labels %v", r.ID, r.Labels)
		}
	}
	if !slices.Equal(got, ids) { // sorted by start
		t.Fatalf("rows after recovery %v", got)
	}
	// Within the grace period nothing is touched, whatever --before says.
	res, err = catalog.Compact(ctx, d, catalog.CompactOptions{Before: now, Now: day.Add(36 * time.Hour)})
	if err != nil || len(res.Partitions) != 0 {
		t.Fatalf("inside grace: %+v %v", res, err)
	}
}

// The dir target gets the same catalog layout as s3.
func TestCatalogDirTarget(t *testing.T) {
	root := t.TempDir()
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-00000000f001", Telemetry: true,
		Start: time.Date(2026, 11, 26, 23, 59, 59, 0, time.UTC)})
	u, err := upload.New(st, upload.Options{Target: upload.Target{Type: "dir", Path: root, Prefix: "central"},
		Site: "plant9", Gateway: "gw-d", StageDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "central", "catalog", "v1", "site=plant9", "date=2026-11-26", "gw-d-"+fx.Episode.ID+".parquet")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := catalog.Decode(data)
	if err != nil || len(rows) != 1 || rows[0].ID != fx.Episode.ID || rows[0].SigningKeyID != "" || len(rows[0].Streams) != 2 {
		t.Fatalf("rows %+v %v", rows, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("temp files left: %v", entries)
	}
	// A crash between manifest and catalog row: the episode is still
	// pending, its manifest is on the target, its row is not. The next
	// pass finds the manifest and writes the row, byte for byte the same.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	e, err := st.Episode(fx.Episode.ID)
	if err != nil {
		t.Fatal(err)
	}
	e.State = episode.Uploading
	if err := st.PutEpisode(e); err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	again, err := os.ReadFile(p)
	if err != nil || string(again) != string(data) {
		t.Fatalf("catalog row after the crash: %d bytes (%v), want the same %d bytes", len(again), err, len(data))
	}
	// DuckDB reads the dir target in place.
	n := duck(t, fmt.Sprintf(`SELECT count(*) AS n, min(site) AS site FROM read_parquet('%s/central/catalog/v1/*/*/*.parquet', hive_partitioning = true)`, root))
	if fmt.Sprint(n) != "[map[n:1 site:plant9]]" {
		t.Fatalf("duckdb over the dir target: %v", n)
	}
}

// The queries docs/CATALOG.md gives for DuckDB run as written.
func TestDocsDuckDBQueries(t *testing.T) {
	root := t.TempDir()
	d := &bucket.Dir{Root: root}
	start := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC).UnixNano()
	cov := 0.5
	for i, status := range []string{"ok", "degraded", "degraded"} {
		id := fmt.Sprintf("ep%d", i)
		data, err := catalog.Encode([]catalog.Row{{ID: id, Gateway: "gw", Task: "pick-and-place", StartNs: start, StartTime: catalog.Micros(start),
			QualityStatus: status, Coverage: &cov,
			QualityReasons: []catalog.Reason{{Stream: "cell1/cam-top", Code: "low_coverage", Detail: "coverage 0.5 < 0.95"}}, Labels: map[string]string{},
			Streams: []catalog.Stream{{Name: "cell1/cam-top", Kind: "video", AlignmentBoundMs: float64(3 * i)}}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Put(context.Background(), catalog.Key("", "plantA", "gw", id, start), data); err != nil {
			t.Fatal(err)
		}
	}
	doc, err := os.ReadFile("../../docs/CATALOG.md")
	if err != nil {
		t.Fatal(err)
	}
	// The DuckDB block: the view, then each query.
	block := string(doc)
	block = block[strings.Index(block, "### DuckDB"):]
	block = block[strings.Index(block, "```sql")+6:]
	block = block[:strings.Index(block, "```")]
	block = strings.ReplaceAll(block, "/data/central", root)
	var stmts []string
	for _, s := range strings.Split(block, ";") {
		var lines []string
		for _, l := range strings.Split(s, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "--") {
				lines = append(lines, l)
			}
		}
		if s := strings.TrimSpace(strings.Join(lines, "\n")); s != "" {
			stmts = append(stmts, s)
		}
	}
	if len(stmts) != 5 {
		t.Fatalf("%d statements in the DuckDB block", len(stmts))
	}
	results := map[int]string{}
	for i := 1; i < len(stmts); i++ {
		results[i] = fmt.Sprint(duck(t, stmts[0], strings.ReplaceAll(stmts[i], "current_date", "DATE '2026-11-23'")))
	}
	want := map[int]string{
		1: "[map[episodes:3 hours:0 site:plantA task:pick-and-place]]",
		2: "[map[gateway:gw id:ep0 manifest_key: start_time:2026-11-20 09:00:00+00]]",
		3: "[map[camera:cell1/cam-top degraded:2]]",
		4: "[map[alignment_bound_ms:6 clock_source: id:ep2 name:cell1/cam-top]]",
	}
	for i, w := range want {
		if results[i] != w {
			t.Errorf("docs query %d:\n%s\ngot  %s\nwant %s", i, stmts[i], results[i], w)
		}
	}
}
