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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/devices/webrtc"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/api"
	"github.com/episoded/episoded/internal/buildinfo"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/lifecycle"
	"github.com/episoded/episoded/internal/signing"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/upload"
)

// Daemon is a configured episoded.
type Daemon struct {
	cfg *config.Config
	// opts are the component options cfg describes (config.Components,
	// the same conversion `config check` validates), made at start-up.
	opts   config.Components
	log    *slog.Logger
	reg    *prometheus.Registry
	api    *api.Server
	notify Notifier

	store    *storage.Store
	sink     *lifecycle.Sink
	cells    *lifecycle.Cells
	rtc      *webrtc.Server
	uploader *upload.Uploader // nil without a sync target
	key      *signing.Key     // the gateway's manifest signing key
	sources  []statusSource   // cameras and brokers, for /v1/status
	hist     history          // the dashboard's trends (GET /v1/history)
	// OnEpisode, if set before Run, is called after an episode closes and
	// after it uploads (the demo prints them).
	OnEpisode func(e episode.Episode)

	comps       []component // in start order
	deviceComps []component
	ready       chan struct{} // closed once every component has started
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

	d := &Daemon{cfg: cfg, log: log, reg: reg, notify: notify, ready: make(chan struct{})}
	var tlsFiles *api.TLSFiles
	if t := cfg.API.TLS; t.Enabled() {
		tlsFiles = &api.TLSFiles{CertFile: t.CertFile, KeyFile: t.KeyFile, ClientCAFile: t.ClientCAFile}
	}
	d.api = api.New(api.Options{
		Listen:          cfg.API.Listen,
		Token:           cfg.API.Token.Value(),
		ReadToken:       cfg.API.ReadToken.Value(),
		MetricsOpen:     cfg.API.MetricsOpen,
		AllowedHosts:    cfg.API.AllowedHosts,
		TLS:             tlsFiles,
		Secrets:         cfg.Secrets(),
		Gatherer:        reg,
		Registerer:      reg,
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

// Ready is closed once Run has started every component.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// Finish stops every recording episode, waits for its post-roll, settles
// it, and then waits until the uploader has uploaded everything due: what
// `episoded demo --duration` does before it exits. Run must be running.
func (d *Daemon) Finish(ctx context.Context) error {
	<-d.ready
	if err := d.cells.Finish(ctx); err != nil {
		return err
	}
	if d.uploader == nil || d.cfg.Sync.Mode != config.SyncDaemon {
		return nil
	}
	d.uploader.Wake()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := d.uploader.Status()
		if err != nil {
			return err
		}
		if len(st.Queue) == 0 && st.Active == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("uploads not finished: %d episodes queued: %w", len(st.Queue), ctx.Err())
		case <-t.C:
		}
	}
}

// Addr returns the API's bound address once Run has prepared it.
func (d *Daemon) Addr() string { return d.api.Addr() }

// URL returns the API's base URL (http:// or https://) once Run has
// prepared it.
func (d *Daemon) URL() string { return d.api.Scheme() + "://" + d.api.Addr() }

// Reload is what SIGHUP does: reload the API's TLS certificate, key and
// client CAs (a no-op without TLS). Nothing else is reloaded; a config
// change needs a restart.
func (d *Daemon) Reload() {
	if !d.cfg.API.TLS.Enabled() {
		d.log.Info("SIGHUP: nothing to reload (api.tls is not set); config changes need a restart")
		return
	}
	if err := d.api.ReloadTLS(); err != nil {
		d.log.Error("SIGHUP: reload TLS; still serving the previous certificate", "err", err)
	}
}

// Run prepares, starts and runs the daemon until ctx is cancelled, then
// stops it. It returns nil after a clean stop.
func (d *Daemon) Run(ctx context.Context) error {
	if err := d.prepare(ctx); err != nil {
		return err
	}
	err := d.runComponents(ctx)
	// Storage committed what was pending when its Run returned.
	if cerr := d.store.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close store: %w", cerr)
	}
	return err
}

