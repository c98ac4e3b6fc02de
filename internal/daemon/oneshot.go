package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/sync/upload"
)

// SyncOnce uploads what is due from the store of cfg and returns when
// idle: `episoded sync run --until-idle` when no daemon holds the store.
func SyncOnce(ctx context.Context, cfg *config.Config, log *slog.Logger) (upload.Status, error) {
	if cfg.Sync.Target.Type == "" {
		return upload.Status{}, errors.New("sync run: no sync target is configured")
	}
	d := &Daemon{cfg: cfg, opts: cfg.Components(), log: log, reg: prometheus.NewRegistry()}
	store, err := openStore(d)
	if err != nil {
		return upload.Status{}, err
	}
	d.store = store
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- store.Run(runCtx) }()
	defer func() {
		cancel()
		<-done
		store.Close()
	}()
	if err := d.buildUploader(); err != nil {
		return upload.Status{}, err
	}
	runErr := d.uploader.RunOnce(ctx)
	st, err := d.uploader.Status()
	if err != nil {
		return st, fmt.Errorf("sync status: %w", err)
	}
	return st, runErr
}
