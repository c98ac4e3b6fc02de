package storage

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/episoded/episoded/episode"
)

// span is an inclusive time range [from, to] in ns.
type span struct{ from, to int64 }

type spans []span

// normalize sorts and merges overlapping or adjacent spans.
func (ss spans) normalize() spans {
	ss = slices.DeleteFunc(slices.Clone(ss), func(x span) bool { return x.from > x.to })
	slices.SortFunc(ss, func(a, b span) int {
		switch {
		case a.from < b.from:
			return -1
		case a.from > b.from:
			return 1
		}
		return 0
	})
	out := ss[:0]
	for _, x := range ss {
		if n := len(out); n > 0 && (out[n-1].to == math.MaxInt64 || x.from <= out[n-1].to+1) {
			out[n-1].to = max(out[n-1].to, x.to)
			continue
		}
		out = append(out, x)
	}
	return out
}

// subtract returns a \ b; both must be normalized.
func subtract(a, b spans) spans {
	var out spans
	for _, x := range a {
		cur := x
		ok := true
		for _, y := range b {
			if y.to < cur.from || y.from > cur.to {
				continue
			}
			if y.from > cur.from {
				out = append(out, span{cur.from, y.from - 1})
			}
			if y.to >= cur.to {
				ok = false
				break
			}
			cur.from = y.to + 1
		}
		if ok {
			out = append(out, cur)
		}
	}
	return out
}

// contains reports whether x lies entirely inside one span of ss (normalized).
func (ss spans) contains(x span) bool {
	for _, y := range ss {
		if y.from <= x.from && x.to <= y.to {
			return true
		}
	}
	return false
}

// evictPlan is what one eviction step deletes: per stream, the time spans
// to remove from the index. Segments lying entirely inside them are
// unlinked.
type evictPlan struct {
	del map[string]spans
	// marks are episode records to rewrite (evicted flag) in the same batch.
	marks []episodeRec
}

// coverage returns, per stream, the time spans protected by live episodes
// (those whose data has not been evicted). A recording episode covers up to
// the end of time.
func coverage(live []episodeRec) map[string]spans {
	prot := make(map[string]spans)
	for _, r := range live {
		if r.Evicted != 0 {
			continue
		}
		from, to := r.E.Window(maxTime)
		if r.E.Stop == 0 {
			to = maxTime
		}
		for _, st := range r.E.Streams {
			prot[st] = append(prot[st], span{from, to})
		}
	}
	for st, ss := range prot {
		prot[st] = ss.normalize()
	}
	return prot
}

// planLocked computes what to delete: on every stream, timeline older than
// the pre-roll horizon, plus extra on extraStreams, minus what live
// episodes cover. Called with recMu held.
func (s *Store) planLocked(live []episodeRec, now int64, extra spans, extraStreams []string) evictPlan {
	// The horizon moves in steps of one segment slice, so that a pass
	// every second does not write a range tombstone every second.
	horizon := now - int64(s.opts.TimelineRetention)
	horizon -= ((horizon % int64(s.opts.SegmentSlice)) + int64(s.opts.SegmentSlice)) % int64(s.opts.SegmentSlice)
	prot := coverage(live)
	s.keepKeyframes(prot) // video: a window's pre-roll reaches back to its keyframe
	streams, err := s.Streams()
	if err != nil {
		s.log.Error("eviction: list streams", "err", err)
	}
	s.segMu.Lock()
	for _, r := range s.segMu.segs {
		streams = append(streams, r.Stream)
	}
	s.segMu.Unlock()
	streams = append(streams, extraStreams...)
	slices.Sort(streams)
	streams = slices.Compact(streams)
	plan := evictPlan{del: make(map[string]spans)}
	for _, st := range streams {
		cand := spans{{math.MinInt64, horizon - 1}}
		if slices.Contains(extraStreams, st) {
			cand = append(cand, extra...)
		}
		if del := subtract(cand.normalize(), prot[st]); len(del) > 0 {
			plan.del[st] = del
		}
	}
	return plan
}