// prepare does everything that can fail fast, before anything runs, and
// lists the components in start order: downstream first.
func (d *Daemon) prepare(ctx context.Context) (err error) {
	// The same validation as `config check` (config.Load ran it already
	// for a config read from a file; a config built in memory gets it
	// here), then the same conversion into component options.
	if err := d.cfg.Validate(); err != nil {
		return err
	}
	d.opts = d.cfg.Components()
	if d.store, err = openStore(d); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			d.store.Close()
		}
	}()
	hub := webrtc.NewHub(d.log)
	d.sink = lifecycle.NewSink(d.store, lifecycle.SinkOptions{Live: hub, Logger: d.log, Registerer: d.reg})
	lo := d.opts.Lifecycle
	lo.Logger, lo.Registerer = d.log, d.reg
	lo.TimeSync = d.readTimeSync
	lo.Settled = func(e episode.Episode) {
		if d.uploader != nil {
			d.uploader.Wake()
		}
		if d.OnEpisode != nil {
			d.OnEpisode(e)
		}
	}
	lo.Sources = d.deviceStatus
	if d.cells, err = lifecycle.New(d.store, d.sink, lo); err != nil {
		return err
	}
	wo := d.opts.WebRTC
	wo.ErrNotFound, wo.Logger, wo.Registerer = storage.ErrNotFound, d.log, d.reg
	d.rtc, err = webrtc.NewServer(wo, hub, d.store)
	if err != nil {
		return fmt.Errorf("webrtc: %w", err)
	}
	if err := d.buildUploader(); err != nil {
		return err
	}
	if err := d.buildDevices(); err != nil {
		return err
	}
	if err := d.cells.Recover(ctx); err != nil {
		return fmt.Errorf("recover episodes: %w", err)
	}
	d.routes()
	d.statusSections()
	if err := d.api.Listen(); err != nil {
		return err
	}

	d.comps = append(d.comps, component{name: "storage", run: d.store.Run})
	if d.uploader != nil && d.cfg.Sync.Mode == config.SyncDaemon {
		d.comps = append(d.comps, component{name: "uploader", run: d.uploader.Run})
	}
	d.comps = append(d.comps,
		component{name: "cells", run: d.cells.Run},
		component{name: "history", run: d.runHistory},
		component{name: "webrtc", run: func(ctx context.Context) error { return d.rtc.Run(ctx, d.sink) }},
		component{name: "api", run: d.api.Run},
	)
	d.comps = append(d.comps, d.deviceComps...)
	return nil
}

func (d *Daemon) onUploaded(e episode.Episode) {
	if d.OnEpisode != nil {
		d.OnEpisode(e)
	}
}

// statusSections adds the daemon's parts to /v1/status.
func (d *Daemon) statusSections() {
	d.api.AddStatus("storage", func() any { return d.store.Usage() })
	d.api.AddStatus("streams", func() any { return d.sink.Status() })
	d.api.AddStatus("streams_total", func() any { return d.sink.StreamCount() })
	d.api.AddStatus("streams_truncated", func() any { return d.sink.StreamCount() > lifecycle.StatusMaxStreams })
	d.api.AddStatus("cells", func() any { return d.cells.Status() })
	d.api.AddStatus("devices", func() any { return d.deviceStatus() })
	d.api.AddStatus("webrtc", func() any { return d.rtc.Stats() })
	d.api.AddStatus("uploads", func() any {
		if d.uploader == nil {
			return nil
		}
		st, err := d.uploader.Status()
		if err != nil {
			return map[string]string{"error": err.Error()}
		}
		return st
	})
}

// deviceStatus returns the connection state of every camera and broker.
func (d *Daemon) deviceStatus() []devices.Status {
	out := make([]devices.Status, 0, len(d.sources))
	for _, s := range d.sources {
		out = append(out, s.Status())
	}
	return out
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
	close(d.ready)
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
