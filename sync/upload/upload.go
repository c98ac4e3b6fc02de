// Package upload moves finished episodes off the gateway into the
// factory's central object store (any S3-compatible endpoint, or a
// directory), off-peak, within a bandwidth budget, resumable and verified.
//
// Design note.
//
// Lifecycle: New validates options and starts nothing. Run(ctx) is the
// daemon loop: it uploads what is due, then sleeps until an episode is
// closed (Wake), a window opens, a backoff expires, or PollInterval passes,
// and returns nil when ctx is cancelled (an in-flight part is abandoned;
// its upload resumes later). RunOnce(ctx) is the one-shot mode for systemd
// timers (`episoded sync run --until-idle`): it uploads what is due and
// returns when nothing more is due. Only one of them runs at a time.
//
// There is no queue channel: the queue is the durable state in the store.
// Each pass lists the episodes and takes those that are finished and not
// yet uploaded (closed, interrupted, or uploading after a restart), in id
// order (ids are UUIDv7, so oldest first), priority ones first. An episode
// is due when its upload window is open or it is a priority episode
// (Episode.Priority, or the PriorityLabel label with any value). One
// episode is uploaded at a time; Concurrency parts of it go in parallel.
//
// Per episode: if manifest.json already exists on the target and its
// objects are there with the recorded sizes, the episode is marked
// uploaded without sending anything (idempotent). Otherwise the episode is
// exported (sync/export, deterministic) to StageDir/<id>.mcap with its
// sha256, and the object state (key, size, sha256, multipart upload id,
// finished parts with their ETags) is kept in the store (UploadState)
// after every part. After a restart or an outage the staged file is
// re-hashed (or re-exported: the bytes are the same) and only the missing
// parts are sent. Each part carries Content-MD5, and its returned ETag is
// checked against it; the completed object is verified with a HEAD (size,
// and the multipart MD5 ETag where the server uses that scheme). Then
// manifest.json (sha256 and size of every object, counts, quality report,
// gateway identity, provenance, Ed25519 signature) is written last, as the
// commit marker, and then the episode's catalog row (sync/catalog) next to
// the other rows of its site and day; see catalog.go.
//
// Layout: <prefix>/<site>/<gateway>/<yyyy>/<mm>/<dd>/<episode-id>/
// episode.mcap and manifest.json, the date from the episode start in UTC.
//
// States: closed/interrupted -> uploading -> uploaded. Transient errors
// (network, 5xx, timeouts) are retried with exponential backoff and jitter
// (RetryMin..RetryMax) while the episode stays uploading; every failed
// attempt is recorded: UploadState.Attempts and LastError (shown by
// Status, `sync status` and the dashboard) and the episode's Reason
// ("attempt 2 of 10 failed, retrying: <op>: <code>: HTTP <status>:
// <server message>"). Terminal errors (403, 400, NoSuchBucket,
// InvalidAccessKeyId, SignatureDoesNotMatch, non-standard 404s for an
// unknown access key such as versitygw's XAdminUserNotFound, a missing or
// read-only target directory) quarantine the episode at once with the
// server's code and message. So do bucket-full and quota errors
// (InsufficientStorage/507, XMinioStorageFull, QuotaExceeded, ...). An
// error the server keeps giving (ServerError: a 500, an unknown code) is
// retried MaxAttempts times in a row, then quarantines the episode with
// it; failures to reach the server at all (connection refused, timeouts,
// 502/503/504) are retried without limit, so that an outage of the
// central store quarantines nothing. Quarantine aborts the episode's
// unfinished multipart upload, so the server keeps no orphan parts (Retry
// starts the object over). A local export failure (corrupt or evicted
// data) marks the episode failed. The episode's data is kept in every
// case; Retry requeues it.
// Once uploaded, storage may evict its data under its retention rules.
//
// Windows (for example "22:00-06:00", in Timezone) are checked before
// every part, when it is about to start (a part slot is free): when a
// window closes, the parts in flight finish, the rest wait for the next
// window. The bandwidth cap is a token bucket shared by
// all parts. All timing (windows, backoff, the token bucket) uses the time
// package directly; the tests run it in a testing/synctest bubble over an
// in-memory S3 (memS3 in the tests), and the real-S3 tests check the wiring.
//
// Files, by job: upload.go (Uploader, New, Wake), options.go (Options,
// defaults, Validate), scheduler.go (Run, RunOnce and its attempt budget,
// the queue, backoff, quarantine, Retry), transfer.go (one episode onto the
// target: bandwidth throttle, parts, manifest), staging.go (the local
// export), schedule.go (window and backoff arithmetic), target.go and s3.go
// (the targets), status.go, manifest.go, catalog.go, video.go, http.go.
package upload

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/export"
)

// Store is what the uploader needs from storage; *storage.Store
// implements it.
type Store interface {
	export.Source
	Episodes() ([]episode.Episode, error)
	PutEpisode(e episode.Episode) error
	PutUploadState(u storage.UploadState) error
	UploadState(episodeID string) (storage.UploadState, error)
}

// evictionChecker is implemented by *storage.Store; a store without it is
// assumed to keep all data.
type evictionChecker interface {
	Evicted(id string) (storage.EvictionInfo, error)
}

// Uploader uploads finished episodes. Create it with New.
type Uploader struct {
	store  Store
	o      Options
	sched  schedule
	target target
	lim    *rate.Limiter
	log    *slog.Logger
	m      *metrics
	wake   chan struct{} // cap 1; full means a wake-up is already pending
	chunk  int
	busy   atomic.Bool
	sent   atomic.Int64

	mu struct {
		sync.Mutex
		rnd      *rand.Rand
		backoff  map[string]time.Time // episode -> not before
		budget   *runBudget           // of the RunOnce in progress; nil otherwise
		active   *ActiveStatus
		rate     float64 // EWMA of sent bytes/s
		rateT    time.Time
		rateB    int64
		uploaded uint64
		lastErr  string
	}
}

// New checks the options and builds an Uploader; it starts nothing and does
// no I/O.
func New(store Store, o Options) (*Uploader, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("upload options: %w", err)
	}
	u := &Uploader{store: store, o: o, wake: make(chan struct{}, 1)}
	u.log = o.Logger.With("component", "sync.upload")
	u.sched.loc, _ = time.LoadLocation(o.Timezone) // checked by Validate
	for _, w := range o.Windows {
		win, _ := parseWindow(w)
		u.sched.windows = append(u.sched.windows, win)
	}
	u.chunk = 256 << 10
	if o.Bandwidth > 0 {
		burst := int(max(o.Bandwidth/20, 32<<10))
		u.lim = rate.NewLimiter(rate.Limit(o.Bandwidth), burst)
		u.chunk = min(burst, 64<<10)
	}
	u.mu.rnd = rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x9e3779b97f4a7c15))
	u.mu.backoff = map[string]time.Time{}
	switch o.Target.Type {
	case "s3":
		t, err := newS3Target(o.Target, u)
		if err != nil {
			return nil, err
		}
		t.partSize, t.conc = o.PartSize, o.Concurrency
		u.target = t
	case "dir":
		u.target = &dirTarget{root: o.Target.Path, u: u}
	}
	u.m = newMetrics(o.Registerer)
	return u, nil
}

// Wake tells the uploader that an episode was closed (or labelled
// priority); it never blocks.
func (u *Uploader) Wake() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}