// applyPlanLocked deletes the plan's index ranges (only those holding
// data, so idle passes leave no tombstones), unlinks the segments inside
// them, commits b with everything else the caller put in it, and compacts
// the deleted ranges when compact is set (under pressure, or an explicit
// delete) so that Pebble's space is reclaimed at once; otherwise Pebble's
// own compactions drop the deleted data in time. It returns the segment
// bytes freed.
func (s *Store) applyPlanLocked(b *pebble.Batch, plan evictPlan, compactNow bool) (int64, error) {
	type rng struct{ lo, hi []byte }
	var compact []rng
	for st, del := range plan.del {
		for _, x := range del {
			lo, hi := sampleRangeBounds(st, x.from, x.to)
			has, err := s.hasData(lo, hi)
			if err != nil {
				return 0, err
			}
			if has {
				if err := b.DeleteRange(lo, hi, nil); err != nil {
					return 0, err
				}
				compact = append(compact, rng{lo, hi})
			}
		}
	}
	for i := range plan.marks {
		v, err := marshal(&plan.marks[i])
		if err != nil {
			return 0, err
		}
		if err := b.Set(episodeKey(plan.marks[i].E.ID), v, nil); err != nil {
			return 0, err
		}
	}
	s.segMu.Lock()
	var unlink []uint64
	for id, r := range s.segMu.segs {
		if del, ok := plan.del[r.Stream]; ok && del.contains(span{r.MinT, r.MaxT}) {
			if w := s.segMu.active[r.Stream]; w != nil && w.id == id {
				s.sealLocked(r.Stream)
			}
			unlink = append(unlink, id)
			if err := b.Delete(segKey(id), nil); err != nil {
				s.segMu.Unlock()
				return 0, err
			}
		}
	}
	if !b.Empty() {
		if err := b.Commit(pebble.Sync); err != nil {
			s.segMu.Unlock()
			return 0, fmt.Errorf("commit eviction: %w", err)
		}
	}
	var freed int64
	for _, id := range unlink {
		r := s.segMu.segs[id]
		delete(s.segMu.segs, id)
		s.segMu.bytes -= r.Size
		s.segStats.Store(segStats{s.segMu.bytes, len(s.segMu.segs)})
		freed += r.Size
		if err := os.Remove(s.segPath(id)); err != nil && !os.IsNotExist(err) {
			s.log.Error("eviction: remove segment", "segment", id, "err", err)
		}
	}
	s.segMu.Unlock()
	if !compactNow {
		compact = nil
	}
	for _, r := range compact {
		if err := s.db.Compact(context.Background(), r.lo, r.hi, false); err != nil {
			s.log.Warn("eviction: compact", "err", err)
		}
	}
	return freed, nil
}

func (s *Store) hasData(lo, hi []byte) (bool, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return false, err
	}
	has := it.First()
	return has, it.Close()
}

// watch runs the space watcher until ctx is cancelled.
func (s *Store) watch(ctx context.Context) {
	t := time.NewTicker(s.opts.WatchInterval)
	defer t.Stop()
	for {
		s.checkSpace()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kickWatch:
		}
	}
}

