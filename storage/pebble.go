package storage

import (
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// pebbleFormat is the Pebble on-disk format this build writes. It is set
// explicitly (never FormatNewest) so that upgrading the library does not
// silently ratchet the format of existing stores. FormatValueSeparation is
// the first format that supports blob files.
const pebbleFormat = pebble.FormatValueSeparation

// pebbleOptions are tuned for a write-heavy mix: a steady stream of small
// (100–500 B) telemetry records plus the index entries of large frames,
// which live in segment files (see package doc). With SegmentThreshold < 0
// large values go into Pebble itself and are separated into blob files.
func (s *Store) pebbleOptions() *pebble.Options {
	o := &pebble.Options{
		FormatMajorVersion: pebbleFormat,
		// Memtables sized from the store's capacity (space.go), up to
		// 8 MiB: ~0.1 s of 300k small records/s, about a minute of the
		// usual mix, since frames go to segment files. They live outside
		// the Go heap and count in the daemon's RSS (space.go). Two queued
		// memtables before Pebble stalls writes (a stall makes Append
		// block and then report ErrOverloaded). Both figures bound the
		// fixed disk overhead: WAL files are preallocated to 110% of the
		// memtable and up to MemTableStopWritesThreshold+1 are recycled.
		MemTableSize:                uint64(s.opts.MemTableSize),
		MemTableStopWritesThreshold: memTableStop,
		MaxManifestFileSize:         maxManifestBytes,
		// Pebble's writes go through OnDiskFull: on ENOSPC the ballast is
		// released and the write retried once, so that a full disk does
		// not make a WAL or MANIFEST write fatal.
		FS: vfs.OnDiskFull(s.fs, s.onDiskFull),
		// L0 is compacted into Lbase only once 32 sublevels (flushes)
		// have piled up, not Pebble's 4. Keys are stream-first, so every
		// flushed file spans all streams and overlaps all of Lbase: each
		// L0->Lbase compaction rewrites Lbase whole, and waiting for 32
		// flushes does that an eighth as often. Compactions were over
		// half of the CPU a small record costs (docs/benchmarks/storage.md):
		// 16 sublevels (wave 4) cut the CPU per record by ~20%, 32
		// (wave 5) by another 15-18% at 7.5M records. Reads merge up to
		// 32 L0 sublevels: BenchmarkMergeSmall read 602k records/s in
		// wave 5's table run against 687k in wave 4's (16), a cost paid
		// by exports and reports, not by recording. Writes stop only at
		// 64 sublevels (a write stall is a commit-tail event; see
		// BenchmarkCommitTail).
		L0CompactionThreshold: 32,
		L0StopWritesThreshold: 64,
		// Larger L0 files and a larger Lbase keep compaction write
		// amplification down for an append-mostly, time-ordered keyspace.
		LBaseMaxBytes: 256 << 20,
		// Smooth out sstable writes so that a flush does not stall WAL fsyncs.
		BytesPerSync: 1 << 20,
		// The block cache is resident memory too; the daemon reads
		// sstables sequentially (exports, reports from the index), so a
		// small cache loses little.
		CacheSize:    8 << 20,
		MaxOpenFiles: 1024,
		// Two cores on a typical gateway: at most two compactions.
		CompactionConcurrencyRange: func() (int, int) { return 1, 2 },
		// Eviction compacts deleted ranges itself when space is needed;
		// otherwise range tombstones flush with the memtable.
		Logger:        pebbleLogger{s.log.With("sub", "pebble")},
		EventListener: s.eventListener(),
	}
	o.TargetFileSizes[0] = 8 << 20
	for i := range o.Levels {
		// Fastest compression: telemetry JSON still compresses well, and
		// incompressible frame data costs little CPU.
		o.Levels[i].Compression = func() *sstable.CompressionProfile { return sstable.FastestCompression }
		o.Levels[i].BlockSize = 32 << 10
	}
	o.Experimental.ValueSeparationPolicy = func() pebble.ValueSeparationPolicy {
		return pebble.ValueSeparationPolicy{
			Enabled: true,
			// Small telemetry stays inline in sstables; anything from
			// 1 KiB up (frames when SegmentThreshold < 0, mid-size
			// messages) goes to blob files and is not rewritten by every
			// compaction.
			MinimumSize:           1024,
			MaxBlobReferenceDepth: 10,
			RewriteMinimumAge:     5 * time.Minute,
			TargetGarbageRatio:    0.2,
		}
	}
	return o
}

func (s *Store) eventListener() *pebble.EventListener {
	var stallStart time.Time
	return &pebble.EventListener{
		BackgroundError: func(err error) {
			msg := err.Error()
			s.bgErr.Store(&msg)
			s.m.backgroundErrors.Inc()
			if isENOSPC(err) {
				s.enospc.report()
				s.kick(s.kickWatch)
			}
			s.log.Error("pebble background error", "err", err)
		},
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			s.log.Error("pebble data corruption", "info", info.String())
		},
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
			stallStart = time.Now()
			s.m.stalls.Inc()
			s.log.Warn("pebble write stall", "reason", info.Reason)
		},
		WriteStallEnd: func() {
			if !stallStart.IsZero() {
				s.m.stallSeconds.Add(time.Since(stallStart).Seconds())
			}
		},
		CompactionEnd: func(info pebble.CompactionInfo) {
			s.m.compactions.Inc()
			if info.Err == nil {
				s.bgErr.Store(nil)
			}
		},
		FlushEnd: func(info pebble.FlushInfo) {
			s.m.flushes.Inc()
			if info.Err == nil {
				s.bgErr.Store(nil)
			}
		},
		DiskSlow: func(info pebble.DiskSlowInfo) {
			s.log.Warn("slow disk", "info", info.String())
		},
	}
}
