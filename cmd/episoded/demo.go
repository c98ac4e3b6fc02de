package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/sim"
	"github.com/episoded/episoded/sync/upload"
)

// cmdDemo runs the simulated cell and the daemon recording it in one
// process: storage under --dir, uploads to a dir target at DIR/central,
// the API and dashboard on --listen.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("demo", "demo [flags]", stdout, stderr)
	dir := fs.String("dir", "demo-data", "where the demo keeps its store and its uploads (reused by the next run)")
	listen := fs.String("listen", "127.0.0.1:7480", "API and dashboard address")
	duration := fs.Duration("duration", 0, "stop by itself after this long, closing, exporting and uploading what was recorded (0: run until Ctrl-C)")
	cameras := fs.Int("cameras", sim.DefaultCameras, "number of simulated cameras")
	verbose := fs.Bool("v", false, "log the daemon's and simulator's info lines (default: warnings only)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintf(stderr, "episoded demo: %v\n", err)
		return exitUsage
	}
	s, err := sim.New(sim.Options{
		RTSPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Cameras: *cameras,
		ClockOffset: 500 * time.Millisecond, ClockDriftPPM: 30, Jitter: 2 * time.Millisecond, Seed: 1,
		// The first episode starts once the clock estimators have had a
		// few seconds of evidence, so its pre-roll is aligned too.
		TriggerFirst: 6 * time.Second,
		Logger:       log.With("component", "sim"),
	})
	if err != nil {
		fmt.Fprintf(stderr, "episoded demo: %v\n", err)
		return exitFailure
	}
	simCtx, stopSim := context.WithCancel(context.Background())
	simDone := make(chan error, 1)
	go func() { simDone <- s.Run(simCtx) }()
	defer func() { stopSim(); <-simDone }()
	select {
	case <-s.Ready():
	case err := <-simDone:
		fmt.Fprintf(stderr, "episoded demo: simulator: %v\n", err)
		return exitFailure
	}

	central := filepath.Join(abs, "central")
	if err := os.MkdirAll(central, 0o755); err != nil {
		fmt.Fprintf(stderr, "episoded demo: %v\n", err)
		return exitFailure
	}
	yaml := s.Config(filepath.Join(abs, "store"), central, *listen)
	cfg, err := config.Parse("demo config", []byte(yaml), os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "episoded demo: %v\n", err)
		return exitFailure
	}
	d := daemon.New(cfg, log, nil)
	var mu sync.Mutex
	d.OnEpisode = func(e episode.Episode) {
		mu.Lock()
		defer mu.Unlock()
		printEpisodeLine(stdout, e, central, cfg)
	}

	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	runDone := make(chan error, 1)
	go func() { runDone <- d.Run(runCtx) }()
	select {
	case <-d.Ready():
	case err := <-runDone:
		fmt.Fprintf(stderr, "episoded demo: %v\n", oneLine(err))
		return exitFailure
	}
	fmt.Fprintf(stdout, `episoded demo: a simulated robot cell (%d cameras, a 6-axis robot, a gripper, a lidar) is being recorded.
  dashboard and API   http://%s/   (try: episoded episodes list --api http://%[2]s)
  status              http://%[2]s/v1/status
  metrics             http://%[2]s/metrics
  store               %s
  uploaded episodes   %s
  cameras             %s
  MQTT broker         tcp://%s (topics: %s)
An episode of a pick-and-place task starts every %s; each prints a line when it closes and when it uploads.
`, *cameras, d.Addr(), filepath.Join(abs, "store"), central, strings.Join(s.CameraURLs(), " "), s.MQTTAddr(), strings.Join(s.Topics(), ", "), sim.DefaultTriggerPeriod)
	if *duration > 0 {
		fmt.Fprintf(stdout, "Stopping by itself after %s.\n", *duration)
	} else {
		fmt.Fprintln(stdout, "Press Ctrl-C to stop.")
	}

	var timeUp <-chan time.Time
	if *duration > 0 {
		timeUp = time.After(*duration)
	}
	select {
	case err := <-runDone:
		fmt.Fprintf(stderr, "episoded demo: %v\n", oneLine(err))
		return exitFailure
	case <-ctx.Done():
		fmt.Fprintln(stdout, "stopping...")
	case <-timeUp:
		fmt.Fprintln(stdout, "time is up: closing, exporting and uploading what was recorded...")
		fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := d.Finish(fctx)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "episoded demo: %v\n", err)
			cancelRun()
			<-runDone
			return exitFailure
		}
	}
	cancelRun()
	if err := <-runDone; err != nil {
		fmt.Fprintf(stderr, "episoded demo: %v\n", oneLine(err))
		return exitFailure
	}
	fmt.Fprintf(stdout, "stopped. Uploaded episodes are under %s; open an episode.mcap in Foxglove.\n", central)
	return exitOK
}

// printEpisodeLine prints one line per closed or uploaded episode.
func printEpisodeLine(w io.Writer, e episode.Episode, central string, cfg *config.Config) {
	switch e.State {
	case episode.Uploaded:
		dir := filepath.Join(central, filepath.FromSlash(upload.Dir(cfg.Sync.Target.Prefix, cfg.Gateway.Site, cfg.Gateway.ID, e)))
		fmt.Fprintf(w, "uploaded  %s -> %s\n", e.ID, dir)
	default:
		q := append([]episode.StreamReport(nil), e.Quality...)
		sort.Slice(q, func(i, j int) bool { return q[i].Stream < q[j].Stream })
		var parts []string
		var bound float64
		for _, r := range q {
			parts = append(parts, fmt.Sprintf("%s=%d", r.Stream, r.Samples))
			bound = max(bound, r.AlignmentErrorBoundMs)
		}
		fmt.Fprintf(w, "%-9s %s  %s  %s  %s  align<=%.2fms  [%s]\n", e.State, e.ID, e.Task,
			time.Duration(e.Stop-e.Start).Round(10*time.Millisecond), qualityName(e), bound, strings.Join(parts, " "))
		if e.Verdict != nil {
			for _, r := range e.Verdict.Reasons {
				fmt.Fprintf(w, "          %s %s: %s\n", r.Code, r.Stream, r.Detail)
			}
		}
	}
}
