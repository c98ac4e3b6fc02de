package storage

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// planLocked computes what to delete: timeline older than the pre-roll
// horizon on the streams that have some (timelineTracker), plus extra on
// extraStreams, minus what live episodes cover. It does no I/O per stream:
// an idle pass, with the horizon where it was, plans nothing. Called with
// recMu held.
func (s *Store) planLocked(live []episodeRec, now int64, extra spans, extraStreams []string) evictPlan {
	// The horizon moves in steps of one segment slice, so that a pass
	// every second does not write a range tombstone every second.
	horizon := now - int64(s.opts.TimelineRetention)
	horizon -= ((horizon % int64(s.opts.SegmentSlice)) + int64(s.opts.SegmentSlice)) % int64(s.opts.SegmentSlice)
	streams := s.tl.due(horizon)
	plan := evictPlan{del: make(map[string]spans)}
	if len(streams) == 0 && len(extraStreams) == 0 {
		return plan
	}
	prot := coverage(live)
	s.keepKeyframes(prot) // video: a window's pre-roll reaches back to its keyframe
	streams = append(streams, extraStreams...)
	slices.Sort(streams)
	streams = slices.Compact(streams)
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
// bytes freed. Called with recMu held (it takes segMu itself).
func (s *Store) applyPlanLocked(b *pebble.Batch, plan evictPlan, compactNow bool) (int64, error) {
	type rng struct{ lo, hi []byte }
	var compact []rng
	holes := make(map[uint64]spans) // byte ranges of deleted segment payloads
	for st, del := range plan.del {
		for _, x := range del {
			lo, hi := sampleRangeBounds(st, x.from, x.to)
			has, err := s.scanDeleted(lo, hi, holes)
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
		n := r.Size - s.segMu.punched[id]
		delete(s.segMu.punched, id)
		s.segMu.bytes -= n
		freed += n
		if err := s.fs.Remove(s.segPath(id)); err != nil && !os.IsNotExist(err) {
			s.log.Error("eviction: remove segment", "segment", id, "err", err)
		}
	}
	s.segStats.Store(segStats{s.segMu.bytes, len(s.segMu.segs)})
	s.segMu.Unlock()
	freed += s.punchLocked(holes)
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

// scanDeleted reports whether [lo, hi) holds samples, and adds the byte
// ranges of their segment payloads to holes.
func (s *Store) scanDeleted(lo, hi []byte, holes map[uint64]spans) (bool, error) {
	s.watchIters.Add(1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return false, err
	}
	has := false
	var rec sampleRec
	for it.First(); it.Valid(); it.Next() {
		has = true
		v, err := it.ValueAndErr()
		if err != nil {
			continue
		}
		rec = sampleRec{}
		if unmarshal(v, &rec) != nil || rec.Seg == 0 || rec.Len == 0 {
			continue
		}
		holes[rec.Seg] = append(holes[rec.Seg], span{rec.Off, rec.Off + int64(rec.Len) - 1})
	}
	return has, it.Close()
}

// punchLocked frees the disk blocks of deleted payloads in segments that stay
// because part of their span is still live (an episode's window rarely
// covers whole segment slices): fallocate(PUNCH_HOLE) keeps the offsets of
// the live samples and gives the blocks back, so that eviction and
// DeleteEpisode free what du shows. Where the filesystem cannot punch
// holes the bytes stay until the segment goes. The I/O runs without segMu
// (commits only append past the punched ranges; the caller holds recMu,
// so no eviction unlinks the segment meanwhile); segMu is taken to
// account. It returns the bytes freed.
func (s *Store) punchLocked(holes map[uint64]spans) int64 {
	var freed int64
	for id, hs := range holes {
		f, err := os.OpenFile(s.segPath(id), os.O_WRONLY, 0)
		if err != nil {
			if !os.IsNotExist(err) { // unlinked: nothing to punch
				s.log.Warn("eviction: open segment to free deleted payloads", "segment", id, "err", err)
			}
			continue
		}
		before := allocated(f)
		for _, h := range hs.normalize() {
			if err := syscall.Fallocate(int(f.Fd()), fallocPunchHole|fallocKeepSize, h.from, h.to-h.from+1); err != nil {
				s.log.Debug("eviction: punch hole", "segment", id, "err", err)
				break
			}
		}
		after := allocated(f)
		f.Close()
		s.segMu.Lock()
		if r := s.segMu.segs[id]; r != nil {
			if n := min(before-after, r.Size-s.segMu.punched[id]); n > 0 {
				s.segMu.punched[id] += n
				s.segMu.bytes -= n
				freed += n
				s.segStats.Store(segStats{s.segMu.bytes, len(s.segMu.segs)})
			}
		}
		s.segMu.Unlock()
	}
	return freed
}

const (
	fallocKeepSize  = 0x01 // FALLOC_FL_KEEP_SIZE
	fallocPunchHole = 0x02 // FALLOC_FL_PUNCH_HOLE
)

// allocated is the disk space a file's blocks take.
func allocated(f *os.File) int64 {
	var st syscall.Stat_t
	if syscall.Fstat(int(f.Fd()), &st) != nil {
		return 0
	}
	return st.Blocks * 512
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

// checkSpace enforces retention and the limits, in the documented order.
func (s *Store) checkSpace() {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	if s.closed.Load() {
		return
	}
	// Pebble's memory outside the Go heap, for the RSS benchmark and
	// whoever watches the daemon's memory (docs/BENCHMARKS.md).
	pm := s.db.Metrics()
	s.m.memtableBytes.Set(float64(pm.MemTable.Size + pm.MemTable.ZombieSize))
	s.m.cacheBytes.Set(float64(pm.BlockCache.Size))
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
	u := s.measure()
	s.evictStep(recs, expired, now, "timeline", s.pressure(u, false))

	u = s.measure()
	if s.enospc.refusing() {
		u = s.recoverSpace(u)
	}
	if !s.pressure(u, false) {
		s.settle(u)
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
			u = s.measure()
			if !s.pressure(u, true) {
				s.settle(u)
				return
			}
		}
	}
	s.settle(u)
}

// measure refreshes the usage for a decision: bytes committed since the
// last measurement are forgotten first (they are on disk when measured),
// so the estimate never misses a commit.
func (s *Store) measure() Usage {
	s.estimate.Store(0)
	return s.refreshUsage()
}

// recoverSpace runs while the store is refusing samples after ENOSPC: once
// the filesystem has room for the ballast again (on top of min_free and
// the WAL reserve), it recreates the ballast and accepts samples again.
// It clears only the ENOSPC it saw before restoring the ballast: Pebble may
// meet ENOSPC again meanwhile and release the ballast just restored, and
// then the store keeps refusing until the next pass restores it again.
func (s *Store) recoverSpace(u Usage) Usage {
	seen := s.enospc.latest()
	if u.Free-u.MinFree-s.reserve(u) < s.spaceSlack() {
		return u
	}
	if !s.ensureBallast() {
		return u
	}
	if !s.enospc.clear(seen) {
		s.log.Warn("disk full (ENOSPC) again while the ballast was restored: still refusing samples")
		return u
	}
	s.log.Info("disk space is back: ballast restored, accepting samples", "free", u.Free)
	return s.measure()
}

// settle publishes whether the store is full: at its limit (less room
// than the slack between two checks: most samples are refused), out of
// disk (ENOSPC), or failed. Append itself refuses by the room, not by this
// flag.
func (s *Store) settle(u Usage) {
	full := u.Room < s.spaceSlack() || s.enospc.refusing() || s.failed.Load()
	s.setFull(full, u)
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
	before := s.storeBytes()
	b := s.db.NewBatch()
	defer b.Close()
	if _, err := s.applyPlanLocked(b, plan, compact); err != nil {
		s.log.Error("eviction failed", "reason", reason, "err", err)
		return
	}
	freed := before - s.storeBytes()
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

// pressure reports whether the room left before a limit (quota, min_free,
// the disk itself) is below the eviction margin. When relieving (evicting
// under pressure) it aims for twice the margin, so that one eviction is
// not immediately followed by the next. Samples are refused only when the
// room is used up (Append), never because of the margin.
func (s *Store) pressure(u Usage, relieving bool) bool {
	margin := max(s.spaceSlack(), int64(float64(s.capacity)*s.hysteresis))
	if relieving {
		margin *= 2
	}
	return u.Room < margin
}

func (s *Store) setFull(full bool, u Usage) {
	if s.full.Swap(full) == full {
		return
	}
	// A store at its limit goes full and back as retention frees a little
	// room: log the transitions at most once a minute, at debug level in
	// between (the metric and the alarm follow every transition).
	level := slog.LevelDebug
	if now := time.Now().UnixNano(); now-s.fullLogged.Load() > int64(time.Minute) {
		s.fullLogged.Store(now)
		level = slog.LevelInfo
		if full {
			level = slog.LevelError
		}
	}
	if full {
		s.m.full.Set(1)
		s.log.Log(context.Background(), level, "storage full: refusing new samples (policy "+s.opts.FullPolicy+")",
			"bytes", u.Bytes, "quota", u.Quota, "free", u.Free, "min_free", u.MinFree, "room", u.Room)
	} else {
		s.m.full.Set(0)
		s.log.Log(context.Background(), level, "storage no longer full; accepting samples", "bytes", u.Bytes, "free", u.Free, "room", u.Room)
	}
}

// Usage is the store's space report, for /v1/status.
type Usage struct {
	// Bytes is the store's size on disk (what du shows): Pebble, segment
	// files and the ballast.
	Bytes        int64 `json:"bytes"`
	DBBytes      int64 `json:"db_bytes"`
	SegmentBytes int64 `json:"segment_bytes"`
	Segments     int   `json:"segments"`
	// WALBytes is the part of DBBytes in Pebble's WAL files (live and
	// recycled); BallastBytes the ENOSPC ballast.
	WALBytes     int64 `json:"wal_bytes"`
	BallastBytes int64 `json:"ballast_bytes"`
	// Overhead is the fixed overhead the store reserves: WAL files at
	// their most, manifest, ballast (see FixedOverhead).
	Overhead int64 `json:"overhead"`
	Quota    int64 `json:"quota"`
	// Free is the space available to the daemon on the filesystem.
	Free    int64 `json:"free"`
	MinFree int64 `json:"min_free"`
	// Room is how many bytes of samples the store accepts before a limit
	// (quota, min_free, the disk), after reserving the overhead not yet
	// allocated.
	Room int64 `json:"room"`
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
// DiskSpaceUsage does not count. wal is the part in WAL files.
func (s *Store) dbBytes() (total, wal int64) {
	dir := filepath.Join(s.dir, "db")
	entries, err := os.ReadDir(dir)
	if err != nil {
		s.log.Error("measure store", "dir", dir, "err", err)
		return int64(s.db.Metrics().DiskSpaceUsage()), 0
	}
	for _, e := range entries {
		var st syscall.Stat_t
		if syscall.Lstat(filepath.Join(dir, e.Name()), &st) == nil {
			total += st.Blocks * 512
			if strings.HasSuffix(e.Name(), ".log") {
				wal += st.Blocks * 512
			}
		}
	}
	return total, wal
}

// storeBytes is the store's size on disk.
func (s *Store) storeBytes() int64 {
	db, _ := s.dbBytes()
	return db + s.segBytes() + s.ballastBytes()
}

func (s *Store) ballastBytes() int64 {
	var st syscall.Stat_t
	if syscall.Lstat(s.ballastPath(), &st) != nil {
		return 0
	}
	return st.Blocks * 512
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
	u := Usage{Quota: s.opts.Quota, MinFree: s.opts.MinFree, Overhead: overheadFor(s.opts.MemTableSize),
		Full: s.full.Load() || s.failed.Load() || s.enospc.refusing()}
	u.DBBytes, u.WALBytes = s.dbBytes()
	u.BallastBytes = s.ballastBytes()
	if st := s.segStats.Load(); st != nil {
		u.SegmentBytes, u.Segments = st.(segStats).bytes, st.(segStats).count
	}
	u.Bytes = u.DBBytes + u.SegmentBytes + u.BallastBytes
	if _, avail, err := fsSize(s.dir); err == nil {
		u.Free = avail
	} else {
		s.log.Error("statfs", "dir", s.dir, "err", err)
	}
	// The room: what the limits leave after reserving the WAL space Pebble
	// may still allocate and a missing ballast.
	reserve := s.reserve(u)
	u.Room = u.Free - u.MinFree - reserve
	if u.Quota > 0 {
		u.Room = min(u.Room, u.Quota-u.Bytes-reserve)
	}
	s.room.Store(u.Room)
	if u.Full {
		u.Alarms = append(u.Alarms, fmt.Sprintf("episoded_storage_full: store refuses new samples (%s used of quota %s, %s free, min_free %s, policy %s)",
			FormatSize(u.Bytes), FormatSize(u.Quota), FormatSize(u.Free), FormatSize(u.MinFree), s.opts.FullPolicy))
	}
	if u.MinFree > 0 && u.Free < u.MinFree {
		u.Alarms = append(u.Alarms, fmt.Sprintf("low_disk_space: %s free, below min_free %s", FormatSize(u.Free), FormatSize(u.MinFree)))
	}
	if s.enospc.refusing() {
		u.Alarms = append(u.Alarms, "disk_full: the filesystem returned ENOSPC; samples are refused until space returns")
	}
	if p := s.bgErr.Load(); p != nil {
		u.Alarms = append(u.Alarms, "storage_background_error: "+*p)
	}
	if s.failed.Load() {
		u.Alarms = append(u.Alarms, "storage_failed: Pebble reported a fatal error on the commit path; restart episoded")
	}
	s.m.diskBytes.Set(float64(u.Bytes))
	s.m.freeBytes.Set(float64(u.Free))
	s.usage.Lock()
	s.usage.u = u
	s.usage.Unlock()
	return u
}

// reserve is the overhead not allocated yet: WAL space Pebble may still
// take, and the ballast while it is missing.
func (s *Store) reserve(u Usage) int64 {
	return max(0, walBound(s.opts.MemTableSize)-u.WALBytes) + max(0, ballastSize(s.opts.MemTableSize)-u.BallastBytes)
}

// spaceSlack is how many bytes may be written between space checks before
// a check is forced: 1/40 of the capacity, between 1 MiB and 32 MiB.
func (s *Store) spaceSlack() int64 {
	return min(max(s.capacity/40, 1<<20), 32<<20)
}
