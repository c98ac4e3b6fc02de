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
// every part: when a window closes, the parts in flight finish, the rest
// wait for the next window. The bandwidth cap is a token bucket shared by
// all parts. All timing (windows, backoff, the token bucket) goes through
// Options.Clock.
package upload

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
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

// Target says where episodes go.
type Target struct {
	// Type is "s3" or "dir".
	Type string
	// Prefix is prepended to every key; may be empty.
	Prefix string
	// Path is the root directory of a dir target.
	Path string
	// Endpoint is host:port or a URL with http:// or https:// (default
	// https) of an S3-compatible server.
	Endpoint, Region, Bucket string
	// PathStyle forces path-style bucket addressing (MinIO, Ceph, ...).
	PathStyle bool
	// AccessKey and SecretKey; both empty means AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY from the environment. Never logged.
	AccessKey, SecretKey string
	// CAFile is a PEM bundle of extra trusted CAs; InsecureSkipVerify
	// turns off certificate checks (lab use only).
	CAFile             string
	InsecureSkipVerify bool
}

// Options configure an Uploader. Zero values take the documented defaults.
type Options struct {
	Target Target
	// Site and Gateway identify this gateway in the object layout and the
	// manifest. Defaults: "default" and the host name.
	Site, Gateway string
	// Windows such as "22:00-06:00"; empty means always.
	Windows []string
	// Timezone of the windows (IANA name); default UTC.
	Timezone string
	// PriorityLabel: episodes carrying this label upload at once. Default
	// "priority".
	PriorityLabel string
	// Bandwidth caps upload bytes per second; 0 means unlimited.
	Bandwidth int64
	// Concurrency is the number of parts uploaded in parallel. Default 4.
	Concurrency int
	// PartSize of multipart uploads; objects up to it go in one PUT.
	// Default 16 MiB, minimum 5 MiB for s3.
	PartSize int64
	// RetryMin and RetryMax bound the backoff between attempts. Defaults
	// 2s and 5m.
	RetryMin, RetryMax time.Duration
	// OnceAttempts is how often RunOnce tries an episode that fails with
	// a transient error before giving up for this run. Default 5.
	OnceAttempts int
	// MaxAttempts quarantines an episode whose upload failed this many
	// times in a row (counted across runs and restarts) when the last
	// failure was an answer from the server (ServerError, or a failure
	// of a dir target). Failures to reach the server at all (connection
	// refused or reset, timeouts, 502/503/504) are retried without limit:
	// an outage of the central store must not quarantine every episode.
	// Default config.DefaultMaxAttempts.
	MaxAttempts int
	// PollInterval: Run re-checks the store this often even without Wake.
	// Default 1 minute.
	PollInterval time.Duration
	// StageDir holds the staged exports (<id>.mcap). Required; typically
	// <datadir>/outbox.
	StageDir string
	// Attachments returns the files (calibration, URDF) to add to a
	// cell's exports; nil means none.
	Attachments func(cell string) []string
	// Clock; nil means the real clock.
	Clock      Clock
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// OnUploaded, if set, is called after an episode reached uploaded.
	OnUploaded func(episode.Episode)
	// Signer, if set, signs every manifest (see internal/signing).
	Signer Signer
	// Provenance, if set, gives the manifest's provenance block.
	Provenance ProvenanceFunc
}

