package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
)

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
	// failed lists episodes that used up their attempts of a runBudget.
	failed []string
}

// runBudget bounds the attempts per episode of one RunOnce (the one-shot
// mode): an episode that failed max times in this run is left alone until
// the next run. The daemon loop (Run) has no budget: a nil *runBudget
// allows every attempt. Its methods are called with u.mu held.
type runBudget struct {
	max   int
	tries map[string]int
}

func newRunBudget(max int) *runBudget { return &runBudget{max: max, tries: map[string]int{}} }

// exhausted reports whether the episode used up its attempts.
func (b *runBudget) exhausted(id string) bool { return b != nil && b.tries[id] >= b.max }

// spend counts one attempt at the episode and reports whether it was its
// last.
func (b *runBudget) spend(id string) (last bool) {
	if b == nil {
		return false
	}
	b.tries[id]++
	return b.tries[id] >= b.max
}

// forget resets the episode's attempts (Retry).
func (b *runBudget) forget(id string) {
	if b != nil {
		delete(b.tries, id)
	}
}

// pass uploads every episode that is due now, trying each at most as often
// as budget allows (nil: without limit).
func (u *Uploader) pass(ctx context.Context, budget *runBudget) (passResult, error) {
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
	now := time.Now()
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
		if !prio && !u.sched.open(time.Now()) {
			waitingForWindow = true
			continue
		}
		u.mu.Lock()
		nb := u.mu.backoff[e.ID]
		exhausted := budget.exhausted(e.ID)
		u.mu.Unlock()
		if exhausted {
			continue
		}
		if d := time.Until(nb); d > 0 {
			setWait(d)
			continue
		}
		res.processed++
		err := u.process(ctx, e, prio)
		u.mu.Lock()
		lastTry := budget.spend(e.ID)
		u.mu.Unlock()
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
				if lastTry {
					res.failed = append(res.failed, e.ID)
				}
			}
		}
	}
	if waitingForWindow {
		if t := u.sched.nextChange(time.Now()); !t.IsZero() {
			setWait(time.Until(t))
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
	st.Updated = time.Now().UnixNano()
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
	u.mu.backoff[e.ID] = time.Now().Add(d)
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
		st.Updated = time.Now().UnixNano()
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
	e.Reason, e.Updated = reason, time.Now().UnixNano()
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
	e.State, e.Reason, e.Updated = s, reason, time.Now().UnixNano()
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
		res, err := u.pass(ctx, nil)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, storage.ErrClosed) {
			// The store closes only when the daemon stops: nothing more
			// can be read or recorded, so retrying would only log.
			u.log.Info("uploader stopped: the store is closed")
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
		case <-time.After(wait):
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
	budget := newRunBudget(u.o.OnceAttempts)
	u.mu.Lock()
	u.mu.budget = budget
	clear(u.mu.backoff)
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.mu.budget = nil
		u.mu.Unlock()
	}()
	var failed []string
	for {
		res, err := u.pass(ctx, budget)
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
		if d, ok := u.nextRetry(budget); ok {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
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
// attempts left in budget.
func (u *Uploader) nextRetry(budget *runBudget) (time.Duration, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now()
	var best time.Duration
	ok := false
	for id, t := range u.mu.backoff {
		if budget.exhausted(id) {
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
		e.Updated = time.Now().UnixNano()
		if err := u.store.PutEpisode(e); err != nil {
			return fmt.Errorf("retry %s: %w", id, err)
		}
	case episode.Closed, episode.Interrupted, episode.Uploading:
	default:
		return fmt.Errorf("retry %s: episode is %s, not quarantined or failed", id, e.State)
	}
	if st, err := u.store.UploadState(id); err == nil {
		st.Attempts, st.LastError, st.Updated = 0, "", time.Now().UnixNano()
		if err := u.store.PutUploadState(st); err != nil {
			return fmt.Errorf("retry %s: %w", id, err)
		}
	}
	u.mu.Lock()
	delete(u.mu.backoff, id)
	u.mu.budget.forget(id)
	u.mu.Unlock()
	u.Wake()
	return nil
}
