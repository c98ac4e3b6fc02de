package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/episoded/episoded/internal/sim"
)

// cmdSimulate runs the simulated factory cell (internal/sim) until SIGINT
// or SIGTERM, printing what it serves.
func cmdSimulate(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("simulate", "simulate [flags]", stdout, stderr)
	rtspAddr := fs.String("rtsp", sim.DefaultRTSPAddr, "RTSP listen address (port 0 picks a free port)")
	mqttAddr := fs.String("mqtt", sim.DefaultMQTTAddr, "MQTT broker listen address (port 0 picks a free port)")
	cameras := fs.Int("cameras", sim.DefaultCameras, "number of cameras (rtsp://ADDR/cam1 ...)")
	offset := fs.Duration("clock-offset", 500*time.Millisecond, "each device's clock offset is drawn from ±this (per device, from --seed)")
	drift := fs.Float64("clock-drift", 30, "each device's clock drift is drawn from ±this many ppm")
	jitter := fs.Duration("jitter", 2*time.Millisecond, "mean one-way delay from capture to send (exponential)")
	loss := fs.Float64("loss", 0, "probability that a camera drops each RTP packet")
	var outages []sim.Outage
	fs.Func("outage", "camera outage CAMERA@START+DURATION, e.g. cam1@20s+3s (repeatable)", func(v string) error {
		o, err := sim.ParseOutage(v)
		if err == nil {
			outages = append(outages, o)
		}
		return err
	})
	seed := fs.Uint64("seed", 1, "seed for device clocks, delays and losses")
	trigFirst := fs.Duration("trigger-first", sim.DefaultTriggerFirst, "when the first episode starts")
	trigPeriod := fs.Duration("trigger-period", sim.DefaultTriggerPeriod, "episode start-to-start interval (0: no triggers)")
	trigOn := fs.Duration("trigger-on", sim.DefaultTriggerOn, "how long each episode lasts")
	cfgOut := fs.String("config", "", "write a daemon config that records this cell to `FILE` (for episoded run --config FILE)")
	dataDir := fs.String("data-dir", "demo-data/store", "storage.dir written to --config")
	uploadDir := fs.String("upload-dir", "demo-data/upload", "dir upload target written to --config")
	listen := fs.String("listen", "127.0.0.1:7480", "api.listen written to --config")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error (logs go to stderr)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "episoded simulate: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if *cameras < 1 {
		fmt.Fprintf(stderr, "episoded simulate: --cameras %d: need at least 1\n", *cameras)
		return exitUsage
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "episoded simulate: --log-level: %v\n", err)
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *trigPeriod == 0 {
		*trigPeriod = -1 // sim: negative disables
	}
	s, err := sim.New(sim.Options{
		RTSPAddr: *rtspAddr, MQTTAddr: *mqttAddr, Cameras: *cameras,
		ClockOffset: *offset, ClockDriftPPM: *drift, Jitter: *jitter, Loss: *loss, Outages: outages, Seed: *seed,
		TriggerFirst: *trigFirst, TriggerPeriod: *trigPeriod, TriggerOn: *trigOn,
		Logger: log,
	})
	if err != nil {
		fmt.Fprintf(stderr, "episoded simulate: %s\n", oneLine(err))
		return exitUsage
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		fmt.Fprintf(stderr, "episoded simulate: %s\n", oneLine(err))
		return exitFailure
	}
	if *cfgOut != "" {
		if err := writeSimConfig(s, *cfgOut, *dataDir, *uploadDir, *listen); err != nil {
			stop()
			<-done
			fmt.Fprintf(stderr, "episoded simulate: %v\n", err)
			return exitFailure
		}
	}
	printSim(stdout, s, *cfgOut, *jitter, *loss, outages, *trigPeriod, *trigOn)

	if err := <-done; err != nil {
		fmt.Fprintf(stderr, "episoded simulate: %s\n", oneLine(err))
		return exitFailure
	}
	fmt.Fprintln(stdout, "simulated cell stopped")
	return exitOK
}

func writeSimConfig(s *sim.Sim, path, dataDir, uploadDir, listen string) error {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	// The dir target must exist (it may be an NFS mount the daemon should
	// not create); for the simulated cell, create it.
	if err := os.MkdirAll(uploadDir, 0o755); err != nil {
		return fmt.Errorf("create upload dir: %w", err)
	}
	if err := os.WriteFile(path, []byte(s.Config(abs(dataDir), abs(uploadDir), listen)), 0o644); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

func printSim(w io.Writer, s *sim.Sim, cfgOut string, jitter time.Duration, loss float64, outages []sim.Outage, period, on time.Duration) {
	clock := func(dev string) string {
		c, _ := s.Clock(dev)
		return fmt.Sprintf("clock %+.3fs %+.1fppm", c.Offset.Seconds(), c.DriftPPM())
	}
	fmt.Fprintf(w, "episoded simulate: a simulated factory cell (Ctrl-C to stop)\n\nRTSP cameras (H.264 30 fps over TCP):\n")
	for i, u := range s.CameraURLs() {
		fmt.Fprintf(w, "  %-40s %s\n", u, clock(s.Devices()[i]))
	}
	fmt.Fprintf(w, "\nMQTT broker: tcp://%s\n", s.MQTTAddr())
	fmt.Fprintf(w, "  %-28s JSON, 200 Hz, %s\n", sim.TopicJointStates, clock(sim.DeviceRobot))
	fmt.Fprintf(w, "  %-28s CBOR, 50 Hz, %s\n", sim.TopicGripper, clock(sim.DeviceGripper))
	fmt.Fprintf(w, "  %-28s point cloud, 10 Hz, %d B, %s\n", sim.TopicLidar, sim.LidarHeaderSize+sim.DefaultLidarPoints*sim.LidarStride, clock(sim.DeviceLidar))
	if period > 0 {
		fmt.Fprintf(w, "  %-28s start every %s, stop %s later\n", sim.TopicTrigger, period, on)
	} else {
		fmt.Fprintf(w, "  %-28s (no triggers)\n", sim.TopicTrigger)
	}
	var outs []string
	for _, o := range outages {
		outs = append(outs, o.String())
	}
	if len(outs) == 0 {
		outs = []string{"none"}
	}
	fmt.Fprintf(w, "\nFaults: delay %s mean, RTP loss %g, outages %s\n", jitter, loss, strings.Join(outs, ", "))
	if cfgOut != "" {
		fmt.Fprintf(w, "\nRecord it: episoded run --config %s\n", cfgOut)
	}
}
