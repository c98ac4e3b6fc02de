package catalog_test

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/episoded/episoded/sync/bucket"
	"github.com/episoded/episoded/sync/catalog"
	"github.com/episoded/episoded/sync/internal/synctest"
)

// catalogQueries are run before and after compaction; their results must
// not change.
func catalogQueries(glob string) map[string]string {
	from := fmt.Sprintf("read_parquet('%s', hive_partitioning = true)", glob)
	return map[string]string{
		"per site and task": `SELECT site, task, count(*) AS n FROM ` + from + ` GROUP BY ALL ORDER BY ALL`,
		"per day":           `SELECT CAST(date AS VARCHAR) AS d, gateway, count(*) AS n, CAST(sum(bytes) AS VARCHAR) AS b FROM ` + from + ` GROUP BY ALL ORDER BY ALL`,
		"rows":              `SELECT id, gateway, cell, CAST(start_ns AS VARCHAR) AS s, manifest_sha256, signing_key_id FROM ` + from + ` ORDER BY id`,
		"doubles":           `SELECT count(*) - count(DISTINCT id) AS doubles FROM ` + from,
	}
}

func runQueries(t *testing.T, c *minio.Client, tag string) (map[string]string, []string) {
	t.Helper()
	dir := t.TempDir()
	keys := download(t, c, prefix+"/catalog/", dir)
	glob := filepath.Join(dir, prefix, "catalog", "v1", "*", "*", "*.parquet")
	out := map[string]string{}
	for name, q := range catalogQueries(glob) {
		out[name] = fmt.Sprint(duck(t, q))
	}
	t.Logf("%s: %d catalog files", tag, len(keys))
	return out, keys
}