// checkSpace enforces retention and the quota, in the documented order.
func (s *Store) checkSpace() {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	if s.closed.Load() {
		return
	}
	s.estimate.Store(0)
	now := s.opts.Now().UnixNano()
	recs, err := s.episodeRecs()
	if err != nil {
		s.log.Error("space check: list episodes", "err", err)
		return
	}

	// Steps 1 and 2 always run: uncovered timeline past the pre-roll
	// horizon, and uploaded episodes past their retention.
	var expired []episodeRec
	for i := range recs {
		r := &recs[i]
		if r.Evicted == 0 && r.E.State == episode.Uploaded && r.E.Updated < now-int64(s.opts.Retention) {
			r.Evicted, r.EvictReason = now, "retention"
			expired = append(expired, *r)
		}
	}
	u := s.refreshUsage()
	s.evictStep(recs, expired, now, "timeline", s.pressure(u, false))

	u = s.refreshUsage()
	if !s.pressure(u, false) {
		s.setFull(false, u)
		return
	}
	// Step 2b (under pressure): uploaded episodes still within retention,
	// oldest first. Their data is safe in object storage.
	// Step 3: episodes not yet uploaded, per policy.
	steps := []struct {
		reason string
		pick   func(r episodeRec) bool
	}{
		{"quota_uploaded", func(r episodeRec) bool { return r.E.State == episode.Uploaded }},
	}
	if s.opts.FullPolicy == PolicyEvictOldest {
		steps = append(steps, struct {
			reason string
			pick   func(r episodeRec) bool
		}{"quota_not_uploaded", func(r episodeRec) bool {
			switch r.E.State {
			case episode.Recording, episode.Uploading, episode.Uploaded:
				return false
			}
			return true
		}})
	}
	for _, step := range steps {
		for i := range recs { // recs are ordered by ID, oldest first
			r := &recs[i]
			if r.Evicted != 0 || !step.pick(*r) {
				continue
			}
			r.Evicted, r.EvictReason = now, step.reason
			if step.reason == "quota_not_uploaded" {
				s.log.Warn("evicting episode that was not uploaded (policy evict-oldest)", "episode", r.E.ID, "state", r.E.State)
			}
			s.evictStep(recs, []episodeRec{*r}, now, step.reason, true)
			u = s.refreshUsage()
			if !s.pressure(u, true) {
				s.setFull(false, u)
				return
			}
		}
	}
	s.setFull(true, u)
}

// evictStep deletes the data of the episodes in evict (already marked in
// recs) and the uncovered timeline, and counts what it freed.
func (s *Store) evictStep(recs, evict []episodeRec, now int64, reason string, compact bool) {
	var extra spans
	var streams []string
	for _, r := range evict {
		from, to := r.E.Window(maxTime)
		extra = append(extra, span{from, to})
		streams = append(streams, r.E.Streams...)
	}
	plan := s.planLocked(recs, now, extra, streams)
	plan.marks = evict
	before := s.dbBytes() + s.segBytes()
	b := s.db.NewBatch()
	defer b.Close()
	if _, err := s.applyPlanLocked(b, plan, compact); err != nil {
		s.log.Error("eviction failed", "reason", reason, "err", err)
		return
	}
	freed := before - (s.dbBytes() + s.segBytes())
	for _, r := range evict {
		s.m.evictions.WithLabelValues(r.EvictReason).Inc()
		s.log.Info("evicted episode data", "episode", r.E.ID, "state", r.E.State, "reason", r.EvictReason)
	}
	if freed > 0 {
		s.m.evictedBytes.WithLabelValues(reason).Add(float64(freed))
		if len(evict) == 0 {
			s.m.evictions.WithLabelValues(reason).Inc()
		}
	}
}

// pressure reports whether the store is over its quota or the filesystem
// below MinFree. When relieving (evicting under pressure) it aims 5% lower,
// so that one eviction is not immediately followed by the next.
func (s *Store) pressure(u Usage, relieving bool) bool {
	quota, minFree := u.Quota, u.MinFree
	if relieving || s.full.Load() {
		quota -= int64(float64(quota) * s.hysteresis)
		minFree += int64(float64(minFree) * s.hysteresis)
	}
	return (quota > 0 && u.Bytes > quota) || (minFree > 0 && u.Free < minFree)
}

