package catalog_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// uploadFleet uploads three episodes from two gateways on two sites to a
// real versitygw and returns the gateways.
func uploadFleet(t *testing.T, s *synctest.S3) (*gateway, *gateway, []synctest.Fixture) {
	t.Helper()
	c := s3Client(t, s)
	if err := c.MakeBucket(context.Background(), bucketName, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	a := newGateway(t, s, "plant1", "gw-a")
	b := newGateway(t, s, "plant2", "gw-b")
	fx := []synctest.Fixture{
		synctest.Build(t, a.store, synctest.Spec{ID: "0193a1b2-0000-7000-8000-00000000c001", Telemetry: true,
			Start: time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC), Labels: map[string]string{"part": "A-17", "shift": "early"}}),
		synctest.Build(t, a.store, synctest.Spec{ID: "0193a1b2-0000-7000-8000-00000000c002", Telemetry: true, Lidar: true,
			Start: time.Date(2026, 11, 21, 23, 59, 58, 0, time.UTC)}),
		synctest.Build(t, b.store, synctest.Spec{ID: "0193a1b2-0000-7000-8000-00000000c003", Video: true, Telemetry: true,
			Cell: "cell2", Start: time.Date(2026, 11, 20, 14, 30, 0, 0, time.UTC)}),
	}
	// Verdicts as the recorder gives them: ok, none (a recorder older than
	// verdicts), degraded because of one camera.
	setVerdict := func(st *storage.Store, f *synctest.Fixture, v *episode.Verdict, cov func(stream string) float64) {
		e := f.Episode
		e.Verdict = v
		for i := range e.Quality {
			e.Quality[i].Coverage = cov(e.Quality[i].Stream)
		}
		if err := st.PutEpisode(e); err != nil {
			t.Fatal(err)
		}
		f.Episode = e
	}
	setVerdict(a.store, &fx[0], &episode.Verdict{Status: episode.QualityOK}, func(string) float64 { return 1 })
	setVerdict(b.store, &fx[2], &episode.Verdict{Status: episode.QualityDegraded, Reasons: []episode.Reason{
		{Stream: "cell2/cam-top", Code: episode.ReasonLowCoverage, Detail: "coverage 0.62 < 0.95"}}},
		func(s string) float64 {
			if s == "cell2/cam-top" {
				return 0.62
			}
			return 0.99
		})
	for _, g := range []*gateway{a, b} {
		if err := g.up.RunOnce(context.Background()); err != nil {
			t.Fatalf("%s upload: %v", g.id, err)
		}
	}
	return a, b, fx
}