// Compaction of closed days while a gateway keeps uploading (to today, and
// one late episode to a closed day) gives the same query results, with no
// row lost or doubled.
func TestCompactWhileUploading(t *testing.T) {
	s := synctest.StartS3(t)
	a, b, fx := uploadFleet(t, s)
	c := s3Client(t, s)
	// More closed-day rows: two more per gateway on 2026-11-20.
	for i, g := range []*gateway{a, b, a, b} {
		f := synctest.Build(t, g.store, synctest.Spec{ID: fmt.Sprintf("0193a1b2-0000-7000-8000-00000000d%03d", i), Telemetry: true,
			Start: time.Date(2026, 11, 20, 10+i, 0, 0, 0, time.UTC)})
		fx = append(fx, f)
	}
	for _, g := range []*gateway{a, b} {
		if err := g.up.RunOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	before, keysBefore := runQueries(t, c, "before")
	if before["doubles"] != "[map[doubles:0]]" {
		t.Fatalf("doubles before compaction: %s", before["doubles"])
	}

	// A third gateway uploads today's episodes and one late episode of a
	// closed day while the compactor runs.
	today := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)
	g3 := newGateway(t, s, "plant1", "gw-c")
	var todayIDs []string
	for i := 0; i < 6; i++ {
		f := synctest.Build(t, g3.store, synctest.Spec{ID: fmt.Sprintf("0193a1b2-0000-7000-8000-00000000e%03d", i), Telemetry: true,
			Start: today.Add(time.Duration(i) * time.Minute)})
		todayIDs = append(todayIDs, f.Episode.ID)
	}
	late := synctest.Build(t, g3.store, synctest.Spec{ID: "0193a1b2-0000-7000-8000-00000000e100", Telemetry: true,
		Start: time.Date(2026, 11, 20, 18, 0, 0, 0, time.UTC)})

	bk, err := bucket.NewS3(bucketName, bucket.S3Options{Endpoint: "http://" + s.Endpoint, AccessKey: s.Access, SecretKey: s.Secret, PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var upErr, compErr error
	var res catalog.CompactResult
	wg.Add(2)
	go func() { defer wg.Done(); upErr = g3.up.RunOnce(context.Background()) }()
	go func() {
		defer wg.Done()
		// --before tomorrow: the grace period (48 h) still keeps today
		// and the two days before it out of reach.
		res, compErr = catalog.Compact(context.Background(), bk, catalog.CompactOptions{Prefix: prefix,
			Before: today.Add(24 * time.Hour), Now: today.Add(4 * time.Hour)})
	}()
	wg.Wait()
	if upErr != nil || compErr != nil {
		t.Fatalf("upload %v, compact %v", upErr, compErr)
	}
	if want := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC); !res.Cutoff.Equal(want) {
		t.Fatalf("cutoff %v, want %v (grace)", res.Cutoff, want)
	}

	after, keysAfter := runQueries(t, c, "after")
	if after["doubles"] != "[map[doubles:0]]" {
		t.Fatalf("doubles after compaction: %s", after["doubles"])
	}
	// Today's files are untouched; every closed-day partition that had
	// several files is down to one compacted file plus, at most, the late
	// episode's file if the compactor listed before it landed.
	var todayFiles int
	perPart := map[string][]string{}
	for _, k := range keysAfter {
		perPart[path.Dir(k)] = append(perPart[path.Dir(k)], path.Base(k))
		if strings.Contains(k, "date=2026-11-29") {
			todayFiles++
		}
	}
	if todayFiles != len(todayIDs) {
		t.Fatalf("today's partition has %d files, want %d: %v", todayFiles, len(todayIDs), keysAfter)
	}
	p1 := prefix + "/catalog/v1/site=plant1/date=2026-11-20"
	p2 := prefix + "/catalog/v1/site=plant2/date=2026-11-20"
	if n := len(perPart[p2]); n != 1 || !strings.HasPrefix(perPart[p2][0], "compacted-") {
		t.Fatalf("plant2 closed day: %v", perPart[p2])
	}
	lateFile := "gw-c-" + late.Episode.ID + ".parquet"
	files := slices.DeleteFunc(slices.Clone(perPart[p1]), func(s string) bool { return s == lateFile })
	if len(files) != 1 || !strings.HasPrefix(files[0], "compacted-") {
		t.Fatalf("plant1 closed day: %v", perPart[p1])
	}
	t.Logf("files before %d, after %d; partitions %v", len(keysBefore), len(keysAfter), res.Partitions)

	// Same answers for everything that existed before: drop the rows gw-c
	// added and compare.
	afterOld := map[string]string{}
	dir := t.TempDir()
	download(t, c, prefix+"/catalog/", dir)
	glob := filepath.Join(dir, prefix, "catalog", "v1", "*", "*", "*.parquet")
	for name, q := range catalogQueries(glob) {
		q = strings.Replace(q, "hive_partitioning = true)", "hive_partitioning = true) WHERE gateway <> 'gw-c'", 1)
		afterOld[name] = fmt.Sprint(duck(t, q))
	}
	for name, v := range before {
		if afterOld[name] != v {
			t.Errorf("query %q changed:\nbefore %s\nafter  %s", name, v, afterOld[name])
		}
	}
	// And gw-c's rows are all there, once.
	rows := duck(t, fmt.Sprintf(`SELECT id FROM read_parquet('%s', hive_partitioning = true) WHERE gateway = 'gw-c'`, glob))
	want := append(slices.Clone(todayIDs), late.Episode.ID)
	slices.Sort(want)
	if got := sortedIDs(rows); !slices.Equal(got, want) {
		t.Fatalf("gw-c rows %v, want %v", got, want)
	}

	// A second run converges: the late file (if it was left) is folded
	// in, nothing else changes.
	if _, err := catalog.Compact(context.Background(), bk, catalog.CompactOptions{Prefix: prefix,
		Before: today, Now: today.Add(4 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	again, keysAgain := runQueries(t, c, "again")
	for _, name := range []string{"per site and task", "per day", "rows", "doubles"} {
		if again[name] != after[name] {
			t.Errorf("second compaction changed %q:\n%s\n%s", name, after[name], again[name])
		}
	}
	var closed int
	for _, k := range keysAgain {
		if strings.Contains(k, "date=2026-11-20") {
			closed++
		}
	}
	if closed != 2 {
		t.Errorf("closed day files after the second run: %v", keysAgain)
	}
}
