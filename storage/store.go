package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
)

// Sentinel errors. Match with errors.Is.
var (
	ErrClosed      = errors.New("storage: closed")
	ErrOverloaded  = errors.New("storage: overloaded, writes are stalled")
	ErrFull        = errors.New("storage: full, not accepting new samples")
	ErrNotFound    = errors.New("storage: not found")
	ErrNewerFormat = errors.New("storage: written by a newer format")
	ErrNotStore    = errors.New("storage: not an episoded store")
	ErrCorrupt     = errors.New("storage: corrupt record")
	ErrInvalid     = errors.New("storage: invalid argument")
	// ErrFailed: Pebble reported a fatal error on the commit path; the store
	// keeps serving reads but takes no samples until it is reopened.
	ErrFailed = errors.New("storage: failed, restart required")
)

// Full policies.
const (
	PolicyRejectNew   = "reject-new"
	PolicyEvictOldest = "evict-oldest"
)

// Options configure a Store. Zero values take the documented defaults.
type Options struct {
	// Dir is the store directory. A missing or empty directory is
	// initialised; a non-empty directory without the marker file is refused.
	Dir string
	// SyncInterval is the commit cadence: samples appended are made durable
	// (fsync) at most this long after Append returns. Default 100ms.
	SyncInterval time.Duration
	// Quota caps the store's own bytes on disk; 0 means no quota.
	Quota int64
	// MinFree is kept free on the filesystem: samples are refused before
	// free space would drop below it, counting what is queued and in
	// flight. 0 (or negative) means no floor beyond the store's own ENOSPC
	// reserve. Open fails when it is larger than the filesystem.
	MinFree int64
	// FullPolicy is "reject-new" (default) or "evict-oldest".
	FullPolicy string
	// Retention is how long uploaded episodes are kept locally, measured
	// from their Updated time. Default 7 days.
	Retention time.Duration
	// TimelineRetention is the pre-roll horizon: timeline data no episode
	// covers is dropped once older than this. Default 1 minute.
	TimelineRetention time.Duration
	// AppendTimeout bounds how long Append blocks under backpressure
	// before returning ErrOverloaded. Default 2s.
	AppendTimeout time.Duration
	// MaxPending bounds the bytes queued for commit (including the commit
	// in flight). Append blocks when it would exceed it. Default 256 MiB.
	MaxPending int64
	// CommitBytes starts a commit before SyncInterval has elapsed once this
	// many bytes are pending. Default 16 MiB.
	CommitBytes int64
	// SegmentThreshold: payloads of at least this many bytes go to segment
	// files instead of Pebble. Default 4096. Negative keeps every payload in
	// Pebble (value separation only); used by the benchmark to compare.
	SegmentThreshold int
	// SegmentSlice is the time slice of one segment file (per stream).
	// Default 10s. SegmentMaxBytes rolls a segment earlier. Default 64 MiB.
	SegmentSlice    time.Duration
	SegmentMaxBytes int64
	// MemTableSize is Pebble's memtable size. Default: sized from the
	// capacity (Quota, or the filesystem less MinFree), capacity/128
	// between 2 MiB and 8 MiB. The store's fixed overhead grows with it
	// (see FixedOverhead); it counts against Quota.
	MemTableSize int64
	// FS is the filesystem for Pebble and the segment files; nil means the
	// operating system's. It must be backed by the OS filesystem at Dir
	// (tests wrap vfs.Default with errorfs to inject faults).
	FS vfs.FS
	// WatchInterval is how often the space watcher runs. Default 1s.
	WatchInterval time.Duration
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
	// Now is the wall clock used for retention; nil means time.Now.
	Now func() time.Time
}

