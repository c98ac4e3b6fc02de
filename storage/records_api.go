package storage

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
)

const maxTime = math.MaxInt64

// UploadState is the resumable upload progress of one episode.
type UploadState struct {
	Episode   string
	Objects   []ObjectState
	Attempts  int
	LastError string
	// Updated is the gateway wall-clock time (ns) of the last change.
	Updated int64
}

// ObjectState is one object of an episode's upload.
type ObjectState struct {
	Key      string
	Size     int64
	SHA256   string
	UploadID string
	Parts    []PartState
	Done     bool
}

// PartState is one finished part of a multipart upload.
type PartState struct {
	Number int
	Size   int64
	ETag   string
}

func (s *Store) get(key []byte, v any) error {
	if s.closed.Load() {
		return ErrClosed
	}
	data, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	if err := unmarshal(data, v); err != nil {
		return &CorruptError{Key: slices.Clone(key), Err: err}
	}
	return nil
}

func (s *Store) set(key []byte, v any) error {
	if s.closed.Load() {
		return ErrClosed
	}
	data, err := marshal(v)
	if err != nil {
		return err
	}
	return s.db.Set(key, data, pebble.Sync)
}

// scan calls fn for every record in [lo, hi).
func (s *Store) scan(lo, hi []byte, fn func(k, v []byte) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err == nil {
			err = fn(it.Key(), v)
		}
		if err != nil {
			it.Close()
			return err
		}
	}
	return it.Close()
}

// PutDescriptor stores d as a new version of its stream's descriptor if it
// differs (Descriptor.Equal) from the latest one, and returns what is
// stored: the new version, or the unchanged latest.
func (s *Store) PutDescriptor(d sample.Descriptor) (sample.Descriptor, error) {
	if err := checkStream(d.Stream); err != nil {
		return sample.Descriptor{}, fmt.Errorf("put descriptor: %w", err)
	}
	s.recMu.Lock()
	defer s.recMu.Unlock()
	latest, err := s.Descriptor(d.Stream)
	switch {
	case err == nil && latest.Equal(d):
		return latest, nil
	case err == nil:
		d.Version = latest.Version + 1
	case errors.Is(err, ErrNotFound):
		d.Version = 1
	default:
		return sample.Descriptor{}, fmt.Errorf("put descriptor %s: %w", d.Stream, err)
	}
	if err := s.set(descKey(d.Stream, d.Version), &descRec{V: formatVersion, D: d}); err != nil {
		return sample.Descriptor{}, fmt.Errorf("put descriptor %s: %w", d.Stream, err)
	}
	return d, nil
}

// Descriptor returns the latest descriptor of stream, or ErrNotFound.
func (s *Store) Descriptor(stream string) (sample.Descriptor, error) {
	all, err := s.Descriptors(stream)
	if err != nil {
		return sample.Descriptor{}, err
	}
	if len(all) == 0 {
		return sample.Descriptor{}, fmt.Errorf("descriptor %s: %w", stream, ErrNotFound)
	}
	return all[len(all)-1], nil
}

