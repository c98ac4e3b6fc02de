package replay

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/episoded/episoded/internal/httpjson"
	"github.com/episoded/episoded/sample"
)

// ContentType is the media type of the samples stream.
const ContentType = "application/vnd.episoded.samples+cbor"

// MaxFrame bounds one frame of the samples stream (one sample with its
// payload); a longer frame is refused as corrupt.
const MaxFrame = 64 << 20

// ErrTruncated is returned by Reader when the stream ends without its end
// frame: the connection broke or the server failed mid-way.
var ErrTruncated = errors.New("replay: samples stream truncated")

// ErrStream reports a malformed samples stream.
var ErrStream = errors.New("replay: malformed samples stream")

// frame is one element of the stream. Exactly one field is set.
type frame struct {
	Header *Header      `cbor:"1,keyasint,omitempty"`
	Sample *wireSample  `cbor:"2,keyasint,omitempty"`
	Skip   *wireSkip    `cbor:"3,keyasint,omitempty"`
	End    *wireTrailer `cbor:"4,keyasint,omitempty"`
}

// wireSample is a sample.Sample on the wire: every field, payload bytes
// unchanged.
type wireSample struct {
	Stream  string       `cbor:"1,keyasint"`
	Seq     uint64       `cbor:"2,keyasint"`
	T       int64        `cbor:"3,keyasint"`
	SrcT    int64        `cbor:"4,keyasint,omitempty"`
	RecvT   int64        `cbor:"5,keyasint,omitempty"`
	Flags   sample.Flags `cbor:"6,keyasint,omitempty"`
	Lost    uint32       `cbor:"7,keyasint,omitempty"`
	Dropped uint32       `cbor:"8,keyasint,omitempty"`
	Payload []byte       `cbor:"9,keyasint"`
}

// wireSkip is a sample the store could not read.
type wireSkip struct {
	Stream string `cbor:"1,keyasint"`
	Seq    uint64 `cbor:"2,keyasint"`
	T      int64  `cbor:"3,keyasint"`
	Err    string `cbor:"4,keyasint"`
}

// wireTrailer ends a stream: counts, and the error that cut it short.
type wireTrailer struct {
	Samples uint64 `cbor:"1,keyasint"`
	Skipped uint64 `cbor:"2,keyasint"`
	Err     string `cbor:"3,keyasint,omitempty"`
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = (cbor.EncOptions{}).EncMode(); err != nil {
		panic(err)
	}
	if decMode, err = (cbor.DecOptions{}).DecMode(); err != nil {
		panic(err)
	}
}

// Encoder writes a samples stream: a header frame, sample frames, an end
// frame. Each frame is a 4-byte big-endian length followed by one CBOR item.
type Encoder struct {
	w       *bufio.Writer
	n, skip uint64
	buf     []byte
}

// NewEncoder returns an Encoder writing to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{w: bufio.NewWriterSize(w, 64<<10)} }

func (e *Encoder) frame(f frame) error {
	b, err := encMode.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode frame: %w", err)
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("encode frame: %d bytes exceed the %d-byte limit", len(b), MaxFrame)
	}
	e.buf = binary.BigEndian.AppendUint32(e.buf[:0], uint32(len(b)))
	if _, err := e.w.Write(e.buf); err != nil {
		return err
	}
	_, err = e.w.Write(b)
	return err
}

// Header writes the header frame and flushes it.
func (e *Encoder) Header(h Header) error {
	if err := e.frame(frame{Header: &h}); err != nil {
		return err
	}
	return e.w.Flush()
}

// Sample writes one sample, or, when err is not nil, a skipped sample.
func (e *Encoder) Sample(s sample.Sample, err error) error {
	if err != nil {
		e.skip++
		return e.frame(frame{Skip: &wireSkip{Stream: s.Stream, Seq: s.Seq, T: s.T, Err: err.Error()}})
	}
	e.n++
	return e.frame(frame{Sample: &wireSample{
		Stream: s.Stream, Seq: s.Seq, T: s.T, SrcT: s.SrcT, RecvT: s.RecvT,
		Flags: s.Flags, Lost: s.Lost, Dropped: s.Dropped, Payload: s.Payload,
	}})
}

// End writes the end frame (with cause, if not nil) and flushes.
func (e *Encoder) End(cause error) error {
	t := &wireTrailer{Samples: e.n, Skipped: e.skip}
	if cause != nil {
		t.Err = cause.Error()
	}
	if err := e.frame(frame{End: t}); err != nil {
		return err
	}
	return e.w.Flush()
}

// Flush flushes buffered frames.
func (e *Encoder) Flush() error { return e.w.Flush() }

// Reader reads a samples stream written by Encoder.
type Reader struct {
	r      *bufio.Reader
	header Header
	done   bool
	buf    []byte
}

// NewReader reads the header frame from r.
func NewReader(r io.Reader) (*Reader, error) {
	rd := &Reader{r: bufio.NewReaderSize(r, 64<<10)}
	f, err := rd.next()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty", ErrStream)
		}
		return nil, err
	}
	if f.Header == nil {
		return nil, fmt.Errorf("%w: first frame is not a header", ErrStream)
	}
	if f.Header.Format != Format {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrStream, f.Header.Format, Format)
	}
	rd.header = *f.Header
	return rd, nil
}

// Header returns the stream's header.
func (r *Reader) Header() Header { return r.header }