// Defaults for Options. internal/config fills the config file's storage
// section from these; docs/CONFIG.md documents them (a test keeps it true).
const (
	DefaultSyncInterval      = 100 * time.Millisecond
	DefaultMinFree           = 1 << 30
	DefaultFullPolicy        = PolicyRejectNew
	DefaultRetention         = 7 * 24 * time.Hour
	DefaultTimelineRetention = time.Minute
	DefaultAppendTimeout     = 2 * time.Second
	DefaultMaxPending        = 256 << 20
	DefaultCommitBytes       = 16 << 20
	DefaultSegmentThreshold  = 4096
	DefaultSegmentSlice      = 10 * time.Second
	DefaultSegmentMaxBytes   = 64 << 20
	DefaultWatchInterval     = time.Second
	// MaxSyncInterval bounds SyncInterval: it is how much acknowledged-to-
	// the-device data a crash may lose, and MQTT acks wait for it.
	MaxSyncInterval = 10 * time.Second
)

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
// MinFree is not defaulted here: 0 means no floor (the config file's
// min_free defaults to DefaultMinFree).
func (o *Options) EnsureDefaults() {
	if o.SyncInterval == 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.MinFree < 0 {
		o.MinFree = 0
	}
	if o.FullPolicy == "" {
		o.FullPolicy = DefaultFullPolicy
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.TimelineRetention == 0 {
		o.TimelineRetention = DefaultTimelineRetention
	}
	if o.AppendTimeout <= 0 {
		o.AppendTimeout = DefaultAppendTimeout
	}
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.CommitBytes <= 0 {
		o.CommitBytes = DefaultCommitBytes
	}
	if o.SegmentThreshold == 0 {
		o.SegmentThreshold = DefaultSegmentThreshold
	}
	if o.SegmentSlice <= 0 {
		o.SegmentSlice = DefaultSegmentSlice
	}
	if o.SegmentMaxBytes <= 0 {
		o.SegmentMaxBytes = DefaultSegmentMaxBytes
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.WatchInterval <= 0 {
		o.WatchInterval = DefaultWatchInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Validate reports every problem with the options in one error (joined
// with errors.Join; each problem starts with the config key it is about).
// It expects EnsureDefaults to have run; Open runs both.
func (o *Options) Validate() error {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("dir: is required"))
	}
	if o.SyncInterval <= 0 || o.SyncInterval > MaxSyncInterval {
		errs = append(errs, fmt.Errorf("sync_interval: must be between 0 and %s (got %s)", MaxSyncInterval, o.SyncInterval))
	}
	if o.Quota < 0 {
		errs = append(errs, fmt.Errorf("quota: %d is negative", o.Quota))
	} else if err := CheckQuota(o.Quota); err != nil {
		errs = append(errs, fmt.Errorf("quota: %w", err))
	}
	switch o.FullPolicy {
	case PolicyRejectNew, PolicyEvictOldest:
	default:
		errs = append(errs, fmt.Errorf("full_policy: %q is not one of %s, %s", o.FullPolicy, PolicyRejectNew, PolicyEvictOldest))
	}
	if o.Retention < 0 {
		errs = append(errs, errors.New("retention: must not be negative"))
	}
	if o.TimelineRetention < 0 {
		errs = append(errs, errors.New("timeline_retention: must not be negative"))
	}
	if o.MaxPending > 0 && o.CommitBytes > o.MaxPending {
		errs = append(errs, fmt.Errorf("commit_bytes: %d exceeds max_pending %d", o.CommitBytes, o.MaxPending))
	}
	return errors.Join(errs...)
}

// Store is the episoded store. It is safe for concurrent use.
type Store struct {
	opts    Options
	log     *slog.Logger
	dir     string
	segDir  string
	db      *pebble.DB
	m       *metrics
	closing chan struct{}
	closed  atomic.Bool
	full    atomic.Bool
	fs      vfs.FS // segment files; Pebble gets it wrapped by vfs.OnDiskFull

	// Space: fsTotal and capacity are measured at Open.
	fsTotal, capacity int64
	// room is how many more bytes of samples the last space check allowed;
	// Append refuses what would exceed it (less estimate and pending bytes).
	room atomic.Int64
	// enospc: the filesystem said ENOSPC (Pebble, via the ballast, or a
	// segment write); samples are refused until the watcher sees space.
	enospc diskFull
	// failed: Pebble's commit path hit a fatal error (ErrFailed).
	failed atomic.Bool
	// watchIters counts the iterators eviction opened (tests check that an
	// idle pass opens none, whatever the number of streams).
	watchIters atomic.Int64
	// fullLogged is when (ns) a full/not-full transition was last logged.
	fullLogged atomic.Int64
	// bgErr is Pebble's last background error (string), cleared by the
	// next successful flush or compaction.
	bgErr atomic.Pointer[string]

	// tl tracks, per stream, the timeline not yet swept by retention
	// (evict.go), so that a watcher pass needs no I/O per stream.
	tl timelineTracker

	// run tracks an active Run.
	run struct {
		sync.Mutex
		active bool
		done   chan struct{} // closed when the active Run returns
	}

	kickCommit chan struct{} // cap 1; full rule: a kick is already pending, drop
	kickWatch  chan struct{} // cap 1; same rule

	// mu guards what Append touches.
	mu struct {
		sync.Mutex
		p       *pending
		bytes   int64         // pending + in flight
		freed   chan struct{} // closed and replaced whenever bytes shrink
		stopped bool          // Run has returned or Close has started
	}

	// commitMu serialises commits (Run's loop, Close, synchronous writes
	// that must not interleave with segment bookkeeping).
	commitMu sync.Mutex

	// segMu guards segment bookkeeping; held by a commit from its first
	// segment write until the Pebble batch indexing it is committed, and by
	// eviction while it seals and removes segments.
	segMu struct {
		sync.Mutex
		active map[string]*segWriter
		segs   map[uint64]*segRec
		nextID uint64
		bytes  int64 // total size of all segment files, less punched holes
		// punched is, per segment, the bytes of deleted payloads whose
		// blocks were given back (evict.go punchLocked).
		punched map[uint64]int64
		created bool // a segment file was created since the last dir fsync
		// pendingTouched are the segments written by the batch being committed.
		pendingTouched map[uint64]*segWriter
		// spareBufs are write buffers of closed segments, for new ones.
		spareBufs []*bufio.Writer
	}

	segStats atomic.Value // segStats, updated under segMu

	// recMu serialises read-modify-write of small records (descriptors,
	// episodes) and eviction decisions.
	recMu sync.Mutex

	// usage caches the last space check for Usage().
	usage struct {
		sync.Mutex
		u Usage
	}
	estimate atomic.Int64 // bytes written since the last space check

	// hysteresis is how far below the limits eviction aims once under
	// pressure (5%; tests with tiny quotas lower it).
	hysteresis float64

	// batchBytes caps one Pebble batch (maxBatchBytes; tests lower it).
	batchBytes int
	// spare holds committed batches for reuse (newBatch, recycleBatch).
	spare struct {
		sync.Mutex
		batches []*pebble.Batch
	}
	// sorter is sortBatch's scratch (commitMu).
	sorter batchSorter
	// testCrashAfter > 0 makes a commit stop after that many Pebble
	// batches, as a crash between them would (tests only).
	testCrashAfter int

	// commitHook, if set before Run, observes each commit's latency
	// (benchmarks).
	commitHook func(time.Duration)
}

const markerName = "EPISODED"

// Open opens or initialises a store. It starts no goroutine of its own
// (Pebble runs its own background compactions); call Run to commit.
func Open(opts Options) (*Store, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("storage options: %w", err)
	}
	s := &Store{
		opts:       opts,
		log:        opts.Logger.With("component", "storage"),
		dir:        opts.Dir,
		segDir:     filepath.Join(opts.Dir, "seg"),
		closing:    make(chan struct{}),
		kickCommit: make(chan struct{}, 1),
		kickWatch:  make(chan struct{}, 1),
		batchBytes: maxBatchBytes,
		hysteresis: 0.05,
	}
	if err := s.sizeForFilesystem(); err != nil {
		return nil, err
	}
	if err := s.checkDir(); err != nil {
		return nil, err
	}
	s.batchBytes = int(min(int64(maxBatchBytes), s.opts.MemTableSize/4))
	s.fs = s.opts.FS
	if !s.ensureBallast() {
		s.enospc.report()
	}
	s.m = newMetrics(opts.Registerer)
	db, err := pebble.Open(filepath.Join(s.dir, "db"), s.pebbleOptions())
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", s.dir, inUse(s.dir, filepath.Join(s.dir, "db", "LOCK"), err))
	}
	s.db = db
	if err := s.checkMeta(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.recoverSegments(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: recover segments: %w", s.dir, err)
	}
	s.mu.p = newPending()
	s.mu.freed = make(chan struct{})
	if err := s.tl.init(s); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", s.dir, err)
	}
	s.m.register(s)
	s.refreshUsage()
	return s, nil
}

// checkDir initialises an empty or missing directory, or checks the marker
// of an existing one.
func (s *Store) checkDir() error {
	marker := filepath.Join(s.dir, markerName)
	data, err := os.ReadFile(marker)
	switch {
	case err == nil:
		return parseMarker(s.dir, data)
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("open store %s: %w", s.dir, err)
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open store %s: %w", s.dir, err)
	}
	// A leftover marker temp file means a crash during initialisation.
	entries = slices.DeleteFunc(entries, func(e os.DirEntry) bool { return e.Name() == markerName+".tmp" })
	if len(entries) > 0 {
		return fmt.Errorf("open store %s: %w: directory is not empty and has no %s marker", s.dir, ErrNotStore, markerName)
	}
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return fmt.Errorf("init store %s: %w", s.dir, err)
	}
	// The marker goes first, so that a crash during initialisation leaves a
	// directory that opens (Pebble initialises an empty db dir).
	content := fmt.Sprintf("%s\nformat %d\n", storeMagic, formatVersion)
	tmp := marker + ".tmp"
	if err := writeFileSync(tmp, []byte(content)); err != nil {
		return fmt.Errorf("init store %s: %w", s.dir, err)
	}
	if err := os.Rename(tmp, marker); err != nil {
		return fmt.Errorf("init store %s: %w", s.dir, err)
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("init store %s: %w", s.dir, err)
	}
	s.log.Info("initialised store", "dir", s.dir, "format", formatVersion)
	return nil
}