// Descriptors returns every version of stream's descriptor, oldest first.
func (s *Store) Descriptors(stream string) ([]sample.Descriptor, error) {
	if err := checkStream(stream); err != nil {
		return nil, fmt.Errorf("descriptors: %w", err)
	}
	lo, hi := descBounds(stream)
	var out []sample.Descriptor
	err := s.scan(lo, hi, func(k, v []byte) error {
		var rec descRec
		if err := unmarshal(v, &rec); err != nil {
			return &CorruptError{Key: slices.Clone(k), Err: err}
		}
		out = append(out, rec.D)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("descriptors %s: %w", stream, err)
	}
	return out, nil
}

// PutEpisode creates or replaces an episode record. Whether its data was
// evicted is kept across updates.
func (s *Store) PutEpisode(e episode.Episode) error {
	if e.ID == "" {
		return fmt.Errorf("put episode: %w: empty id", ErrInvalid)
	}
	if e.State != "" && !e.State.Valid() {
		return fmt.Errorf("put episode %s: %w: unknown state %q", e.ID, ErrInvalid, e.State)
	}
	s.recMu.Lock()
	defer s.recMu.Unlock()
	rec := episodeRec{V: formatVersion, E: e}
	var old episodeRec
	switch err := s.get(episodeKey(e.ID), &old); {
	case err == nil:
		rec.Evicted, rec.EvictReason = old.Evicted, old.EvictReason
	case !errors.Is(err, ErrNotFound):
		return fmt.Errorf("put episode %s: %w", e.ID, err)
	}
	if err := s.set(episodeKey(e.ID), &rec); err != nil {
		return fmt.Errorf("put episode %s: %w", e.ID, err)
	}
	return nil
}

// Episode returns one episode, or ErrNotFound.
func (s *Store) Episode(id string) (episode.Episode, error) {
	var rec episodeRec
	if err := s.get(episodeKey(id), &rec); err != nil {
		return episode.Episode{}, fmt.Errorf("episode %s: %w", id, err)
	}
	return rec.E, nil
}

// EvictionInfo says whether and why an episode's sample data was evicted.
// The episode record itself is never evicted.
type EvictionInfo struct {
	// At is the wall-clock time (ns) of the eviction; 0 if the data is
	// still present.
	At     int64
	Reason string
}

// Evicted reports whether the data of episode id was evicted.
func (s *Store) Evicted(id string) (EvictionInfo, error) {
	var rec episodeRec
	if err := s.get(episodeKey(id), &rec); err != nil {
		return EvictionInfo{}, fmt.Errorf("episode %s: %w", id, err)
	}
	return EvictionInfo{At: rec.Evicted, Reason: rec.EvictReason}, nil
}

// Episodes returns every episode ordered by ID (UUIDv7 ids sort by time).
func (s *Store) Episodes() ([]episode.Episode, error) {
	recs, err := s.episodeRecs()
	if err != nil {
		return nil, err
	}
	out := make([]episode.Episode, len(recs))
	for i := range recs {
		out[i] = recs[i].E
	}
	return out, nil
}

func (s *Store) episodeRecs() ([]episodeRec, error) {
	lo, hi := prefixBounds(pfxEpisode)
	var out []episodeRec
	err := s.scan(lo, hi, func(k, v []byte) error {
		var rec episodeRec
		if err := unmarshal(v, &rec); err != nil {
			return &CorruptError{Key: slices.Clone(k), Err: err}
		}
		out = append(out, rec)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list episodes: %w", err)
	}
	return out, nil
}

// PutUploadState stores the upload progress of an episode.
func (s *Store) PutUploadState(u UploadState) error {
	if u.Episode == "" {
		return fmt.Errorf("put upload state: %w: empty episode id", ErrInvalid)
	}
	if err := s.set(uploadKey(u.Episode), &uploadRec{V: formatVersion, U: u}); err != nil {
		return fmt.Errorf("put upload state %s: %w", u.Episode, err)
	}
	return nil
}

// UploadState returns the upload progress of an episode, or ErrNotFound.
func (s *Store) UploadState(episodeID string) (UploadState, error) {
	var rec uploadRec
	if err := s.get(uploadKey(episodeID), &rec); err != nil {
		return UploadState{}, fmt.Errorf("upload state %s: %w", episodeID, err)
	}
	return rec.U, nil
}

// DeleteEpisode deletes an episode record, its upload state, and the
// timeline data in its window that no other episode covers. Space is
// reclaimed before it returns (segments unlinked, range compacted).
func (s *Store) DeleteEpisode(id string) error {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	var rec episodeRec
	if err := s.get(episodeKey(id), &rec); err != nil {
		return fmt.Errorf("delete episode %s: %w", id, err)
	}
	recs, err := s.episodeRecs()
	if err != nil {
		return fmt.Errorf("delete episode %s: %w", id, err)
	}
	others := slices.DeleteFunc(recs, func(r episodeRec) bool { return r.E.ID == id })
	from, to := rec.E.Window(maxTime)
	plan := s.planLocked(others, s.opts.Now().UnixNano(), spans{{from, to}}, rec.E.Streams)
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Delete(episodeKey(id), nil)
	_ = b.Delete(uploadKey(id), nil)
	freed, err := s.applyPlanLocked(b, plan, true)
	if err != nil {
		return fmt.Errorf("delete episode %s: %w", id, err)
	}
	s.log.Info("deleted episode", "episode", id, "freed_segment_bytes", freed)
	// The room grows at once; the watcher re-measures when Pebble has
	// deleted the compacted files.
	s.measure()
	s.kick(s.kickWatch)
	return nil
}