func (r *Reader) next() (frame, error) {
	var lb [4]byte
	if _, err := io.ReadFull(r.r, lb[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return frame{}, io.EOF
		}
		return frame{}, fmt.Errorf("%w: %w", ErrTruncated, err)
	}
	n := binary.BigEndian.Uint32(lb[:])
	if n > MaxFrame {
		return frame{}, fmt.Errorf("%w: frame of %d bytes", ErrStream, n)
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.r, b); err != nil {
		return frame{}, fmt.Errorf("%w: %w", ErrTruncated, err)
	}
	var f frame
	// Unmarshal copies byte strings out of b, so b can be reused.
	if err := decMode.Unmarshal(b, &f); err != nil {
		return frame{}, fmt.Errorf("%w: %w", ErrStream, err)
	}
	return f, nil
}

// SkipError is yielded for a sample the server could not read.
type SkipError struct {
	Stream string
	Seq    uint64
	T      int64
	Msg    string
}

func (e *SkipError) Error() string {
	return fmt.Sprintf("sample %s #%d at %d: %s", e.Stream, e.Seq, e.T, e.Msg)
}

// Samples yields the samples that follow the header. A sample the server
// could not read is yielded as a *SkipError, and iteration goes on. The
// sequence ends with an error (ErrTruncated, ErrStream, or the server's
// reason) if the stream did not end cleanly. It can be ranged over once.
func (r *Reader) Samples() iter.Seq2[sample.Sample, error] {
	return func(yield func(sample.Sample, error) bool) {
		for !r.done {
			f, err := r.next()
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: no end frame", ErrTruncated)
			}
			if err != nil {
				r.done = true
				yield(sample.Sample{}, err)
				return
			}
			switch {
			case f.Sample != nil:
				w := f.Sample
				s := sample.Sample{Stream: w.Stream, Seq: w.Seq, T: w.T, SrcT: w.SrcT, RecvT: w.RecvT,
					Flags: w.Flags, Lost: w.Lost, Dropped: w.Dropped, Payload: w.Payload}
				if s.Payload == nil {
					s.Payload = []byte{}
				}
				if !yield(s, nil) {
					return
				}
			case f.Skip != nil:
				s := sample.Sample{Stream: f.Skip.Stream, Seq: f.Skip.Seq, T: f.Skip.T}
				if !yield(s, &SkipError{Stream: s.Stream, Seq: s.Seq, T: s.T, Msg: f.Skip.Err}) {
					return
				}
			case f.End != nil:
				r.done = true
				if f.End.Err != "" {
					yield(sample.Sample{}, fmt.Errorf("server: %s", f.End.Err))
				}
				return
			default:
				r.done = true
				yield(sample.Sample{}, fmt.Errorf("%w: unexpected frame", ErrStream))
				return
			}
		}
	}
}

// SamplesHandler serves
//
//	GET /v1/episodes/{id}/samples?streams=GLOB&from=DURATION&to=DURATION
//
// the episode's samples as a stream of length-prefixed CBOR frames
// (ContentType): a Header (the episode, the absolute range, every selected
// stream's descriptor versions), then every sample in (T, stream, seq)
// order with its exact payload, Seq, T, SrcT, RecvT and flags, then an end
// frame with the counts. from and to are Go durations from the start of the
// episode window; to defaults to its end. {id} comes from the route's path
// value. An unknown episode is 404, a recording one 409, a bad pattern or
// range 400. Read it with NewReader.
func SamplesHandler(src Source, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "replay")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		q := r.URL.Query()
		sel := Selection{Streams: q.Get("streams")}
		var errs []error
		for _, p := range []struct {
			name string
			d    *time.Duration
		}{{"from", &sel.From}, {"to", &sel.To}} {
			v := q.Get(p.name)
			if v == "" {
				continue
			}
			d, err := time.ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a duration such as 1m30s", p.name, v))
				continue
			}
			*p.d = d
		}
		if err := errors.Join(errs...); err != nil {
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		h, samples, err := Open(src, id, sel)
		switch {
		case errors.Is(err, ErrNotFound):
			httpjson.Error(w, http.StatusNotFound, fmt.Sprintf("episode %s not found", id))
			return
		case errors.Is(err, ErrRecording):
			httpjson.Error(w, http.StatusConflict, fmt.Sprintf("episode %s is still recording; stop it before replaying", id))
			return
		case errors.Is(err, ErrSelection):
			httpjson.Error(w, http.StatusBadRequest, err.Error())
			return
		case err != nil:
			httpjson.Error(w, http.StatusInternalServerError, err.Error())
			return
		}
		w.Header().Set("Content-Type", ContentType)
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		enc := NewEncoder(w)
		fl, _ := w.(http.Flusher)
		start := time.Now()
		werr := enc.Header(h)
		if werr == nil && fl != nil {
			fl.Flush()
		}
		for s, err := range samples {
			if werr != nil {
				break
			}
			if cerr := r.Context().Err(); cerr != nil {
				werr = cerr
				break
			}
			if err != nil {
				log.Warn("unreadable sample skipped", "episode", id, "stream", s.Stream, "seq", s.Seq, "err", err)
			}
			werr = enc.Sample(s, err)
		}
		if werr == nil {
			werr = enc.End(nil)
		}
		if werr != nil {
			// The client went away or the connection broke; nothing more
			// can be said to it.
			log.Info("samples stream aborted", "episode", id, "sent", enc.n, "err", werr)
			return
		}
		log.Info("samples streamed", "episode", id, "samples", enc.n, "skipped", enc.skip,
			"streams", len(h.Streams), "took", time.Since(start).Round(time.Millisecond))
	})
}
