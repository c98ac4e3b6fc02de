package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/episoded/episoded/devices/mqtt"
	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// PlayOptions configure Play: one `episoded replay` run. cmd/episoded
// fills them from its flags.
type PlayOptions struct {
	// ID is the episode to replay; with StoreDir it may be a unique
	// prefix of its id (see Resolve).
	ID        string
	Selection Selection
	// StoreDir, if set, reads the episode from this store directory, which
	// no daemon may be using. Resolve, if set, turns ID into the full id
	// (an unknown id is left for the opener to report).
	StoreDir string
	Resolve  func(st *storage.Store, id string) (string, error)
	// Get, used without StoreDir, issues a GET of path (SamplesPath) to the
	// daemon's API and returns the response body.
	Get func(ctx context.Context, path string) (io.ReadCloser, error)

	// Rate, Loop and TopicPrefix as in Options.
	Rate        float64
	Loop        bool
	TopicPrefix string
	// MQTTURL is the broker telemetry and lidar go to; empty replays none
	// of them (a note says so).
	MQTTURL string
	// RTSPAddr is the address cameras are served on, as rtsp://ADDR/<stream>.
	RTSPAddr string
	// WaitReaders starts the clock only once every camera has a reader.
	WaitReaders bool

	// Stdout receives the progress lines (what is served where, the
	// start); Stderr the notes to the operator. Nil discards them.
	Stdout, Stderr io.Writer
	Logger         *slog.Logger
}

// Play replays one episode as `episoded replay` does: it opens the source
// (StoreDir or Get) and reads the first pass's header, so that an unknown
// or recording episode is reported before anything connects or listens;
// starts only the sinks the selected streams need (an MQTT publisher, an
// RTSP server); runs a Player until the selection has played or ctx is
// cancelled; and closes everything. The summary is as Player.Run's.
func Play(ctx context.Context, o PlayOptions) (*Summary, error) {
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	open, closeSource, err := o.opener()
	if err != nil {
		return nil, err
	}
	defer closeSource()

	h, first, closeFirst, err := open(ctx)
	if err != nil {
		return nil, err
	}
	po, closeSinks, err := o.sinks(ctx, h)
	if err != nil {
		closeFirst()
		return nil, err
	}
	defer closeSinks()
	p, err := New(po)
	if err != nil {
		closeFirst()
		return nil, err
	}
	return p.Run(ctx, firstThen(h, first, closeFirst, open))
}

// firstThen is an Opener that yields the pass already opened first, then
// reopens with open.
func firstThen(h Header, first iter.Seq2[sample.Sample, error], closeFirst func(), open Opener) Opener {
	used := false
	return func(ctx context.Context) (Header, iter.Seq2[sample.Sample, error], func(), error) {
		if !used {
			used = true
			return h, first, closeFirst, nil
		}
		return open(ctx)
	}
}

