// Package daemon wires episoded together: it builds every component from the
// config, starts them in order and stops them in reverse. It is imported only
// by cmd/episoded.
//
// Lifecycle of Run:
//  1. prepare: open what can fail fast (data dir, store, listeners). Any
//     error here is a start-up failure and Run returns it.
//  2. start the components downstream first (storage before the devices
//     that feed it), each in its own goroutine with its own context.
//  3. report ready: /readyz turns 200 and systemd gets READY=1; the
//     watchdog is pinged while the daemon is healthy.
//  4. on cancellation (SIGTERM/SIGINT) or a component failing: STOPPING=1,
//     then cancel components upstream first, waiting for each, all within
//     the shutdown timeout.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/episoded/episoded/internal/api"
	"github.com/episoded/episoded/internal/buildinfo"
	"github.com/episoded/episoded/internal/config"
)

// Daemon is a configured episoded.
type Daemon struct {
	cfg    *config.Config
	log    *slog.Logger
	reg    *prometheus.Registry
	api    *api.Server
	notify Notifier
	comps  []component
}

// component is one long-running part of the daemon.
type component struct {
	name string
	// run blocks until ctx is cancelled and then drains; an error return
	// before cancellation stops the whole daemon.
	run func(ctx context.Context) error
}

// Notifier reports lifecycle states to the service manager.
type Notifier interface {
	Ready()
	Stopping()
	// WatchdogInterval is how often to ping; 0 disables the watchdog.
	WatchdogInterval() time.Duration
	Watchdog()
}

// New builds a daemon from a validated config. It opens nothing.
func New(cfg *config.Config, log *slog.Logger, notify Notifier) *Daemon {
	if notify == nil {
		notify = Systemd{}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := buildinfo.Get()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "episoded_build_info",
		Help: "Build information; the value is always 1.",
	}, []string{"version", "commit", "goversion"})
	buildInfo.WithLabelValues(bi.Version, bi.Commit, bi.GoVersion).Set(1)
	reg.MustRegister(buildInfo)

	d := &Daemon{cfg: cfg, log: log, reg: reg, notify: notify}
	d.api = api.New(api.Options{
		Listen:          cfg.API.Listen,
		Token:           cfg.API.Token.Value(),
		Gatherer:        reg,
		Logger:          log,
		ShutdownTimeout: cfg.ShutdownTimeout / 2,
		Info: map[string]any{
			"version": bi.Version,
			"commit":  bi.Commit,
			"gateway": cfg.Gateway.ID,
			"site":    cfg.Gateway.Site,
		},
	})
	return d
}

// Addr returns the API's bound address once Run has prepared it.
func (d *Daemon) Addr() string { return d.api.Addr() }

// Run prepares, starts and runs the daemon until ctx is cancelled, then
// stops it. It returns nil after a clean stop.
func (d *Daemon) Run(ctx context.Context) error {
	if err := d.prepare(); err != nil {
		return err
	}
	return d.runComponents(ctx)
}

// prepare does everything that can fail fast, before anything runs.
func (d *Daemon) prepare() error {
	if err := prepareDataDir(d.cfg.Storage.Dir); err != nil {
		return err
	}
	if err := d.api.Listen(); err != nil {
		return err
	}
	// Downstream first: the API runs last so it never serves a half-built
	// daemon, and stops first.
	d.comps = append(d.comps, component{name: "api", run: d.api.Run})
	return nil
}

// prepareDataDir makes sure the data directory exists and is writable.
func prepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("data dir %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(filepath.Clean(name))
}

type exit struct {
	name string
	err  error
}

func (d *Daemon) runComponents(ctx context.Context) error {
	exits := make(chan exit, len(d.comps))
	cancels := make([]context.CancelFunc, len(d.comps))
	dones := make([]chan struct{}, len(d.comps))
	for i, c := range d.comps {
		cctx, cancel := context.WithCancel(context.Background())
		cancels[i], dones[i] = cancel, make(chan struct{})
		go func() {
			defer close(dones[i])
			err := c.run(cctx)
			exits <- exit{c.name, err}
		}()
		d.log.Debug("started", "component", c.name)
	}
	d.api.SetReady(true)
	d.notify.Ready()
	d.log.Info("episoded ready", "listen", d.api.Addr(), "gateway", d.cfg.Gateway.ID)

	var failure error
	var wdC <-chan time.Time
	if iv := d.notify.WatchdogInterval(); iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		wdC = t.C
	}
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case e := <-exits:
			failure = fmt.Errorf("%s stopped unexpectedly: %w", e.name, errOrUnknown(e.err))
			d.log.Error("component failed; shutting down", "component", e.name, "err", e.err)
			break wait
		case <-wdC:
			d.notify.Watchdog()
		}
	}

	d.api.SetReady(false)
	d.notify.Stopping()
	d.log.Info("stopping", "timeout", d.cfg.ShutdownTimeout)
	deadline := time.After(d.cfg.ShutdownTimeout)
	var errs []error
	for i := len(d.comps) - 1; i >= 0; i-- {
		cancels[i]()
		select {
		case <-dones[i]:
		case <-deadline:
			return errors.Join(append(errs, failure, fmt.Errorf("shutdown timed out after %s waiting for %s", d.cfg.ShutdownTimeout, d.comps[i].name))...)
		}
	}
	close(exits)
	for e := range exits {
		if e.err != nil && !errors.Is(e.err, context.Canceled) {
			errs = append(errs, fmt.Errorf("%s: %w", e.name, e.err))
		}
	}
	if failure != nil {
		return failure
	}
	d.log.Info("stopped cleanly")
	return errors.Join(errs...)
}

func errOrUnknown(err error) error {
	if err == nil {
		return errors.New("returned without an error")
	}
	return err
}
