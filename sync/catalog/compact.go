package catalog

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/episoded/episoded/sync/bucket"
)

// CompactOptions configure Compact.
type CompactOptions struct {
	// Prefix is the target's key prefix (the catalog is under
	// <prefix>/catalog/v1).
	Prefix string
	// Before: only days strictly before this date (UTC) are compacted.
	Before time.Time
	// Now and Grace: days within Grace of Now are never compacted, whatever
	// Before says (gateways may still be writing them). Defaults: the wall
	// clock and 48 hours.
	Now   time.Time
	Grace time.Duration
	// MaxRows per compacted file; default 500,000.
	MaxRows int
	// MinFiles: a partition with fewer files is left alone; default 2.
	MinFiles int
	// Concurrency is the number of objects read or deleted at once;
	// default 16.
	Concurrency int
	Logger      *slog.Logger
}

// PartitionResult is what Compact did to one partition.
type PartitionResult struct {
	Dir     string
	Inputs  int
	Outputs []string
	Rows    int
	Dupes   int // duplicate rows (same id) dropped
	Deleted int
	Skipped string // why the partition was left alone
}

// CompactResult sums up a run.
type CompactResult struct {
	Cutoff     time.Time
	Partitions []PartitionResult
}

// Compact merges the row files of every closed day before o.Before into
// at most ceil(rows/MaxRows) files per partition; see the package doc for
// why readers never miss a row and never count one twice.
func Compact(ctx context.Context, b bucket.Bucket, o CompactOptions) (CompactResult, error) {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.Grace <= 0 {
		o.Grace = 48 * time.Hour
	}
	if o.MaxRows <= 0 {
		o.MaxRows = 500_000
	}
	if o.MinFiles <= 0 {
		o.MinFiles = 2
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	// The cutoff is the earlier of Before and the start of the first day
	// that the grace period still protects.
	graceDay := o.Now.UTC().Add(-o.Grace).Truncate(24 * time.Hour)
	cutoff := o.Before.UTC().Truncate(24 * time.Hour)
	if o.Before.IsZero() || graceDay.Before(cutoff) {
		cutoff = graceDay
	}
	res := CompactResult{Cutoff: cutoff}
	root := Dir(o.Prefix) + "/"
	objs, err := b.List(ctx, root)
	if err != nil {
		return res, err
	}
	parts := map[string][]bucket.Object{}
	var order []string
	for _, ob := range objs {
		if !strings.HasSuffix(ob.Key, ".parquet") {
			continue
		}
		dir := path.Dir(ob.Key)
		day, ok := partitionDay(dir)
		if !ok || !day.Before(cutoff) {
			continue
		}
		if _, seen := parts[dir]; !seen {
			order = append(order, dir)
		}
		parts[dir] = append(parts[dir], ob)
	}
	var errs []error
	for _, dir := range order {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		pr, err := compactPartition(ctx, b, dir, parts[dir], o)
		res.Partitions = append(res.Partitions, pr)
		if err != nil {
			errs = append(errs, fmt.Errorf("compact %s: %w", dir, err))
			continue
		}
		o.Logger.Info("catalog partition compacted", "partition", dir, "inputs", pr.Inputs, "rows", pr.Rows, "outputs", len(pr.Outputs), "skipped", pr.Skipped)
	}
	return res, errors.Join(errs...)
}

// partitionDay parses the date=YYYY-MM-DD element of a partition dir.
func partitionDay(dir string) (time.Time, bool) {
	base := path.Base(dir)
	v, ok := strings.CutPrefix(base, "date=")
	if !ok || !strings.HasPrefix(path.Base(path.Dir(dir)), "site=") {
		return time.Time{}, false
	}
	t, err := time.Parse(time.DateOnly, v)
	return t, err == nil
}

func compactPartition(ctx context.Context, b bucket.Bucket, dir string, in []bucket.Object, o CompactOptions) (PartitionResult, error) {
	pr := PartitionResult{Dir: dir, Inputs: len(in)}
	if len(in) < o.MinFiles {
		pr.Skipped = fmt.Sprintf("%d file(s), nothing to merge", len(in))
		return pr, nil
	}
	// Read every input (Concurrency at a time); the newest upload of an
	// id wins.
	h := sha256.New()
	for _, ob := range in {
		fmt.Fprintf(h, "%s\x00%d\n", ob.Key, ob.Size)
	}
	decoded := make([][]Row, len(in))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Concurrency)
	for i, ob := range in {
		g.Go(func() error {
			data, err := bucket.ReadAll(gctx, b, ob.Key)
			if err != nil {
				return fmt.Errorf("read %s: %w", ob.Key, err)
			}
			rows, err := Decode(data)
			if err != nil {
				return fmt.Errorf("%s: %w", ob.Key, err)
			}
			decoded[i] = rows
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return pr, err
	}
	byID := map[string]Row{}
	for _, rows := range decoded {
		for _, r := range rows {
			if old, ok := byID[r.ID]; ok {
				pr.Dupes++
				if old.UploadedAt > r.UploadedAt {
					continue
				}
			}
			byID[r.ID] = r
		}
	}
	rows := make([]Row, 0, len(byID))
	for _, r := range byID {
		rows = append(rows, r)
	}
	// Sorted by start then id: engines prune row groups on start_time.
	slices.SortFunc(rows, func(a, b Row) int { return cmp.Or(cmp.Compare(a.StartNs, b.StartNs), strings.Compare(a.ID, b.ID)) })
	pr.Rows = len(rows)
	tag := hex.EncodeToString(h.Sum(nil))[:16]
	outSet := map[string]bool{}
	for i := 0; i*o.MaxRows < len(rows) || (i == 0 && len(rows) == 0); i++ {
		chunk := rows[i*o.MaxRows : min((i+1)*o.MaxRows, len(rows))]
		if len(chunk) == 0 {
			break
		}
		data, err := Encode(chunk)
		if err != nil {
			return pr, err
		}
		key := path.Join(dir, fmt.Sprintf("compacted-%s-%d.parquet", tag, i))
		if err := b.Put(ctx, key, data); err != nil {
			return pr, err
		}
		// Read it back before anything is deleted.
		back, err := bucket.ReadAll(ctx, b, key)
		if err != nil {
			return pr, fmt.Errorf("read back %s: %w", key, err)
		}
		got, err := Decode(back)
		if err != nil || len(got) != len(chunk) {
			return pr, fmt.Errorf("read back %s: %d rows, want %d (%v)", key, len(got), len(chunk), err)
		}
		pr.Outputs = append(pr.Outputs, key)
		outSet[key] = true
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(o.Concurrency)
	var deleted atomic.Int64
	for _, ob := range in {
		if outSet[ob.Key] {
			continue
		}
		g.Go(func() error {
			if err := b.Delete(gctx, ob.Key); err != nil {
				return err
			}
			deleted.Add(1)
			return nil
		})
	}
	err := g.Wait()
	pr.Deleted = int(deleted.Load())
	return pr, err
}