func (s *Store) setFull(full bool, u Usage) {
	if s.full.Swap(full) == full {
		return
	}
	if full {
		s.m.full.Set(1)
		s.log.Error("storage full: refusing new samples (policy "+s.opts.FullPolicy+")",
			"bytes", u.Bytes, "quota", u.Quota, "free", u.Free, "min_free", u.MinFree)
	} else {
		s.m.full.Set(0)
		s.log.Info("storage no longer full; accepting samples", "bytes", u.Bytes, "free", u.Free)
	}
}

// Usage is the store's space report, for /v1/status.
type Usage struct {
	// Bytes is the store's size on disk: Pebble plus segment files.
	Bytes        int64 `json:"bytes"`
	DBBytes      int64 `json:"db_bytes"`
	SegmentBytes int64 `json:"segment_bytes"`
	Segments     int   `json:"segments"`
	Quota        int64 `json:"quota"`
	// Free is the space available to the daemon on the filesystem.
	Free    int64 `json:"free"`
	MinFree int64 `json:"min_free"`
	// Full is true while new samples are refused.
	Full   bool     `json:"full"`
	Alarms []string `json:"alarms,omitempty"`
}

// Usage returns the current space report.
func (s *Store) Usage() Usage {
	if s.closed.Load() {
		s.usage.Lock()
		defer s.usage.Unlock()
		return s.usage.u
	}
	return s.refreshUsage()
}

// dbBytes is the space Pebble's directory really occupies: allocated
// blocks, which include WAL preallocation that Pebble's own
// DiskSpaceUsage does not count.
func (s *Store) dbBytes() int64 {
	var n int64
	dir := filepath.Join(s.dir, "db")
	entries, err := os.ReadDir(dir)
	if err != nil {
		s.log.Error("measure store", "dir", dir, "err", err)
		return int64(s.db.Metrics().DiskSpaceUsage())
	}
	for _, e := range entries {
		var st syscall.Stat_t
		if syscall.Lstat(filepath.Join(dir, e.Name()), &st) == nil {
			n += st.Blocks * 512
		}
	}
	return n
}

// segBytes reads the published segment totals; it never waits for a
// commit (which holds segMu, possibly through a Pebble write stall).
func (s *Store) segBytes() int64 {
	if st := s.segStats.Load(); st != nil {
		return st.(segStats).bytes
	}
	return 0
}

func (s *Store) refreshUsage() Usage {
	u := Usage{DBBytes: s.dbBytes(), Quota: s.opts.Quota, MinFree: max(s.opts.MinFree, 0), Full: s.full.Load()}
	if st := s.segStats.Load(); st != nil {
		u.SegmentBytes, u.Segments = st.(segStats).bytes, st.(segStats).count
	}
	u.Bytes = u.DBBytes + u.SegmentBytes
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err == nil {
		u.Free = int64(st.Bavail) * int64(st.Bsize)
	} else {
		s.log.Error("statfs", "dir", s.dir, "err", err)
	}
	if u.Full {
		u.Alarms = append(u.Alarms, fmt.Sprintf("episoded_storage_full: store refuses new samples (%d of %d bytes used, %d free, policy %s)",
			u.Bytes, u.Quota, u.Free, s.opts.FullPolicy))
	}
	if u.MinFree > 0 && u.Free < u.MinFree {
		u.Alarms = append(u.Alarms, fmt.Sprintf("low_disk_space: %d bytes free, below min_free %d", u.Free, u.MinFree))
	}
	s.m.diskBytes.Set(float64(u.Bytes))
	s.m.freeBytes.Set(float64(u.Free))
	s.usage.Lock()
	s.usage.u = u
	s.usage.Unlock()
	return u
}

// spaceSlack is how many bytes may be written between space checks before
// a check is forced.
func (s *Store) spaceSlack() int64 {
	slack := int64(32 << 20)
	if s.opts.Quota > 0 {
		slack = min(slack, s.opts.Quota/20)
	}
	if s.opts.MinFree > 0 {
		slack = min(slack, s.opts.MinFree/4)
	}
	return max(slack, 1)
}
