package upload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
)

func (u *Uploader) readChunk() int { return u.chunk }

// throttle accounts n bytes read for upload and waits for the token bucket.
func (u *Uploader) throttle(ctx context.Context, n int) error {
	u.sent.Add(int64(n))
	u.m.bytes.Add(float64(n))
	now := time.Now()
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
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		r.CancelAt(time.Now())
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
		e.State, e.Reason, e.Updated = episode.Uploading, "", time.Now().UnixNano()
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
		st.Updated = time.Now().UnixNano()
		if err := u.store.PutUploadState(st); err != nil {
			return fmt.Errorf("save upload state: %w", err)
		}
		return nil
	}
	cont := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !prio && !u.sched.open(time.Now()) {
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
		u.mu.active = &ActiveStatus{Episode: e.ID, Key: obj.Key, Size: obj.Size, Started: time.Now()}
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
		Uploaded: time.Now().UnixNano(),
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
	st.Attempts, st.LastError, st.Updated = 0, "", time.Now().UnixNano()
	if err := u.store.PutUploadState(st); err != nil {
		return fmt.Errorf("save upload state: %w", err)
	}
	cur, err := u.store.Episode(e.ID)
	if err != nil {
		return fmt.Errorf("read episode: %w", err)
	}
	cur.State, cur.Reason, cur.Updated = episode.Uploaded, "", time.Now().UnixNano()
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
