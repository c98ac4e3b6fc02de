package replay

import (
	"errors"
	"fmt"
	"github.com/episoded/episoded/internal/glob"
	"iter"
	"slices"
	"sort"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// Source is what replay reads from a store; *storage.Store implements it.
type Source interface {
	Episode(id string) (episode.Episode, error)
	Descriptors(stream string) ([]sample.Descriptor, error)
	Merge(streams []string, from, to int64) iter.Seq2[sample.Sample, error]
	VideoStart(stream string, from, to int64) (sample.VideoStart, error)
	MergeFrom(streams []string, starts map[string]sample.VideoStart, from, to int64) func(yield func(sample.Sample, error) bool)
}

// Errors. Match with errors.Is.
var (
	// ErrNotFound: no episode has the given id.
	ErrNotFound = errors.New("replay: episode not found")
	// ErrRecording: the episode is still recording, so its window and data
	// are not final.
	ErrRecording = errors.New("replay: episode is still recording; stop it first")
	// ErrSelection: the stream pattern or time range is invalid, or selects
	// nothing.
	ErrSelection = errors.New("replay: bad selection")
)

// Selection picks what of an episode is replayed.
type Selection struct {
	// Streams is a glob on stream ids ('*' matches across '/', see
	// internal/glob); "" selects all.
	Streams string
	// From and To are offsets from the start of the episode window
	// (Start - Preroll). To 0 means the end of the window.
	From, To time.Duration
}

// Validate checks the pattern and the range.
func (s Selection) Validate() error {
	var errs []error
	if s.Streams != "" {
		if err := glob.Validate(s.Streams); err != nil {
			errs = append(errs, fmt.Errorf("streams: %q is not a valid pattern: %w", s.Streams, err))
		}
	}
	if s.From < 0 {
		errs = append(errs, fmt.Errorf("from: %s is negative", s.From))
	}
	if s.To < 0 {
		errs = append(errs, fmt.Errorf("to: %s is negative", s.To))
	}
	if s.To > 0 && s.To <= s.From {
		errs = append(errs, fmt.Errorf("to: %s is not after from %s", s.To, s.From))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrSelection, err)
	}
	return nil
}

// match reports whether stream is selected.
func (s Selection) match(stream string) bool {
	if s.Streams == "" {
		return true
	}
	return glob.Match(s.Streams, stream)
}

// Format identifies the samples stream layout (see Header).
const Format = "episoded.samples/v1"

// Header describes a replayable episode: the episode record, the absolute
// time range selected and every selected stream with all its descriptor
// versions (oldest first).
type Header struct {
	Format  string          `cbor:"1,keyasint"`
	Episode episode.Episode `cbor:"2,keyasint"`
	// From and To are the selected range in aligned time (ns since the
	// epoch); samples have From <= T <= To.
	From int64 `cbor:"3,keyasint"`
	To   int64 `cbor:"4,keyasint"`
	// Streams are the selected streams, sorted by id.
	Streams []StreamInfo `cbor:"5,keyasint"`
}

// StreamInfo is one selected stream and its descriptor versions.
type StreamInfo struct {
	Stream      string              `cbor:"1,keyasint"`
	Descriptors []sample.Descriptor `cbor:"2,keyasint"`
}

// Latest returns the stream's newest descriptor, or nil if it has none.
func (si StreamInfo) Latest() *sample.Descriptor {
	if len(si.Descriptors) == 0 {
		return nil
	}
	return &si.Descriptors[len(si.Descriptors)-1]
}

// At returns the descriptor version in force at aligned time t: the last
// one whose Since is not after t (the first if none is), or nil.
func (si StreamInfo) At(t int64) *sample.Descriptor {
	if len(si.Descriptors) == 0 {
		return nil
	}
	i := sort.Search(len(si.Descriptors), func(i int) bool { return si.Descriptors[i].Since > t })
	if i == 0 {
		return &si.Descriptors[0]
	}
	return &si.Descriptors[i-1]
}

// Duration is the length of the selected range.
func (h Header) Duration() time.Duration { return time.Duration(h.To - h.From) }

// Open reads episode id from src: it checks that the episode exists and is
// finished, applies sel, and returns the header and the samples of the
// selected streams in (T, stream, seq) order. Video streams start at a
// keyframe: the last one at or before From (so their first samples may be
// before From), or the first one after it if that keyframe is gone. The sequence yields a sample
// that could not be read as an error (with Stream, T and Seq set where
// known) and goes on.
func Open(src Source, id string, sel Selection) (Header, iter.Seq2[sample.Sample, error], error) {
	if err := sel.Validate(); err != nil {
		return Header{}, nil, err
	}
	e, err := src.Episode(id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return Header{}, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	case err != nil:
		return Header{}, nil, fmt.Errorf("read episode %s: %w", id, err)
	case !e.State.Finished() || e.Stop == 0:
		return Header{}, nil, fmt.Errorf("%w (episode %s, state %s)", ErrRecording, id, e.State)
	}
	wFrom, wTo := e.Window(0)
	h := Header{Format: Format, Episode: e, From: wFrom + int64(sel.From), To: wTo}
	if sel.To > 0 {
		h.To = min(wTo, wFrom+int64(sel.To))
	}
	if h.From > wTo {
		return Header{}, nil, fmt.Errorf("%w: from %s is past the end of the %s window", ErrSelection,
			sel.From, time.Duration(wTo-wFrom))
	}
	var names []string
	starts := map[string]sample.VideoStart{}
	for _, name := range streamsOf(e) {
		if !sel.match(name) {
			continue
		}
		descs, err := src.Descriptors(name)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return Header{}, nil, fmt.Errorf("read descriptors of %s: %w", name, err)
		}
		h.Streams = append(h.Streams, StreamInfo{Stream: name, Descriptors: descs})
		names = append(names, name)
		if len(descs) > 0 && descs[len(descs)-1].Kind == sample.KindVideo {
			vs, err := src.VideoStart(name, h.From, h.To)
			if err != nil {
				return Header{}, nil, fmt.Errorf("find the first keyframe of %s: %w", name, err)
			}
			starts[name] = vs
		}
	}
	if len(names) == 0 {
		return Header{}, nil, fmt.Errorf("%w: no stream of episode %s matches %q (streams: %v)",
			ErrSelection, id, sel.Streams, streamsOf(e))
	}
	return h, src.MergeFrom(names, starts, h.From, h.To), nil
}

// streamsOf lists an episode's streams, sorted: its Streams, else those
// of its quality report.
func streamsOf(e episode.Episode) []string {
	names := slices.Clone(e.Streams)
	if len(names) == 0 {
		for _, q := range e.Quality {
			names = append(names, q.Stream)
		}
	}
	sort.Strings(names)
	return slices.Compact(names)
}
