package lifecycle

import (
	"context"
	"fmt"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
)

// Recover runs before devices start. It tells the cells about the streams
// stored before this start (so that episodes include templated MQTT
// streams before they reappear), then closes what a crash or restart left
// recording: an episode that had not stopped becomes interrupted at its
// last durable sample, with its final report, stored at once; one that
// had stopped (in post-roll) is tracked and settles when due, on Run's
// workers. Each is handed on (Options.Settled) once, when it is stored
// final. Run it once, before Run.
func (c *Cells) Recover(ctx context.Context) error {
	if err := c.knownStreams(); err != nil {
		return err
	}
	eps, err := c.store.Episodes()
	if err != nil {
		return fmt.Errorf("list episodes: %w", err)
	}
	now := time.Now().UnixNano()
	for _, e := range eps {
		if e.State != episode.Recording {
			continue
		}
		cs := c.byID[e.Cell]
		if e.Stop == 0 || cs == nil {
			var last int64
			for _, s := range e.Streams {
				if smp, err := c.store.LastSample(s); err == nil {
					last = max(last, smp.T)
				}
			}
			ie := ingest.Interrupt(e, last, now)
			c.log.Warn("episode left recording by a crash or restart; closed as interrupted", "episode", e.ID, "cell", e.Cell)
			// A cell no longer configured is judged with the defaults.
			cfg := CellOptions{ID: e.Cell}
			cfg.EnsureDefaults()
			if cs != nil {
				cfg = cs.cfg
			}
			if err := c.finalReport(ctx, cfg, &ie); err != nil {
				return fmt.Errorf("quality report of %s: %w", e.ID, err)
			}
			if err := c.storeFinal(ie); err != nil {
				return err
			}
			continue
		}
		e.State = episode.Closed
		cs.mu.Lock()
		err := cs.sm.Track(e)
		cs.mu.Unlock()
		if err != nil {
			return err
		}
	}
	c.tick()
	return nil
}

// knownStreams adds every stored stream of a configured device to its
// cell.
func (c *Cells) knownStreams() error {
	streams, err := c.store.Streams()
	if err != nil {
		return fmt.Errorf("list streams: %w", err)
	}
	for _, s := range streams {
		desc, err := c.store.Descriptor(s)
		if err != nil {
			continue // samples without a descriptor: nothing to attribute
		}
		if cell := c.cellOf(desc.Device); cell != "" {
			c.AddStream(cell, s)
		}
	}
	return nil
}