// The catalog of three episodes from two gateways, read by DuckDB from
// the objects versitygw holds, has three rows equal to the manifests.
func TestCatalogRowsMatchManifestsInDuckDB(t *testing.T) {
	s := synctest.StartS3(t)
	a, b, fx := uploadFleet(t, s)
	c := s3Client(t, s)
	dir := t.TempDir()
	keys := download(t, c, prefix+"/", dir)
	var rowFiles []string
	for _, k := range keys {
		if strings.HasPrefix(k, prefix+"/catalog/") {
			rowFiles = append(rowFiles, k)
		}
	}
	want := []string{
		prefix + "/catalog/v1/site=plant1/date=2026-11-20/gw-a-" + fx[0].Episode.ID + ".parquet",
		prefix + "/catalog/v1/site=plant1/date=2026-11-21/gw-a-" + fx[1].Episode.ID + ".parquet",
		prefix + "/catalog/v1/site=plant2/date=2026-11-20/gw-b-" + fx[2].Episode.ID + ".parquet",
	}
	if !slices.Equal(rowFiles, want) {
		t.Fatalf("catalog files\n got %v\nwant %v", rowFiles, want)
	}

	glob := filepath.Join(dir, prefix, "catalog", "v1", "*", "*", "*.parquet")
	rows := duck(t, fmt.Sprintf(`SELECT id, site, CAST(date AS VARCHAR) AS date, gateway, cell, task, robot, operator,
		CAST(to_json(labels) AS VARCHAR) AS labels,
		CAST(epoch_us(start_time) AS VARCHAR) AS start_us, CAST(epoch_us(end_time) AS VARCHAR) AS end_us,
		CAST(start_ns AS VARCHAR) AS start_ns, CAST(end_ns AS VARCHAR) AS end_ns, duration_s,
		quality_status, CAST(to_json(quality_reasons) AS VARCHAR) AS quality_reasons, coverage,
		CAST(to_json([s.coverage FOR s IN streams]) AS VARCHAR) AS stream_coverage, CAST(bytes AS VARCHAR) AS bytes, objects, manifest_key, manifest_sha256,
		software_version, software_commit, signing_key_id, CAST(epoch_us(uploaded_at) AS VARCHAR) AS uploaded_us,
		[s.name || '|' || s.kind || '|' || s.codec || '|' || CAST(s.count AS VARCHAR) || '|' || CAST(s.bytes AS VARCHAR) || '|' || s.clock_source FOR s IN streams] AS streams
		FROM read_parquet('%s', hive_partitioning = true) ORDER BY id`, glob))
	if len(rows) != 3 {
		t.Fatalf("DuckDB returned %d rows, want 3: %v", len(rows), rows)
	}
	keyOf := map[string]string{fx[0].Episode.ID: a.key.ID, fx[1].Episode.ID: a.key.ID, fx[2].Episode.ID: b.key.ID}
	for i, r := range rows {
		manKey, _ := r["manifest_key"].(string)
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(manKey)))
		if err != nil {
			t.Fatalf("row %d: manifest_key %q: %v", i, manKey, err)
		}
		var m upload.Manifest
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		labels, _ := json.Marshal(m.Labels)
		if m.Labels == nil {
			labels = []byte("{}")
		}
		var objs []any
		var bytes int64
		for _, o := range m.Objects {
			objs = append(objs, o.Key)
			bytes += o.Size
		}
		var streams []any
		for _, q := range m.Quality {
			streams = append(streams, fmt.Sprintf("%s|%s|%s|%d|%d|%s", q.Stream, q.Kind, q.Codec, q.Samples, q.Bytes, q.Clock.Mode))
		}
		// The verdict columns: status, reasons and coverage (the worst
		// stream's) as the manifest has them; null without a verdict.
		status, reasons, coverage := "", []map[string]string{}, any(nil)
		var streamCov []*float64
		if m.Verdict != nil {
			status = m.Verdict.Status
			for _, re := range m.Verdict.Reasons {
				reasons = append(reasons, map[string]string{"stream": re.Stream, "code": re.Code, "detail": re.Detail})
			}
			minCov := 1.0
			for _, q := range m.Quality {
				minCov = min(minCov, q.Coverage)
			}
			coverage = minCov
		}
		for _, q := range m.Quality {
			if m.Verdict != nil {
				streamCov = append(streamCov, &q.Coverage)
			} else {
				streamCov = append(streamCov, nil)
			}
		}
		var gotReasons []map[string]string
		var gotCov []*float64
		if err := json.Unmarshal([]byte(fmt.Sprint(r["quality_reasons"])), &gotReasons); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(fmt.Sprint(r["stream_coverage"])), &gotCov); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(gotReasons) != fmt.Sprint(reasons) || jsonOf(gotCov) != jsonOf(streamCov) {
			t.Errorf("episode %s: reasons %v, stream coverage %s; manifest says %v, %s", m.Episode, gotReasons, jsonOf(gotCov), reasons, jsonOf(streamCov))
		}
		delete(r, "quality_reasons")
		delete(r, "stream_coverage")
		day := time.Unix(0, m.Start).UTC().Format(time.DateOnly)
		check := map[string]any{
			"id": m.Episode, "site": m.Site, "date": day, "gateway": m.Gateway, "cell": m.Cell, "task": m.Task, "robot": m.Robot,
			"operator": m.Operator, "labels": string(labels),
			"start_us": fmt.Sprint(m.Start / 1000), "end_us": fmt.Sprint(m.Stop / 1000),
			"start_ns": fmt.Sprint(m.Start), "end_ns": fmt.Sprint(m.Stop), "duration_s": float64(m.Stop-m.Start) / 1e9,
			"quality_status": status, "coverage": coverage,
			"bytes": fmt.Sprint(bytes), "objects": objs, "manifest_sha256": hex.EncodeToString(sum[:]),
			"software_version": m.Provenance.Software.Version, "software_commit": m.Provenance.Software.Commit,
			"signing_key_id": m.Signature.KeyID, "uploaded_us": fmt.Sprint(m.Uploaded / 1000), "streams": streams,
		}
		for k, v := range check {
			if fmt.Sprint(r[k]) != fmt.Sprint(v) {
				t.Errorf("episode %s: %s = %v, manifest says %v", m.Episode, k, r[k], v)
			}
		}
		if m.Signature.KeyID != keyOf[m.Episode] || m.Operator != "op7" {
			t.Errorf("episode %s: signed by %s, want %s; operator %q", m.Episode, m.Signature.KeyID, keyOf[m.Episode], m.Operator)
		}
	}

	// An example query from docs/CATALOG.md: episodes per site and task.
	per := duck(t, fmt.Sprintf(`SELECT site, task, count(*) AS n FROM read_parquet('%s', hive_partitioning = true)
		GROUP BY site, task ORDER BY site, task`, glob))
	if got := fmt.Sprint(per); got != "[map[n:2 site:plant1 task:pick] map[n:1 site:plant2 task:pick]]" {
		t.Errorf("episodes per site and task: %s", got)
	}
}