func parseMarker(dir string, data []byte) error {
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	if !sc.Scan() || sc.Text() != storeMagic {
		return fmt.Errorf("open store %s: %w: bad %s marker", dir, ErrNotStore, markerName)
	}
	if !sc.Scan() {
		return fmt.Errorf("open store %s: %w: %s marker has no format line", dir, ErrNotStore, markerName)
	}
	v, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "format "))
	if err != nil {
		return fmt.Errorf("open store %s: %w: %s marker: bad format line %q", dir, ErrNotStore, markerName, sc.Text())
	}
	if v > formatVersion {
		return fmt.Errorf("open store %s: %w: store format %d, this build supports up to %d; upgrade episoded", dir, ErrNewerFormat, v, formatVersion)
	}
	return nil
}

func (s *Store) checkMeta() error {
	v, closer, err := s.db.Get(metaKey("format"))
	if errors.Is(err, pebble.ErrNotFound) {
		rec := metaRec{V: formatVersion, Magic: storeMagic, Created: s.opts.Now().UnixNano()}
		b, err := marshal(&rec)
		if err != nil {
			return err
		}
		if err := s.db.Set(metaKey("format"), b, pebble.Sync); err != nil {
			return fmt.Errorf("open store %s: write format record: %w", s.dir, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("open store %s: read format record: %w", s.dir, err)
	}
	defer closer.Close()
	var rec metaRec
	if err := unmarshal(v, &rec); err != nil {
		if errors.Is(err, ErrNewerFormat) {
			return fmt.Errorf("open store %s: %w", s.dir, err)
		}
		return fmt.Errorf("open store %s: %w: format record: %v", s.dir, ErrCorrupt, err)
	}
	if rec.Magic != storeMagic {
		return fmt.Errorf("open store %s: %w: format record magic %q", s.dir, ErrNotStore, rec.Magic)
	}
	return nil
}

// Close commits what is pending, closes segment files and Pebble. If Run is
// active, Close stops it first.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	close(s.closing)
	s.run.Lock()
	active, runDone := s.run.active, s.run.done
	s.run.Unlock()
	if active {
		<-runDone
	}
	s.mu.Lock()
	s.mu.stopped = true
	s.mu.Unlock()
	s.commitMu.Lock()
	err := s.commit()
	s.commitMu.Unlock()
	s.segMu.Lock()
	for _, w := range s.segMu.active {
		if cerr := w.f.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	s.segMu.active = nil
	s.segMu.Unlock()
	if cerr := s.db.Close(); cerr != nil && err == nil {
		err = cerr
	}
	s.m.unregister()
	if err != nil {
		return fmt.Errorf("close store %s: %w", s.dir, err)
	}
	return nil
}

// Run commits pending samples every SyncInterval (or sooner when
// CommitBytes are pending) and watches disk space. It blocks until ctx is
// cancelled or the store is closed; then it commits what is pending and
// returns. Appends made after Run returns get ErrClosed.
func (s *Store) Run(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	s.run.Lock()
	if s.run.active {
		s.run.Unlock()
		return errors.New("storage: Run called twice")
	}
	s.run.active = true
	runDone := make(chan struct{})
	s.run.done = runDone
	s.run.Unlock()
	if s.closed.Load() { // Close raced with the start of Run
		s.run.Lock()
		s.run.active = false
		s.run.Unlock()
		close(runDone)
		return ErrClosed
	}
	defer func() {
		s.run.Lock()
		s.run.active = false
		s.run.Unlock()
		close(runDone)
	}()
	s.mu.Lock()
	s.mu.stopped = false
	s.mu.Unlock()

	watchCtx, cancelWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watch(watchCtx)
	}()

	tick := time.NewTicker(s.opts.SyncInterval)
	defer tick.Stop()
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-s.closing:
			break loop
		case <-tick.C:
		case <-s.kickCommit:
		}
		s.commitMu.Lock()
		if cerr := s.commit(); cerr != nil {
			s.log.Error("commit failed", "err", cerr)
		}
		s.commitMu.Unlock()
	}
	cancelWatch()
	wg.Wait()
	s.mu.Lock()
	s.mu.stopped = true
	s.mu.Unlock()
	s.commitMu.Lock()
	if cerr := s.commit(); cerr != nil {
		err = cerr
	}
	s.commitMu.Unlock()
	return err
}

func writeFileSync(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

const pebbleFatalPrefix = "storage: pebble fatal: "

// pebbleLogger routes Pebble's log lines to slog. Pebble calls Fatalf on
// unrecoverable errors (a failed WAL write) and expects it not to return.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...))
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error("pebble fatal error", "err", msg)
	panic(pebbleFatalPrefix + msg)
}

var _ io.Closer = (*Store)(nil)