// sinks starts the sinks the streams of h need, and returns the Player's
// options with them and what closes them: an MQTT publisher for anything
// that is not video (if MQTTURL is set; a note says so if not), an RTSP
// server for H.264 and H.265 video.
func (o PlayOptions) sinks(ctx context.Context, h Header) (Options, func(), error) {
	po := Options{Rate: o.Rate, Loop: o.Loop, TopicPrefix: o.TopicPrefix, Logger: o.Logger}
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	needMQTT, needRTSP := sinksNeeded(h)
	if needMQTT && o.MQTTURL == "" {
		fmt.Fprintln(o.Stderr, "episoded replay: note: no --mqtt broker given, telemetry and lidar streams are not replayed")
	}
	if needMQTT && o.MQTTURL != "" {
		pub, err := mqtt.NewPublisher(mqtt.PublisherOptions{URL: o.MQTTURL, Logger: o.Logger})
		if err == nil {
			err = pub.Connect(ctx)
		}
		if err != nil {
			return po, nil, err
		}
		closers = append(closers, func() { pub.Close(DefaultAckTimeout) })
		po.MQTT = pub
	}
	var outs []*rtsp.OutStream
	if needRTSP {
		srv, err := rtsp.NewServer(rtsp.ServerOptions{Addr: o.RTSPAddr, Logger: o.Logger})
		if err == nil {
			err = srv.Start()
		}
		if err != nil {
			closeAll()
			return po, nil, err
		}
		closers = append(closers, srv.Close)
		po.Video = func(stream string, d sample.Descriptor) (VideoStream, error) {
			out, err := srv.AddStream(stream, d)
			if err != nil {
				return nil, err
			}
			outs = append(outs, out)
			return out, nil
		}
	}
	po.BeforeStart = func(ctx context.Context, h Header) error {
		for _, out := range outs {
			fmt.Fprintf(o.Stdout, "serving %s\n", out.URL())
		}
		if po.MQTT != nil {
			fmt.Fprintf(o.Stdout, "publishing to %s\n", redact.URL(o.MQTTURL))
		}
		if o.WaitReaders && len(outs) > 0 {
			fmt.Fprintln(o.Stdout, "waiting for an RTSP reader on every camera (Ctrl-C to stop)")
			if err := rtsp.WaitPlayed(ctx, outs...); err != nil {
				return err
			}
		}
		fmt.Fprintf(o.Stdout, "replaying episode %s (%s at rate %g)\n", h.Episode.ID, h.Duration().Round(time.Millisecond), po.Rate)
		return nil
	}
	return po, closeAll, nil
}

// opener returns the Opener of o's source and what releases it.
func (o PlayOptions) opener() (Opener, func(), error) {
	if o.StoreDir == "" {
		if o.Get == nil {
			return nil, nil, errors.New("replay: no source: neither a store directory nor the daemon's API")
		}
		path := SamplesPath(o.ID, o.Selection)
		return ReaderOpener(func(ctx context.Context) (io.ReadCloser, error) { return o.Get(ctx, path) }), func() {}, nil
	}
	st, err := OpenStore(o.StoreDir, o.Logger)
	if err != nil {
		return nil, nil, err
	}
	id := o.ID
	if o.Resolve != nil {
		full, err := o.Resolve(st, id)
		switch {
		case errors.Is(err, storage.ErrNotFound):
		case err != nil:
			st.Close()
			return nil, nil, err
		default:
			id = full
		}
	}
	return StoreOpener(st, id, o.Selection), func() { st.Close() }, nil
}

// sinksNeeded reports which sinks the streams of h need at its start:
// MQTT for anything that is not video, RTSP for H.264 and H.265 video.
func sinksNeeded(h Header) (needMQTT, needRTSP bool) {
	for _, si := range h.Streams {
		d := si.At(h.From)
		switch {
		case d == nil:
		case d.Kind == sample.KindVideo:
			needRTSP = needRTSP || d.Codec == sample.CodecH264 || d.Codec == sample.CodecH265
		default:
			needMQTT = true
		}
	}
	return needMQTT, needRTSP
}

// SamplesPath is the API path of an episode's samples stream with sel
// (SamplesHandler's route, GET /v1/episodes/{id}/samples).
func SamplesPath(id string, sel Selection) string {
	q := url.Values{}
	if sel.Streams != "" {
		q.Set("streams", sel.Streams)
	}
	if sel.From != 0 {
		q.Set("from", sel.From.String())
	}
	if sel.To != 0 {
		q.Set("to", sel.To.String())
	}
	path := "/v1/episodes/" + url.PathEscape(id) + "/samples"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return path
}

// OpenStore opens an existing store directory for reading. It refuses a
// directory that is not a store rather than initialising one.
func OpenStore(dir string, log *slog.Logger) (*storage.Store, error) {
	if _, err := os.Stat(filepath.Join(dir, "EPISODED")); err != nil {
		return nil, fmt.Errorf("open store %s: not an episoded store (no EPISODED marker)", dir)
	}
	st, err := storage.Open(storage.Options{Dir: dir, MinFree: -1, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("%w (if the daemon is running on it, leave out --store to replay through its API)", err)
	}
	return st, nil
}
