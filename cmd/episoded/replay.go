package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os/signal"
	"syscall"

	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/internal/replay"
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

	// The source: a store opened here, or the daemon's samples endpoint.
	po := replay.PlayOptions{ID: id, Selection: sel, StoreDir: *storeDir, Resolve: daemon.ResolveEpisodeID,
		Rate: *rate, Loop: *loop, TopicPrefix: *prefix, MQTTURL: *mqttURL, RTSPAddr: *rtspAddr, WaitReaders: *waitReaders,
		Stdout: stdout, Stderr: stderr, Logger: log}
	if *storeDir == "" {
		c, err := cf.client()
		if err != nil {
			return fail(err)
		}
		po.Get = func(_ context.Context, path string) (io.ReadCloser, error) {
			resp, err := c.do("GET", path, nil)
			if err != nil {
				if errors.Is(err, errUnreachable) {
					return nil, fmt.Errorf("%w (to read a store directly, without a daemon, use --store DIR)", err)
				}
				return nil, err
			}
			return resp.Body, nil
		}
	}
	sum, err := replay.Play(ctx, po)
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
