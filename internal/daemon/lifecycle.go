package daemon

import (
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/lifecycle"
	"github.com/episoded/episoded/sample"
)

// lifecycleOptions turns the config's cells and devices into the
// lifecycle's options (the callbacks are the daemon's to set).
func lifecycleOptions(cfg *config.Config) lifecycle.Options {
	o := lifecycle.Options{SyncInterval: cfg.Storage.SyncInterval}
	for _, c := range cfg.Cells {
		o.Cells = append(o.Cells, lifecycle.CellOptions{
			ID: c.ID, Preroll: c.Preroll, Postroll: c.Postroll, MaxDuration: c.MaxDuration, IdleTimeout: c.IdleTimeout,
			GapFactor: c.GapFactor, MinCoverage: c.Quality.MinCoverage, MaxAlignmentBound: c.Quality.MaxAlignmentBound,
			RequiredStreams: c.Quality.RequiredStreams,
		})
	}
	cellOf := deviceCells(cfg)
	for _, d := range cfg.Devices {
		ld := lifecycle.Device{ID: d.ID, Cell: cellOf[d.ID], Rate: d.Rate}
		if d.Type == config.DeviceMQTT {
			// Streams come from topics; the broker's outages silence them.
			ld.Conn = d.Broker
		} else {
			ld.Stream, ld.Kind, ld.Codec = d.Stream, sample.KindVideo, sample.CodecH264
		}
		o.Devices = append(o.Devices, ld)
	}
	return o
}
