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
	rtspAddr := fs.String("rtsp", "127.0.0.1:0", "simulated cameras' RTSP listen address (port 0 picks a free port)")
	mqttAddr := fs.String("mqtt", "127.0.0.1:0", "simulated cell's MQTT broker listen address (port 0 picks a free port)")
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
		RTSPAddr: *rtspAddr, MQTTAddr: *mqttAddr, Cameras: *cameras,
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
	tally := newDemoTally()
	d.OnEpisode = func(e episode.Episode) {
		mu.Lock()
		defer mu.Unlock()
		tally.see(e)
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

	interrupted := false
	var timeUp <-chan time.Time
	if *duration > 0 {
		timeUp = time.After(*duration)
	}
	select {
	case err := <-runDone:
		fmt.Fprintf(stderr, "episoded demo: %v\n", oneLine(err))
		return exitFailure
	case <-ctx.Done():
		interrupted = true
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
	mu.Lock()
	defer mu.Unlock()
	tally.summary(stdout, central, interrupted)
	return exitOK
}

// demoTally remembers the last state the demo saw of each episode, so that
// the summary after Ctrl-C says what was and was not uploaded.
type demoTally struct {
	order []string
	state map[string]episode.State
}

func newDemoTally() *demoTally { return &demoTally{state: map[string]episode.State{}} }

func (t *demoTally) see(e episode.Episode) {
	if _, ok := t.state[e.ID]; !ok {
		t.order = append(t.order, e.ID)
	}
	t.state[e.ID] = e.State
}

// summary prints what this run recorded and uploaded, naming every
// episode that was not uploaded.
func (t *demoTally) summary(w io.Writer, central string, interrupted bool) {
	var uploaded int
	var pending []string
	for _, id := range t.order {
		if t.state[id] == episode.Uploaded {
			uploaded++
		} else {
			pending = append(pending, fmt.Sprintf("%s (%s)", id, t.state[id]))
		}
	}
	fmt.Fprintf(w, "stopped. This run closed %d episode(s); %d uploaded", len(t.order), uploaded)
	if uploaded > 0 {
		fmt.Fprintf(w, " (under %s; open an episode.mcap in Foxglove)", central)
	}
	fmt.Fprintln(w, ".")
	if len(pending) > 0 {
		fmt.Fprintf(w, "not uploaded: %s; they stay in the store and upload on the next run.\n", strings.Join(pending, ", "))
	}
	if interrupted {
		fmt.Fprintln(w, "An episode still recording at Ctrl-C is closed as interrupted on the next run, and is not counted here.")
	}
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
