package daemon

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/devices/mqtt"
	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/provenance"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/internal/signing"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/upload"
)

// statusSource is a device or broker as /v1/status shows it.
type statusSource interface {
	Status() devices.Status
}

// openStore opens the store with the config's storage section.
func openStore(d *Daemon) (*storage.Store, error) {
	o := d.opts.Storage
	o.Logger, o.Registerer = d.log, d.reg
	store, err := storage.Open(o)
	if err != nil {
		return nil, err // storage names the directory and the operation
	}
	return store, nil
}

// buildDevices creates the cameras, brokers (with their devices and cell
// triggers) and the WebRTC server. It starts nothing.
func (d *Daemon) buildDevices() error {
	cfg := d.cfg
	brokers := map[string]*mqtt.Client{}
	for _, o := range d.opts.Brokers {
		o.Logger, o.Registerer = d.log, d.reg
		br, err := mqtt.NewClient(o)
		if err != nil {
			return fmt.Errorf("broker %s: %w", o.ID, err)
		}
		brokers[o.ID] = br
	}
	for _, o := range d.opts.Cameras {
		o.Logger, o.Registerer = d.log, d.reg
		cam, err := rtsp.New(o)
		if err != nil {
			return fmt.Errorf("device %s: %w", o.Device, err)
		}
		d.sources = append(d.sources, cam)
		d.deviceComps = append(d.deviceComps, component{name: "rtsp " + o.Device, run: func(ctx context.Context) error { return cam.Run(ctx, d.sink) }})
	}
	for _, m := range d.opts.MQTTDevices {
		if err := brokers[m.Broker].AddDevice(m.Options); err != nil {
			return fmt.Errorf("device %s: %w", m.Options.Device, err)
		}
	}
	for _, dev := range cfg.Devices {
		if dev.Type != config.DeviceWHIP {
			continue
		}
		clock := sample.ClockDevice
		if dev.Clock == "arrival" {
			clock = sample.ClockArrival
		}
		d.rtc.AddWHIPStream(sample.Descriptor{
			Stream: dev.Stream, Kind: sample.KindVideo, Codec: sample.CodecH264, Device: dev.ID,
			Source: "whip", Clock: clock, Latency: int64(dev.Latency),
		})
	}
	for _, c := range cfg.Cells {
		if c.Trigger == nil {
			continue
		}
		cell := c.ID
		err := brokers[c.Trigger.Broker].AddTrigger(c.Trigger.Topic, func(payload []byte, _ int64) {
			d.cells.Trigger(cell, payload)
		})
		if err != nil {
			return fmt.Errorf("cell %s trigger: %w", cell, err)
		}
	}
	ids := make([]string, 0, len(brokers))
	for id := range brokers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		br := brokers[id]
		d.sources = append(d.sources, br)
		d.deviceComps = append(d.deviceComps, component{name: "mqtt " + id, run: func(ctx context.Context) error { return br.Run(ctx, d.sink) }})
	}
	return nil
}

// attachments returns the files a cell's exports carry (calibration, URDF).
func (d *Daemon) attachments(cell string) []string {
	for _, c := range d.cfg.Cells {
		if c.ID == cell {
			return c.Attachments
		}
	}
	return nil
}

// buildUploader creates the uploader when a sync target is configured.
func (d *Daemon) buildUploader() error {
	if err := d.loadKey(); err != nil {
		return err
	}
	if d.opts.Upload == nil {
		return nil
	}
	prov, err := provenance.NewStatic(d.cfg)
	if err != nil {
		return err
	}
	o := *d.opts.Upload
	o.Attachments = d.attachments
	o.Logger, o.Registerer = d.log, d.reg
	o.OnUploaded = d.onUploaded
	o.Signer = d.key
	o.Provenance = func(e episode.Episode) *provenance.Provenance {
		return prov.Build(e, d.streamInfo, func() *episode.TimeSync {
			ts, _ := provenance.ReadTimeSync("upload")
			return ts
		})
	}
	u, err := upload.New(d.store, o)
	if err != nil {
		return fmt.Errorf("sync target %s: %w", redact.URL(cmp.Or(o.Target.Endpoint, o.Target.Path)), err)
	}
	d.uploader = u
	return nil
}

// loadKey loads the gateway's signing key, generating it in the state
// directory on first start (or reading it from $CREDENTIALS_DIRECTORY).
func (d *Daemon) loadKey() error {
	if d.key != nil {
		return nil
	}
	k, created, err := signing.Load(d.cfg.Storage.Dir, os.Getenv("CREDENTIALS_DIRECTORY"))
	if err != nil {
		return err
	}
	if created {
		d.log.Info("generated the gateway signing key", "key_id", k.ID, "path", k.Path)
	}
	d.key = k
	return nil
}

// readTimeSync reads the kernel time-sync state as an episode closes.
func (d *Daemon) readTimeSync() *episode.TimeSync {
	ts, err := provenance.ReadTimeSync("close")
	if err != nil {
		d.log.Warn("read time-sync state", "err", err)
		return nil
	}
	return ts
}

// streamInfo gives a stream's device and source for the provenance.
func (d *Daemon) streamInfo(stream string) provenance.StreamInfo {
	desc, err := d.store.Descriptor(stream)
	if err != nil {
		return provenance.StreamInfo{}
	}
	return provenance.StreamInfo{Device: desc.Device, Source: desc.Source}
}