func (o *Options) setDefaults() {
	if o.Site == "" {
		o.Site = "default"
	}
	if o.Gateway == "" {
		o.Gateway, _ = os.Hostname()
		if o.Gateway == "" {
			o.Gateway = "gateway"
		}
	}
	if o.PriorityLabel == "" {
		o.PriorityLabel = "priority"
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.PartSize <= 0 {
		o.PartSize = 16 << 20
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 2 * time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Minute
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = o.RetryMin
	}
	if o.OnceAttempts <= 0 {
		o.OnceAttempts = 5
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = config.DefaultMaxAttempts
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Minute
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with o at once.
func (o Options) Validate() error {
	var errs []error
	switch o.Target.Type {
	case "s3":
		if o.Target.Endpoint == "" {
			errs = append(errs, errors.New("target.endpoint is required for s3"))
		}
		if o.Target.Bucket == "" {
			errs = append(errs, errors.New("target.bucket is required for s3"))
		}
		if o.PartSize > 0 && o.PartSize < 5<<20 {
			errs = append(errs, fmt.Errorf("part_size %d is below the S3 minimum of 5 MiB", o.PartSize))
		}
	case "dir":
		if o.Target.Path == "" {
			errs = append(errs, errors.New("target.path is required for dir"))
		}
	default:
		errs = append(errs, fmt.Errorf("target.type %q: want s3 or dir", o.Target.Type))
	}
	if o.StageDir == "" {
		errs = append(errs, errors.New("stage dir is required"))
	}
	for _, w := range o.Windows {
		if _, err := parseWindow(w); err != nil {
			errs = append(errs, err)
		}
	}
	if o.Timezone != "" {
		if _, err := time.LoadLocation(o.Timezone); err != nil {
			errs = append(errs, fmt.Errorf("timezone %q: %w", o.Timezone, err))
		}
	}
	if o.Bandwidth < 0 {
		errs = append(errs, errors.New("bandwidth must not be negative"))
	}
	for _, s := range []string{o.Site, o.Gateway} {
		if strings.ContainsAny(s, "/\\") {
			errs = append(errs, fmt.Errorf("site and gateway must not contain slashes: %q", s))
		}
	}
	return errors.Join(errs...)
}

// Uploader uploads finished episodes. Create it with New.
type Uploader struct {
	store  Store
	o      Options
	sched  schedule
	target target
	lim    *rate.Limiter
	clock  Clock
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
		tries    map[string]int       // RunOnce attempts in this run
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
	o.setDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("upload options: %w", err)
	}
	u := &Uploader{store: store, o: o, clock: o.Clock, wake: make(chan struct{}, 1)}
	u.log = o.Logger.With("component", "sync.upload")
	loc := time.UTC
	if o.Timezone != "" {
		loc, _ = time.LoadLocation(o.Timezone)
	}
	u.sched.loc = loc
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
	u.mu.tries = map[string]int{}
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

func (u *Uploader) readChunk() int { return u.chunk }

// throttle accounts n bytes read for upload and waits for the token bucket.
func (u *Uploader) throttle(ctx context.Context, n int) error {
	u.sent.Add(int64(n))
	u.m.bytes.Add(float64(n))
	now := u.clock.Now()
	u.mu.Lock()
	if u.mu.active != nil {
		u.mu.active.Sent += int64(n)
	}
	if el := now.Sub(u.mu.rateT); el >= time.Second {
		cur := float64(u.sent.Load()-u.mu.rateB) / el.Seconds()
		if u.mu.rate == 0 || el > time.Minute {
			u.mu.rate = cur
		} else {
			u.mu.rate = 0.7*u.mu.rate + 0.3*cur
		}
		u.mu.rateT, u.mu.rateB = now, u.sent.Load()
	}
	u.mu.Unlock()
	if u.lim == nil {
		return nil
	}
	r := u.lim.ReserveN(now, n)
	if !r.OK() {
		return fmt.Errorf("bandwidth limiter: read of %d bytes exceeds burst", n)
	}
	d := r.DelayFrom(now)
	if d <= 0 {
		return nil
	}
	select {
	case <-u.clock.After(d):
		return nil
	case <-ctx.Done():
		r.CancelAt(u.clock.Now())
		return ctx.Err()
	}
}

// Sent returns the bytes read for upload since New (object data and
// manifests, including parts that later failed).
func (u *Uploader) Sent() int64 { return u.sent.Load() }

func (u *Uploader) addDone(n int64) {
	u.mu.Lock()
	if u.mu.active != nil {
		u.mu.active.Done += n
	}
	u.mu.Unlock()
}

func (u *Uploader) priority(e episode.Episode) bool {
	if e.Priority {
		return true
	}
	_, ok := e.Labels[u.o.PriorityLabel]
	return ok
}

// pending reports whether e still needs uploading.
func pending(e episode.Episode) bool {
	switch e.State {
	case episode.Closed, episode.Interrupted, episode.Uploading:
		return e.Stop != 0
	}
	return false
}

type passResult struct {
	processed int
	// wait is how long until something may become due (backoff expiry or
	// a window change); 0 means nothing is waiting.
	wait time.Duration
	// failed lists episodes that gave up in this RunOnce.
	failed []string
}

// pass uploads every episode that is due now.
func (u *Uploader) pass(ctx context.Context, once bool) (passResult, error) {
	var res passResult
	eps, err := u.store.Episodes()
	if err != nil {
		return res, fmt.Errorf("list episodes: %w", err)
	}
	var queue []episode.Episode
	for _, e := range eps {
		if pending(e) {
			queue = append(queue, e)
		}
	}
	slices.SortStableFunc(queue, func(a, b episode.Episode) int {
		pa, pb := u.priority(a), u.priority(b)
		if pa != pb {
			if pa {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	u.updateBacklog(eps)
	now := u.clock.Now()
	open := u.sched.open(now)
	u.m.windowOpen.Set(b2f(open))
	setWait := func(d time.Duration) {
		if d > 0 && (res.wait == 0 || d < res.wait) {
			res.wait = d
		}
	}
	waitingForWindow := false
	for _, e := range queue {
		if ctx.Err() != nil {
			return res, nil
		}
		prio := u.priority(e)
		if !prio && !u.sched.open(u.clock.Now()) {
			waitingForWindow = true
			continue
		}
		u.mu.Lock()
		nb := u.mu.backoff[e.ID]
		tries := u.mu.tries[e.ID]
		u.mu.Unlock()
		if once && tries >= u.o.OnceAttempts {
			continue
		}
		if d := nb.Sub(u.clock.Now()); d > 0 {
			setWait(d)
			continue
		}
		res.processed++
		err := u.process(ctx, e, prio)
		if once {
			u.mu.Lock()
			u.mu.tries[e.ID]++
			u.mu.Unlock()
		}
		switch {
		case err == nil:
		case errors.Is(err, errPaused):
			u.log.Info("upload paused: window closed", "episode", e.ID)
			waitingForWindow = true
			res.processed--
		case ctx.Err() != nil:
			return res, nil
		default:
			d := u.handleError(e, err)
			if d > 0 {
				setWait(d)
				if once && tries+1 >= u.o.OnceAttempts {
					res.failed = append(res.failed, e.ID)
				}
			}
		}
	}
	if waitingForWindow {
		if t := u.sched.nextChange(u.clock.Now()); !t.IsZero() {
			setWait(t.Sub(u.clock.Now()))
		}
	}
	return res, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// failedError marks a local failure (the export could not be made).
type failedError struct{ err error }

func (f *failedError) Error() string { return f.err.Error() }
func (f *failedError) Unwrap() error { return f.err }

// handleError records err for e and returns the backoff before the next
// attempt, or 0 if the episode left the queue.
func (u *Uploader) handleError(e episode.Episode, err error) time.Duration {
	msg := err.Error()
	u.mu.Lock()
	u.mu.lastErr = msg
	u.mu.Unlock()
	st, serr := u.store.UploadState(e.ID)
	if serr != nil {
		st = storage.UploadState{Episode: e.ID}
	}
	st.Attempts++
	st.LastError = msg
	st.Updated = u.clock.Now().UnixNano()
	if perr := u.store.PutUploadState(st); perr != nil {
		u.log.Error("save upload state", "episode", e.ID, "err", perr)
	}
	var term *TerminalError
	var failed *failedError
	switch {
	case errors.As(err, &term):
		u.quarantine(e.ID, &st, msg)
		return 0
	case errors.As(err, &failed):
		u.setState(e.ID, episode.Failed, msg)
		u.m.episodes.WithLabelValues("failed").Inc()
		u.log.Error("episode failed", "episode", e.ID, "reason", msg)
		return 0
	case st.Attempts >= u.o.MaxAttempts && !unreachable(err):
		u.quarantine(e.ID, &st, fmt.Sprintf("gave up after %d attempts: %s", st.Attempts, msg))
		return 0
	}
	u.m.retries.Inc()
	u.mu.Lock()
	d := backoff(st.Attempts, u.o.RetryMin, u.o.RetryMax, u.mu.rnd)
	u.mu.backoff[e.ID] = u.clock.Now().Add(d)
	u.mu.Unlock()
	// The episode says why it is not uploaded yet (episodes show, the
	// dashboard); its state does not change.
	u.setReason(e.ID, fmt.Sprintf("attempt %d of %d failed, retrying: %s", st.Attempts, u.o.MaxAttempts, msg))
	u.log.Warn("upload failed, will retry", "episode", e.ID, "attempt", st.Attempts, "in", d.Round(time.Millisecond), "err", msg)
	return d
}

// unreachable reports whether err means the target could not be reached
// at all, as opposed to an answer from it: such errors never quarantine.
func unreachable(err error) bool {
	var se *ServerError
	if errors.As(err, &se) {
		switch se.Status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// quarantine aborts the episode's unfinished uploads (so the server keeps
// no orphan parts), records that in its upload state, and quarantines it
// with reason.
func (u *Uploader) quarantine(id string, st *storage.UploadState, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), abortTimeout)
	defer cancel()
	changed := false
	for i := range st.Objects {
		o := &st.Objects[i]
		if o.Done || o.UploadID == "" {
			continue
		}
		if err := u.target.abort(ctx, o); err != nil {
			u.log.Warn("abort unfinished upload of a quarantined episode", "episode", id, "key", o.Key, "err", err)
			continue
		}
		u.log.Info("aborted unfinished upload", "episode", id, "key", o.Key, "parts", len(o.Parts))
		o.UploadID, o.Parts = "", nil
		changed = true
	}
	if changed {
		st.Updated = u.clock.Now().UnixNano()
		if err := u.store.PutUploadState(*st); err != nil {
			u.log.Error("save upload state", "episode", id, "err", err)
		}
	}
	u.setState(id, episode.Quarantined, reason)
	u.m.episodes.WithLabelValues("quarantined").Inc()
	u.log.Error("episode quarantined", "episode", id, "reason", reason)
}

// abortTimeout bounds the abort of a quarantined episode's uploads.
const abortTimeout = 30 * time.Second

// setReason records why e is not uploaded yet, keeping its state.
func (u *Uploader) setReason(id, reason string) {
	e, err := u.store.Episode(id)
	if err != nil {
		u.log.Error("read episode", "episode", id, "err", err)
		return
	}
	e.Reason, e.Updated = reason, u.clock.Now().UnixNano()
	if err := u.store.PutEpisode(e); err != nil {
		u.log.Error("save episode", "episode", id, "err", err)
	}
}

// setState re-reads the episode and sets its state and reason.
func (u *Uploader) setState(id string, s episode.State, reason string) {
	e, err := u.store.Episode(id)
	if err != nil {
		u.log.Error("read episode", "episode", id, "err", err)
		return
	}
	e.State, e.Reason, e.Updated = s, reason, u.clock.Now().UnixNano()
	if err := u.store.PutEpisode(e); err != nil {
		u.log.Error("save episode", "episode", id, "err", err)
	}
}

// Run uploads due episodes until ctx is cancelled; see the package doc.
func (u *Uploader) Run(ctx context.Context) error {
	if !u.busy.CompareAndSwap(false, true) {
		return errors.New("upload: already running")
	}
	defer u.busy.Store(false)
	u.log.Info("uploader started", "target", u.target.String(), "windows", u.o.Windows, "timezone", u.sched.loc.String(), "bandwidth", u.o.Bandwidth)
	for {
		res, err := u.pass(ctx, false)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			u.log.Error("upload pass", "err", err)
			res.wait = u.o.RetryMin
		}
		if res.processed > 0 && err == nil {
			continue
		}
		wait := u.o.PollInterval
		if res.wait > 0 && res.wait < wait {
			wait = res.wait
		}
		select {
		case <-ctx.Done():
			return nil
		case <-u.wake:
		case <-u.clock.After(wait):
		}
	}
}

// RunOnce uploads what is due now and returns when nothing more is due
// (`episoded sync run --until-idle`). Transient failures are retried with
// backoff up to OnceAttempts per episode; it returns an error naming the
// episodes that still failed. Quarantined episodes are not an error of the
// run (they are reported in Status).
func (u *Uploader) RunOnce(ctx context.Context) error {
	if !u.busy.CompareAndSwap(false, true) {
		return errors.New("upload: already running")
	}
	defer u.busy.Store(false)
	u.mu.Lock()
	clear(u.mu.tries)
	clear(u.mu.backoff)
	u.mu.Unlock()
	var failed []string
	for {
		res, err := u.pass(ctx, true)
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		failed = append(failed, res.failed...)
		if res.processed > 0 {
			continue
		}
		// Only backoffs of episodes with attempts left keep us here.
		if d, ok := u.nextRetry(); ok {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-u.clock.After(d):
			}
			continue
		}
		break
	}
	if len(failed) > 0 {
		slices.Sort(failed)
		return fmt.Errorf("upload: %d episode(s) still failing after %d attempts: %s", len(failed), u.o.OnceAttempts, strings.Join(slices.Compact(failed), ", "))
	}
	return nil
}

// nextRetry returns the wait until the earliest backoff of an episode with
// RunOnce attempts left.
func (u *Uploader) nextRetry() (time.Duration, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.clock.Now()
	var best time.Duration
	ok := false
	for id, t := range u.mu.backoff {
		if u.mu.tries[id] >= u.o.OnceAttempts {
			continue
		}
		d := max(t.Sub(now), 0)
		if !ok || d < best {
			best, ok = d, true
		}
	}
	return best, ok
}

// Retry requeues a quarantined or failed episode: it goes back to closed
// (interrupted if it ended in a crash), its attempt count is reset and the
// uploader is woken.
func (u *Uploader) Retry(id string) error {
	e, err := u.store.Episode(id)
	if err != nil {
		return fmt.Errorf("retry %s: %w", id, err)
	}
	switch e.State {
	case episode.Quarantined, episode.Failed:
		e.State = episode.Closed
		if e.StopReason == "crash" {
			e.State = episode.Interrupted
		}
		e.Reason = ""
		e.Updated = u.clock.Now().UnixNano()
		if err := u.store.PutEpisode(e); err != nil {
			return fmt.Errorf("retry %s: %w", id, err)
		}
	case episode.Closed, episode.Interrupted, episode.Uploading:
	default:
		return fmt.Errorf("retry %s: episode is %s, not quarantined or failed", id, e.State)
	}
	if st, err := u.store.UploadState(id); err == nil {
		st.Attempts, st.LastError, st.Updated = 0, "", u.clock.Now().UnixNano()
		if err := u.store.PutUploadState(st); err != nil {
			return fmt.Errorf("retry %s: %w", id, err)
		}
	}
	u.mu.Lock()
	delete(u.mu.backoff, id)
	delete(u.mu.tries, id)
	u.mu.Unlock()
	u.Wake()
	return nil
}

// process uploads one episode completely, or returns why not.
func (u *Uploader) process(ctx context.Context, e episode.Episode, prio bool) error {
	dir := Dir(u.o.Target.Prefix, u.o.Site, u.o.Gateway, e)
	mcapKey, manKey := dir+"/"+ObjectMCAP, dir+"/"+ObjectManifest
	st, err := u.store.UploadState(e.ID)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		st = storage.UploadState{Episode: e.ID}
	case err != nil:
		return fmt.Errorf("read upload state: %w", err)
	}
	if ok, err := u.manifestMatches(ctx, manKey, st); err != nil {
		return err
	} else if ok {
		// A crash between manifest and catalog row leaves the row to write.
		if err := u.ensureCatalog(ctx, manKey); err != nil {
			return err
		}
		u.log.Info("episode already on target", "episode", e.ID, "manifest", manKey)
		u.m.episodes.WithLabelValues("already_uploaded").Inc()
		return u.finish(e, st, true)
	}
	if e.State != episode.Uploading {
		e.State, e.Reason, e.Updated = episode.Uploading, "", u.clock.Now().UnixNano()
		if err := u.store.PutEpisode(e); err != nil {
			return fmt.Errorf("mark uploading: %w", err)
		}
	}
	idx := slices.IndexFunc(st.Objects, func(o storage.ObjectState) bool { return o.Key == mcapKey })
	if idx < 0 {
		st.Objects = append(st.Objects, storage.ObjectState{Key: mcapKey})
		idx = len(st.Objects) - 1
	}
	obj := &st.Objects[idx]
	save := func() error {
		st.Updated = u.clock.Now().UnixNano()
		if err := u.store.PutUploadState(st); err != nil {
			return fmt.Errorf("save upload state: %w", err)
		}
		return nil
	}
	cont := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !prio && !u.sched.open(u.clock.Now()) {
			return errPaused
		}
		return nil
	}
	staged := filepath.Join(u.o.StageDir, e.ID+".mcap")
	if !obj.Done {
		if err := cont(); err != nil {
			return err
		}
		// Never publish an episode whose data storage already evicted
		// (evict-oldest policy): the export would be empty.
		if ev, ok := u.store.(evictionChecker); ok {
			if info, err := ev.Evicted(e.ID); err == nil && info.At != 0 {
				return &failedError{err: fmt.Errorf("data evicted before upload: %s", info.Reason)}
			}
		}
		if err := u.stage(ctx, e, obj, staged, save); err != nil {
			return err
		}
		u.mu.Lock()
		u.mu.active = &ActiveStatus{Episode: e.ID, Key: obj.Key, Size: obj.Size, Started: u.clock.Now()}
		for _, p := range obj.Parts {
			u.mu.active.Done += p.Size
		}
		u.mu.Unlock()
		err := u.target.putFile(ctx, staged, obj, save, cont)
		u.mu.Lock()
		u.mu.active = nil
		u.mu.Unlock()
		if err != nil {
			return err
		}
	}
	if err := cont(); err != nil && !errors.Is(err, errPaused) {
		return err
	}
	// The manifest goes last: it is the commit marker.
	man := Manifest{
		Format: ManifestFormat, Episode: e.ID, Site: u.o.Site, Gateway: u.o.Gateway, Cell: e.Cell, Task: e.Task,
		Robot: e.Robot, Start: e.Start, Stop: e.Stop, Labels: e.Labels, Counts: countsOf(e), Quality: e.Quality,
		Uploaded: u.clock.Now().UnixNano(),
	}
	man.Verdict = e.Verdict
	if man.Quality == nil {
		man.Quality = []episode.StreamReport{}
	}
	if err := videoManifest(u.store, e, &man); err != nil {
		return fmt.Errorf("manifest video starts: %w", err)
	}
	for _, o := range st.Objects {
		if o.Key == manKey {
			continue
		}
		man.Objects = append(man.Objects, ManifestObject{Name: filepath.Base(o.Key), Key: o.Key, Size: o.Size, SHA256: o.SHA256})
	}
	data, err := u.encodeManifest(&man, e)
	if err != nil {
		return err
	}
	if err := u.target.putBytes(ctx, manKey, data, "application/json"); err != nil {
		return err
	}
	if info, err := u.target.stat(ctx, manKey); err != nil || info.Size != int64(len(data)) {
		return fmt.Errorf("verify %s: size %d, want %d (%v)", manKey, info.Size, len(data), err)
	}
	if err := u.writeCatalog(ctx, man, manKey, data, false); err != nil {
		return err
	}
	return u.finish(e, st, false)
}

// finish marks e uploaded and drops its staged file.
func (u *Uploader) finish(e episode.Episode, st storage.UploadState, already bool) error {
	for i := range st.Objects {
		st.Objects[i].Done = true
	}
	st.Attempts, st.LastError, st.Updated = 0, "", u.clock.Now().UnixNano()
	if err := u.store.PutUploadState(st); err != nil {
		return fmt.Errorf("save upload state: %w", err)
	}
	cur, err := u.store.Episode(e.ID)
	if err != nil {
		return fmt.Errorf("read episode: %w", err)
	}
	cur.State, cur.Reason, cur.Updated = episode.Uploaded, "", u.clock.Now().UnixNano()
	if err := u.store.PutEpisode(cur); err != nil {
		return fmt.Errorf("mark uploaded: %w", err)
	}
	staged := filepath.Join(u.o.StageDir, e.ID+".mcap")
	if err := os.Remove(staged); err != nil && !errors.Is(err, os.ErrNotExist) {
		u.log.Warn("remove staged export", "path", staged, "err", err)
	}
	u.mu.Lock()
	delete(u.mu.backoff, e.ID)
	u.mu.uploaded++
	u.mu.Unlock()
	if !already {
		u.m.episodes.WithLabelValues("uploaded").Inc()
		var size int64
		for _, o := range st.Objects {
			size += o.Size
		}
		u.log.Info("episode uploaded", "episode", e.ID, "bytes", size)
	}
	if u.o.OnUploaded != nil {
		u.o.OnUploaded(cur)
	}
	return nil
}

// manifestMatches reports whether the target already holds a manifest for
// this episode whose objects are all present with their sizes (and, where
// the store knows them, the same sha256).
func (u *Uploader) manifestMatches(ctx context.Context, key string, st storage.UploadState) (bool, error) {
	data, err := u.target.get(ctx, key, 16<<20)
	if errors.Is(err, errNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil || m.Episode != st.Episode || len(m.Objects) == 0 {
		u.log.Warn("existing manifest does not match, uploading again", "key", key)
		return false, nil
	}
	for _, o := range m.Objects {
		for _, so := range st.Objects {
			if so.Key == o.Key && so.SHA256 != "" && so.SHA256 != o.SHA256 {
				u.log.Warn("existing manifest has a different checksum, uploading again", "key", key)
				return false, nil
			}
		}
		info, err := u.target.stat(ctx, o.Key)
		if errors.Is(err, errNotExist) || (err == nil && info.Size != o.Size) {
			u.log.Warn("object of existing manifest missing or wrong size, uploading again", "key", o.Key)
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
	return true, nil
}

type stageWriter struct {
	w   io.Writer
	err error
}

func (s *stageWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

// stage makes sure the export of e is on local disk at path with the size
// and sha256 recorded in obj, re-creating it if needed. If the content
// differs from what an earlier attempt recorded, that attempt's multipart
// upload is dropped.
func (u *Uploader) stage(ctx context.Context, e episode.Episode, obj *storage.ObjectState, path string, save func() error) error {
	if obj.SHA256 != "" {
		if fi, err := os.Stat(path); err == nil && fi.Size() == obj.Size {
			if sum, err := hashFile(path); err == nil && sum == obj.SHA256 {
				return nil
			}
		}
	}
	if err := os.MkdirAll(u.o.StageDir, 0o750); err != nil {
		return fmt.Errorf("create stage dir: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("stage export: %w", err)
	}
	defer os.Remove(tmp)
	h := sha256.New()
	sw := &stageWriter{w: f}
	bw := bufio.NewWriterSize(io.MultiWriter(sw, h), 1<<20)
	var att []string
	if u.o.Attachments != nil {
		att = u.o.Attachments(e.Cell)
	}
	stats, err := export.Write(ctx, bw, u.store, e.ID, export.Options{Attachments: att})
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if ctx.Err() != nil || sw.err != nil {
			return fmt.Errorf("stage export: %w", err)
		}
		return &failedError{err: fmt.Errorf("export: %w", err)}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("stage export: %w", err)
	}
	if err := syncDir(u.o.StageDir); err != nil {
		return fmt.Errorf("stage export: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if obj.SHA256 != "" && (obj.SHA256 != sum || obj.Size != stats.Size) {
		u.log.Warn("export differs from the one being uploaded, starting the object over", "episode", e.ID)
		obj.UploadID, obj.Parts, obj.Done = "", nil, false
	}
	obj.SHA256, obj.Size = sum, stats.Size
	u.log.Info("episode staged", "episode", e.ID, "bytes", stats.Size, "messages", stats.Messages)
	return save()
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
