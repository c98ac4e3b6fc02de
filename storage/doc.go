// Package storage is episoded's durable store: every sample lands here as
// a continuous per-stream timeline, episodes are windows over it, and
// upload state lives next to them.
//
// # Layout
//
// A store is a directory holding a marker file EPISODED ("episoded-store",
// "format N"), a Pebble database in db/ and segment files in seg/. Open
// initialises a missing or empty directory, refuses a non-empty one without
// the marker (ErrNotStore) and a store written by a newer format
// (ErrNewerFormat). Pebble (github.com/cockroachdb/pebble/v2) runs at an
// explicit FormatMajorVersion (FormatValueSeparation) with value separation
// on (values of 1 KiB and more go to blob files).
//
// Records are CBOR (fxamacker/cbor/v2, core deterministic encoding), each
// with a version field; timestamps are int64 ns, never CBOR time tags.
// Format 2 added the presentation offset to sample records (their key time
// is the decode time, so a stream's key order is the order the device sent
// it); format 1 records are still read. Video reads start at a keyframe
// (VideoStart, MergeFrom in video.go), and eviction keeps the keyframe a
// covered window's video starts at.
// Keys, one prefix byte per record kind:
//
//	s stream 0x00 BE(t^signbit) BE(seq) -> sample record (inline payload or segment reference)
//	d stream 0x00 BE(version)           -> stream descriptor version
//	e episode-id                        -> episode (+ whether its data was evicted)
//	u episode-id                        -> upload state
//	g BE(segment-id)                    -> segment: stream, slice, min/max T, committed size
//	m "format"                          -> store format record
//
// One stream's time range is one contiguous key range, so expiry is a
// DeleteRange.
//
// # Large payloads: segment files
//
// Payloads of SegmentThreshold (4 KiB) or more — video frames, lidar — are
// not written to Pebble: with Pebble alone every byte is written twice
// (WAL, then flush), which caps 100 KB frames near half the disk's
// bandwidth. They go to append-only segment files, one per stream per time
// slice (SegmentSlice, 10 s, or SegmentMaxBytes, 64 MiB). Pebble holds the
// index entry (stream, t, seq -> segment, offset, length, CRC-32C, flags)
// and every small payload. See docs/benchmarks/storage.md for the numbers
// behind this choice.
//
// # Pebble tuning
//
// The write mix is 50–500 KB frames (which go to segment files, so Pebble
// sees only ~60 B index entries for them) plus 100–500 B telemetry records
// at up to ~100k/s. Options (pebble.go):
//
//   - FormatMajorVersion FormatValueSeparation, explicit, so a library
//     upgrade never ratchets the on-disk format by itself;
//   - value separation on, MinimumSize 1 KiB: mid-size and (with
//     SegmentThreshold < 0) large values go to blob files that compactions
//     do not rewrite; 100–500 B telemetry stays inline;
//   - memtables sized from the capacity (MemTableSize: capacity/128,
//     2–8 MiB), 2 queued before Pebble stalls writes; each commit is
//     split into batches of at most min(4 MiB, MemTableSize/4), because a
//     batch larger than half a memtable becomes its own flushable and
//     forces a flush per commit;
//   - L0 compaction at 32 sublevels, stop at 64, Lbase 256 MiB, 8 MiB L0
//     files: fewer, larger compactions for an append-mostly, time-ordered
//     keyspace (stream-first keys make every flushed file overlap all of
//     Lbase, so each L0 compaction rewrites Lbase; see pebble.go);
//   - fastest compression (telemetry JSON still shrinks, frames cost
//     little), 32 KiB blocks, BytesPerSync 1 MiB, at most 2 concurrent
//     compactions (gateways have two cores);
//   - a commit's batches are applied in order and the last one syncs the
//     WAL (one fsync per commit).
//
// # Space accounting
//
// The store's bytes are what du shows in its directory: Pebble (sstables,
// blob files, WAL, MANIFEST), segment files and the ballast. Beyond its
// data it keeps a fixed overhead that eviction cannot free (space.go,
// FixedOverhead): up to 6 WAL files of 1.1 × MemTableSize (3 live, 3
// recycled; Pebble preallocates them), the MANIFEST (rolled at 2 MiB), and
// a ballast of 2 × MemTableSize (at least 4 MiB) that is deleted the
// moment one of Pebble's writes meets ENOSPC (vfs.OnDiskFull), so that
// Pebble's WAL and MANIFEST writes, which it treats as fatal, succeed on
// their retry. 22 MiB for a store below 512 MiB, 74 MiB from 1 GiB.
// CheckQuota (config check) refuses a quota that leaves less than 32 MiB
// beyond it; Open refuses a MinFree or Quota the filesystem cannot hold.
//
// # Lifecycle and durability
//
// Open starts nothing of ours. Run runs the commit loop and the space
// watcher until its context is cancelled (or Close), then commits what is
// pending and returns. Close stops Run, commits, and closes Pebble.
//
// Append only queues: inline samples are encoded into the pending Pebble
// batch under a mutex; large payloads are referenced (the store owns the
// slice). Every SyncInterval (100 ms), or as soon as CommitBytes (16 MiB)
// are pending, the commit loop writes the queued payloads to their
// segments, fdatasyncs every segment it touched (and the segment directory
// when a segment was created), then applies the pending Pebble batches —
// inline samples, index entries of the segment payloads, the segments' new
// committed sizes — in Append order, the last one with a WAL fsync. Only
// then are the producers' done callbacks called, from the commit goroutine
// (Close's, for the final commit after Run); MQTT acks wait for them.
//
// What a crash (process kill or power loss) can lose: exactly the samples
// whose done callback had not yet been called with nil — at most
// SyncInterval worth of samples plus the commit in flight (bounded by
// MaxPending). All samples of one Append call are in one Pebble batch, so
// after a restart each Append is entirely present or entirely absent, and
// what survives of the commit in flight is a prefix of its Appends in
// queue order: a stream's seq has no holes up to its last sample
// (LastSample). Segment bytes written by a commit that did not reach
// Pebble are truncated on open; segment files no record references are
// removed.
//
// Readers (Range, Merge, LastSample) can see the samples of the commit in
// flight a few milliseconds before its fsync completes (Pebble makes a
// batch visible before its WAL sync); the done callback is the durability
// signal. After a restart everything visible is durable.
//
// # Backpressure
//
// Queued bytes (pending plus the commit in flight) are bounded by
// MaxPending. When the disk is slow or Pebble stalls writes (memtables or
// L0 full), commits slow down, the queue fills and Append blocks for at
// most AppendTimeout, then returns ErrOverloaded. Nothing is buffered
// without limit.
//
// # Retention, quota, and what happens when full
//
// Each space check measures the store (allocated blocks) and the
// filesystem (statfs) and computes the room: the bytes of samples that fit
// before the quota, MinFree or the disk itself, less the overhead not yet
// allocated (WAL space Pebble may still take, a missing ballast). Append
// refuses (ErrFull) a call whose bytes, plus those committed since the
// check and those queued or in flight, exceed the room: MinFree and Quota
// are hard limits, not targets. Nothing else latches: once eviction, a
// delete or files removed by someone else make room, the next check (every
// WatchInterval, at once after DeleteEpisode) lets samples in.
//
// The space watcher runs every WatchInterval (and early when a burst of
// writes may have used the room). A pass does no I/O per stream: retention
// sweeps only when the pre-roll horizon moves (once per SegmentSlice) or a
// sample older than it was committed, and then only the streams with data
// below it (timelineTracker). It evicts in this order:
//
//  1. timeline no live episode covers, older than TimelineRetention (the
//     pre-roll horizon) — always;
//  2. uploaded episodes whose Updated is older than Retention, oldest
//     first — always;
//
// then, only while the room is below the eviction margin (5% of the
// capacity: the quota, or the filesystem less MinFree), aiming for twice
// the margin:
//
//  3. uploaded episodes still within Retention, oldest first: their data
//     is safe in object storage, and keeping a local copy is not worth
//     refusing new data (an addition to the order in the issue);
//  4. episodes not yet uploaded, per FullPolicy: "reject-new" (default)
//     evicts none of them: the store refuses samples while there is no
//     room, sets episoded_storage_full to 1 and reports an alarm in Usage;
//     "evict-oldest" evicts finished, not-uploaded episodes oldest first,
//     logging a warning for each. Recording and uploading episodes are
//     never evicted.
//
// An episode covers [Start-Preroll, Stop+Postroll] on each of its streams
// (to the end of time while Stop is 0). Eviction deletes the uncovered
// index ranges with DeleteRange, unlinks segments lying entirely inside
// them, and punches holes (fallocate PUNCH_HOLE) over the deleted payloads
// of segments that stay, so that du drops even when an episode's window
// covers no whole segment slice. Under pressure, and for DeleteEpisode, it also compacts the deleted
// ranges so that Pebble's space is reclaimed at once; otherwise Pebble's
// own compactions drop the data. The horizon moves in SegmentSlice steps,
// so an idle pass writes no tombstone. An evicted episode's record is kept;
// Evicted reports when and why its data went. Small records (episodes,
// descriptors, upload state) are still accepted while full, so uploads can
// finish and free space.
//
// # Faults: ENOSPC and I/O errors
//
// Segment files and Pebble go through Options.FS (a pebble vfs.FS, so
// tests inject faults with errorfs). A failed segment write or fsync fails
// the commit: its producers' done callbacks get the error (nothing of it
// was reported durable; MQTT messages are not acknowledged and are
// redelivered), the bytes written are cut off again, and the next commit
// starts a new segment. ENOSPC from a segment or from Pebble (its writes,
// or a background flush or compaction, reported through EventListener)
// makes the store refuse samples and raise the disk_full alarm; Pebble's
// background errors also show as storage_background_error. The watcher
// restores the ballast and takes samples again once statfs shows the
// space is back. Should Pebble still fail on the commit path (it calls
// Fatalf), the store turns the panic into ErrFailed: it keeps serving
// reads and refuses samples until restarted; the daemon stays up. A fatal
// error in Pebble's own background work (a MANIFEST write that fails even
// after the ballast went, or an I/O error there) still exits the process,
// as Pebble requires; systemd restarts it and nothing reported durable is
// lost. Compactions run on Pebble's schedule and may briefly take more
// space than the room accounts for (their output exists next to their
// input until they finish); the eviction margin absorbs that.
package storage