// The provenance block carries the gateway's kernel time-sync state: the
// test reads adjtimex(2) itself, through Python's ctypes (not our code),
// and compares.
func TestProvenanceTimeSyncMatchesAdjtimex(t *testing.T) {
	s := synctest.StartS3(t)
	// The kernel's figures move (maxerror grows by 500 us per second and
	// drops at each NTP update), so the test reads them just before and
	// just after the uploads and the manifest's reading must lie between.
	before := adjtimexPython(t)
	_, b, fx := uploadFleet(t, s)
	after := adjtimexPython(t)
	c := s3Client(t, s)
	man := getObject(t, c, upload.Dir(prefix, b.site, b.id, fx[2].Episode)+"/manifest.json")
	var m upload.Manifest
	if err := json.Unmarshal(man, &m); err != nil {
		t.Fatal(err)
	}
	p := m.Provenance
	if p == nil || p.TimeSync == nil {
		t.Fatalf("manifest has no provenance time-sync state: %s", man)
	}
	ts := p.TimeSync
	t.Logf("manifest: %+v; adjtimex via python before %+v, after %+v", *ts, before, after)
	if ts.ReadWhen != "upload" || ts.ReadAt < before.ReadAt || ts.ReadAt > after.ReadAt {
		t.Errorf("time sync read %q at %d, not between the test's readings", ts.ReadWhen, ts.ReadAt)
	}
	if (ts.State != before.State || ts.Synchronized != before.Synchronized) && (ts.State != after.State || ts.Synchronized != after.Synchronized) {
		t.Errorf("time sync %+v, kernel says %+v before and %+v after", *ts, before, after)
	}
	slack := int64(2000 + 1000*time.Duration(after.ReadAt-before.ReadAt).Seconds())
	within := func(v, a, b int64) bool { return v >= min(a, b)-slack && v <= max(a, b)+slack }
	if !within(ts.MaxErrorUs, before.MaxErrorUs, after.MaxErrorUs) || !within(ts.EstErrorUs, before.EstErrorUs, after.EstErrorUs) {
		t.Errorf("errors est %d max %d us, kernel says est %d..%d max %d..%d (slack %d)", ts.EstErrorUs, ts.MaxErrorUs,
			before.EstErrorUs, after.EstErrorUs, before.MaxErrorUs, after.MaxErrorUs, slack)
	}
	// Devices and streams: kinds, codecs, redacted URLs.
	js, _ := json.Marshal(p)
	for _, secret := range []string{"hunter2", "user:pw"} {
		if strings.Contains(string(js), secret) {
			t.Errorf("provenance leaks a credential: %s", js)
		}
	}
	var cam *struct{ kinds, codecs []string }
	for _, d := range p.Devices {
		if d.ID == "cam" {
			cam = &struct{ kinds, codecs []string }{d.Kinds, d.Codecs}
			if !strings.Contains(d.URL, "cam.local/stream") {
				t.Errorf("camera url %q", d.URL)
			}
		}
	}
	if cam == nil || !slices.Equal(cam.kinds, []string{"video"}) || !slices.Equal(cam.codecs, []string{"h264", "h265"}) {
		t.Errorf("camera device %+v in %s", cam, js)
	}
	if len(p.Streams) != len(m.Quality) || p.ConfigSHA256 == "" || p.Software.Version == "" {
		t.Errorf("provenance %s", js)
	}
}

type kernelTimeSync struct {
	State        string
	Synchronized bool
	MaxErrorUs   int64
	EstErrorUs   int64
	ReadAt       int64
}

// adjtimexPython reads the kernel's time-sync state with a read-only
// adjtimex(2) through Python's ctypes and libc (x86-64 / arm64 struct
// timex layout: longs, with ints padded to 8 bytes).
func adjtimexPython(t *testing.T) kernelTimeSync {
	t.Helper()
	py, err := execLook("python3")
	if err != nil {
		if testing.Short() {
			t.Skip("python3 missing; the independent adjtimex reading is skipped under -short")
		}
		t.Fatal("python3 missing: the independent adjtimex reading needs it")
	}
	const script = `
import ctypes, json, time
L, I = ctypes.c_long, ctypes.c_int
class Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", L), ("freq", L), ("maxerror", L), ("esterror", L),
                ("status", I), ("constant", L), ("precision", L), ("tolerance", L), ("tv_sec", L), ("tv_usec", L),
                ("tick", L), ("ppsfreq", L), ("jitter", L), ("shift", I), ("stabil", L), ("jitcnt", L),
                ("calcnt", L), ("errcnt", L), ("stbcnt", L), ("tai", I), ("pad", I * 11)]
libc = ctypes.CDLL(None, use_errno=True)
tx = Timex()
state = libc.adjtimex(ctypes.byref(tx))
names = {0: "TIME_OK", 1: "TIME_INS", 2: "TIME_DEL", 3: "TIME_OOP", 4: "TIME_WAIT", 5: "TIME_ERROR"}
print(json.dumps({"State": names.get(state, str(state)), "Synchronized": state != 5 and not (tx.status & 0x40),
    "MaxErrorUs": tx.maxerror, "EstErrorUs": tx.esterror, "ReadAt": time.time_ns()}))
`
	out, err := execOutput(py, "-c", script)
	if err != nil {
		t.Fatalf("python adjtimex: %v: %s", err, out)
	}
	var k kernelTimeSync
	if err := json.Unmarshal(out, &k); err != nil {
		t.Fatalf("python adjtimex output %s: %v", out, err)
	}
	return k
}

// sortedIDs returns the "id" column of rows, sorted.
func sortedIDs(rows []map[string]any) []string {
	var ids []string
	for _, r := range rows {
		ids = append(ids, fmt.Sprint(r["id"]))
	}
	sort.Strings(ids)
	return ids
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
