// Package catalog is the fleet catalog: one Parquet row per uploaded
// episode, in Hive partitions that DuckDB, Trino, Spark or Athena read in
// place from the central store. docs/CATALOG.md documents the schema and
// gives example queries.
//
// Layout: <prefix>/catalog/v1/site=<site>/date=<yyyy-mm-dd>/<file>.parquet,
// the date that of the episode start in UTC (the same day as the episode's
// object directory). The uploader writes <gateway>-<episode id>.parquet
// right after the episode's manifest.json; `episoded catalog compact`
// merges a closed day's files into a few compacted-<hash>-<n>.parquet files.
// site and date live only in the path (Spark refuses a data column that
// repeats a partition column).
//
// Compaction and readers. Object stores have no atomic multi-object
// rename, so compaction cannot swap N small files for one big file in one
// step. It therefore keeps one invariant and one rule:
//
//   - Never miss: it writes (and reads back) the compacted files before it
//     deletes any input, so at every instant every row is in at least one
//     listed file. A crash between the two leaves extra files that the
//     next run merges again (its inputs are every file in the partition,
//     compacted ones included), and rows are deduplicated by id (the latest
//     uploaded_at wins), so repeated runs converge.
//   - Never twice: each row carries the episode id, unique per episode,
//     and the reader-facing view (docs/CATALOG.md) keeps one row per id, so
//     a query that lists the partition between "compacted file written" and
//     "small files deleted" still counts each episode once. Compaction only
//     touches days older than a grace period (default 2 days), so a
//     gateway writing today never races it; a gateway that comes back
//     after weeks and uploads an old day simply adds a new small file,
//     which the next compaction of that day folds in.
//
// Compacted file names are the sha256 of their inputs' keys and sizes, so
// two compactors started on the same inputs write the same keys.
package catalog

import (
	"bytes"
	"fmt"
	"path"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"
)

// Version is the catalog layout version (the v1 in the path).
const Version = "v1"

// Dir returns the catalog root under prefix: <prefix>/catalog/v1.
func Dir(prefix string) string {
	if prefix == "" {
		return path.Join("catalog", Version)
	}
	return path.Join(prefix, "catalog", Version)
}

// Partition returns the partition directory of a site and day.
func Partition(prefix, site string, day time.Time) string {
	return path.Join(Dir(prefix), "site="+site, "date="+day.UTC().Format(time.DateOnly))
}

// Key returns the row file of one episode:
// <prefix>/catalog/v1/site=<site>/date=<yyyy-mm-dd>/<gateway>-<id>.parquet,
// the date from the episode start (ns) in UTC.
func Key(prefix, site, gateway, id string, startNs int64) string {
	return path.Join(Partition(prefix, site, time.Unix(0, startNs)), gateway+"-"+id+".parquet")
}

// Row is one episode's catalog row. Times are UTC microseconds (Parquet
// TIMESTAMP(MICROS, UTC), which every engine reads); the exact nanosecond
// values are in start_ns and end_ns.
type Row struct {
	ID       string            `parquet:"id"`
	Gateway  string            `parquet:"gateway"`
	Cell     string            `parquet:"cell"`
	Task     string            `parquet:"task"`
	Robot    string            `parquet:"robot"`
	Operator string            `parquet:"operator"`
	Labels   map[string]string `parquet:"labels"`
	// StartTime and EndTime are the episode's trigger times.
	StartTime int64   `parquet:"start_time,timestamp(microsecond)"`
	EndTime   int64   `parquet:"end_time,timestamp(microsecond)"`
	StartNs   int64   `parquet:"start_ns"`
	EndNs     int64   `parquet:"end_ns"`
	DurationS float64 `parquet:"duration_s"`
	// QualityStatus is the episode verdict ("ok" or "degraded"); empty if
	// the recorder gave none. QualityReasons say why it is degraded.
	QualityStatus  string   `parquet:"quality_status"`
	QualityReasons []Reason `parquet:"quality_reasons,list"`
	// Coverage is the worst stream's coverage: the smallest fraction of
	// its expected samples any stream delivered (0..1); null when the
	// recorder did not measure it.
	Coverage *float64 `parquet:"coverage,optional"`
	Streams  []Stream `parquet:"streams,list"`
	// Bytes is the total size of the episode's objects (manifest excluded).
	Bytes          int64    `parquet:"bytes"`
	Objects        []string `parquet:"objects,list"`
	ManifestKey    string   `parquet:"manifest_key"`
	ManifestSHA256 string   `parquet:"manifest_sha256"`
	SoftwareVer    string   `parquet:"software_version"`
	SoftwareCommit string   `parquet:"software_commit"`
	// SigningKeyID is the id of the key that signed the manifest; empty
	// for an unsigned manifest.
	SigningKeyID string `parquet:"signing_key_id"`
	UploadedAt   int64  `parquet:"uploaded_at,timestamp(microsecond)"`
}

// Reason is one reason for a degraded verdict.
type Reason struct {
	Stream string `parquet:"stream"`
	// Code is missing_stream, low_coverage or alignment_bound.
	Code   string `parquet:"code"`
	Detail string `parquet:"detail"`
}

// Stream is one stream of an episode.
type Stream struct {
	Name  string `parquet:"name"`
	Kind  string `parquet:"kind"`
	Codec string `parquet:"codec"`
	// Count is the number of samples, Bytes their payload size.
	Count int64 `parquet:"count"`
	Bytes int64 `parquet:"bytes"`
	// Coverage is the fraction of the window this stream covers; null if
	// not measured.
	Coverage *float64 `parquet:"coverage,optional"`
	// AlignmentBoundMs bounds the stream's alignment error.
	AlignmentBoundMs float64 `parquet:"alignment_bound_ms"`
	ClockSource      string  `parquet:"clock_source"`
	Gaps             int64   `parquet:"gaps"`
}

// Micros converts ns since the epoch to the catalog's microseconds.
func Micros(ns int64) int64 { return ns / 1000 }

// Encode writes rows as one Parquet file (zstd, one row group).
//
// Each call has its own zstd codec. parquet-go's shared parquet.Zstd pools
// its encoders, and an encoder owns goroutines and channels of whoever
// made it: one made inside a testing/synctest bubble (the uploader's
// timing tests) killed the next bubble that took it from the pool. A
// catalog file is one row; an encoder per file costs little.
func Encode(rows []Row) ([]byte, error) {
	var buf bytes.Buffer
	w := parquet.NewGenericWriter[Row](&buf, parquet.Compression(&zstd.Codec{}))
	if _, err := w.Write(rows); err != nil {
		return nil, fmt.Errorf("encode catalog rows: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encode catalog rows: %w", err)
	}
	return buf.Bytes(), nil
}

// Decode reads the rows of a Parquet file written by Encode.
func Decode(data []byte) ([]Row, error) {
	rows, err := parquet.Read[Row](bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("decode catalog file: %w", err)
	}
	return rows, nil
}
