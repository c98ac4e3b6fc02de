package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/episoded/episoded/devices/mqtt"
	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/internal/replay"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

const replaySynopsis = "replay ID [--rate R] [--loop] [--from DURATION] [--to DURATION] [--streams GLOB]\n" +
	"         [--mqtt URL] [--topic-prefix P] [--rtsp ADDR] [--wait-readers] [-o text|json]\n" +
	"         [--store DIR | --api URL --token-file FILE | --config FILE]\n\n" +
	"Replays a stored episode: telemetry and lidar are published to the MQTT broker\n" +
	"given with --mqtt (QoS 1, original topics and payloads), cameras are served at\n" +
	"rtsp://ADDR/<stream>, all with the original timing scaled by --rate. Samples\n" +
	"come from the running daemon's API, or with --store straight from a store\n" +
	"directory no daemon is using. Ctrl-C stops; a summary reports what was sent\n" +
	"and the timing error (actual minus intended send time)."

// cmdReplay implements `episoded replay`.
func cmdReplay(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("replay", replaySynopsis, stdout, stderr)
	rate := fs.Float64("rate", 1.0, "time scale: 2 replays twice as fast")
	loop := fs.Bool("loop", false, "replay again and again until stopped")
	from := fs.Duration("from", 0, "start at this offset from the start of the episode window")
	to := fs.Duration("to", 0, "stop at this offset from the start of the episode window (default its end)")
	streams := fs.String("streams", "", "replay only streams whose id matches this pattern (* matches across /: 'cell1/*' selects every stream of cell1)")
	mqttURL := fs.String("mqtt", "", "MQTT broker to publish telemetry and lidar to, e.g. tcp://127.0.0.1:1883 (user:password@ in the URL is used to log in)")
	prefix := fs.String("topic-prefix", "", "publish under PREFIX/<original topic>")
	rtspAddr := fs.String("rtsp", rtsp.DefaultServerAddr, "address to serve cameras on, as rtsp://ADDR/<stream>")
	waitReaders := fs.Bool("wait-readers", false, "start the clock only once every camera has an RTSP reader")
	storeDir := fs.String("store", "", "read the episode from this store directory instead of the daemon (the daemon must not be running on it)")
	out := addOutputFlag(fs, "text")
	asJSON := fs.Bool("json", false, "same as -o json (kept for old scripts)")
	verbose := fs.Bool("v", false, "log progress to stderr")
	cf := addClientFlags(fs)
	if code, ok := parse(fs, interspersed(fs, args)); !ok {
		return code
	}
	if !checkOutput(*out, stderr, "text", "json") {
		return exitUsage
	}
	*asJSON = *asJSON || *out == "json"
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "episoded replay: need exactly one episode ID")
		return exitUsage
	}
	id := fs.Arg(0)
	sel := replay.Selection{Streams: *streams, From: *from, To: *to}
	var errs []error
	if err := sel.Validate(); err != nil {
		errs = append(errs, err)
	}
	if !(*rate > 0) {
		errs = append(errs, fmt.Errorf("--rate %v: must be positive", *rate))
	}
	if *mqttURL != "" {
		if u, err := url.Parse(*mqttURL); err != nil || u.Host == "" {
			errs = append(errs, fmt.Errorf("--mqtt %q: not a broker URL such as tcp://127.0.0.1:1883", redact.URL(*mqttURL)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "episoded replay: %s\n", oneLine(err))
		return exitUsage
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	fail := func(err error) int {
		fmt.Fprintf(stderr, "episoded replay: %s\n", oneLine(err))
		return exitFailure
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// The source: the daemon's samples endpoint, or a store opened here.
	var open replay.Opener
	if *storeDir != "" {
		st, err := openStoreReadOnly(*storeDir, log)
		if err != nil {
			return fail(err)
		}
		defer st.Close()
		// A unique prefix becomes the full id; an unknown id is left for
		// the opener to report.
		full, err := daemon.ResolveEpisodeID(st, id)
		if errors.Is(err, storage.ErrNotFound) {
			full, err = id, nil
		}
		if err != nil {
			return fail(err)
		}
		open = replay.StoreOpener(st, full, sel)
	} else {
		c, err := cf.client()
		if err != nil {
			return fail(err)
		}
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
		open = replay.ReaderOpener(func(context.Context) (io.ReadCloser, error) {
			resp, err := c.do("GET", path, nil)
			if err != nil {
				if errors.Is(err, errUnreachable) {
					return nil, fmt.Errorf("%w (to read a store directly, without a daemon, use --store DIR)", err)
				}
				return nil, err
			}
			return resp.Body, nil
		})
	}

	// Open the first pass now: an unknown or recording episode is reported
	// before anything connects or listens.
	h, first, closeFirst, err := open(ctx)
	if err != nil {
		return fail(err)
	}
	firstUsed := false
	player := func(ctx context.Context) (replay.Header, iter.Seq2[sample.Sample, error], func(), error) {
		if !firstUsed {
			firstUsed = true
			return h, first, closeFirst, nil
		}
		return open(ctx)
	}
	var needMQTT, needRTSP bool
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

	o := replay.Options{Rate: *rate, Loop: *loop, TopicPrefix: *prefix, Logger: log}
	if needMQTT && *mqttURL == "" {
		fmt.Fprintln(stderr, "episoded replay: note: no --mqtt broker given, telemetry and lidar streams are not replayed")
	}
	if needMQTT && *mqttURL != "" {
		pub, err := mqtt.NewPublisher(mqtt.PublisherOptions{URL: *mqttURL, Logger: log})
		if err != nil {
			closeFirst()
			return fail(err)
		}
		if err := pub.Connect(ctx); err != nil {
			closeFirst()
			return fail(err)
		}
		defer pub.Close(replay.DefaultAckTimeout)
		o.MQTT = pub
	}
	var outs []*rtsp.OutStream
	if needRTSP {
		srv, err := rtsp.NewServer(rtsp.ServerOptions{Addr: *rtspAddr, Logger: log})
		if err == nil {
			err = srv.Start()
		}
		if err != nil {
			closeFirst()
			return fail(err)
		}
		defer srv.Close()
		o.Video = func(stream string, d sample.Descriptor) (replay.VideoStream, error) {
			out, err := srv.AddStream(stream, d)
			if err != nil {
				return nil, err
			}
			outs = append(outs, out)
			return out, nil
		}
	}
	o.BeforeStart = func(ctx context.Context, h replay.Header) error {
		for _, out := range outs {
			fmt.Fprintf(stdout, "serving %s\n", out.URL())
		}
		if o.MQTT != nil {
			fmt.Fprintf(stdout, "publishing to %s\n", redact.URL(*mqttURL))
		}
		if *waitReaders && len(outs) > 0 {
			fmt.Fprintln(stdout, "waiting for an RTSP reader on every camera (Ctrl-C to stop)")
			if err := rtsp.WaitPlayed(ctx, outs...); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "replaying episode %s (%s at rate %g)\n", h.Episode.ID, h.Duration().Round(time.Millisecond), *rate)
		return nil
	}
	p, err := replay.New(o)
	if err != nil {
		closeFirst()
		return fail(err)
	}
	sum, err := p.Run(ctx, player)
	if sum != nil {
		if *asJSON {
			printJSON(stdout, sum)
		} else {
			sum.WriteText(stdout)
		}
	}
	if err != nil {
		return fail(err)
	}
	if sum.Failed() {
		fmt.Fprintln(stderr, "episoded replay: some samples did not reach their sink (see FAILED)")
		return exitFailure
	}
	return exitOK
}

// openStoreReadOnly opens an existing store for reading. It refuses a
// directory that is not a store rather than initialising one.
func openStoreReadOnly(dir string, log *slog.Logger) (*storage.Store, error) {
	if _, err := os.Stat(filepath.Join(dir, "EPISODED")); err != nil {
		return nil, fmt.Errorf("open store %s: not an episoded store (no EPISODED marker)", dir)
	}
	st, err := storage.Open(storage.Options{Dir: dir, MinFree: -1, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("%w (if the daemon is running on it, leave out --store to replay through its API)", err)
	}
	return st, nil
}
