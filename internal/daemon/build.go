package daemon

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
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
func openStore(cfg *config.Config, d *Daemon) (*storage.Store, error) {
	s := cfg.Storage
	store, err := storage.Open(storage.Options{
		Dir:               s.Dir,
		SyncInterval:      s.SyncInterval,
		Quota:             int64(s.Quota),
		MinFree:           int64(*s.MinFree),
		FullPolicy:        s.FullPolicy,
		Retention:         s.Retention,
		TimelineRetention: s.TimelineRetention,
		Logger:            d.log,
		Registerer:        d.reg,
	})
	if err != nil {
		return nil, err // storage names the directory and the operation
	}
	return store, nil
}

// deviceCells maps every device id to its cell id.
func deviceCells(cfg *config.Config) map[string]string {
	m := map[string]string{}
	for _, c := range cfg.Cells {
		for _, d := range c.Devices {
			m[d] = c.ID
		}
	}
	return m
}

func backoff(b config.Backoff) devices.BackoffPolicy {
	return devices.BackoffPolicy{Min: b.Min, Max: b.Max}
}

// buildDevices creates the cameras, brokers (with their devices and cell
// triggers) and the WebRTC server. It starts nothing.
func (d *Daemon) buildDevices() error {
	cfg := d.cfg
	brokers := map[string]*mqtt.Client{}
	for _, b := range cfg.Brokers {
		br, err := mqtt.NewClient(mqtt.ClientOptions{
			ID: b.ID, URL: b.URL, ClientID: b.ClientID, Username: b.Username, Password: b.Password.Value(),
			KeepAlive: b.KeepAlive, Backoff: backoff(b.Backoff), MaxPendingBytes: int64(b.MaxPendingBytes),
			TLS:    mqtt.TLSOptions{CAFile: b.TLS.CAFile, CertFile: b.TLS.CertFile, KeyFile: b.TLS.KeyFile, InsecureSkipVerify: b.TLS.InsecureSkipVerify},
			Logger: d.log, Registerer: d.reg,
		})
		if err != nil {
			return fmt.Errorf("broker %s: %w", b.ID, err)
		}
		brokers[b.ID] = br
	}
	for _, dev := range cfg.Devices {
		switch dev.Type {
		case config.DeviceRTSP:
			cam, err := rtsp.New(rtsp.Options{
				Device: dev.ID, Stream: dev.Stream, URL: dev.URL, Transport: dev.Transport,
				Username: dev.Username, Password: dev.Password.Value(), Clock: dev.Clock,
				Latency: dev.Latency, ReadTimeout: dev.ReadTimeout, Backoff: backoff(dev.Backoff),
				Logger: d.log, Registerer: d.reg,
			})
			if err != nil {
				return fmt.Errorf("device %s: %w", dev.ID, err)
			}
			d.sources = append(d.sources, cam)
			d.deviceComps = append(d.deviceComps, component{name: "rtsp " + dev.ID, run: func(ctx context.Context) error { return cam.Run(ctx, d.sink) }})
		case config.DeviceMQTT:
			do := mqtt.DeviceOptions{
				Device: dev.ID, Topics: dev.Topics, Stream: dev.Stream, Format: dev.Format,
				TimeUnit: dev.TimeUnit, Latency: dev.Latency,
				MaxPayload: int64(dev.MaxPayload), MaxStreams: dev.MaxStreams, TimeOffset: -1,
			}
			payloadClock := dev.Clock == "payload"
			if payloadClock {
				do.TimeField = dev.TimeField
			}
			if l := dev.Layout; l != nil {
				do.Layout = &sample.PointLayout{HeaderSize: l.HeaderSize, Stride: l.Stride}
				for _, f := range l.Fields {
					do.Layout.Fields = append(do.Layout.Fields, sample.PointField{Name: f.Name, Offset: f.Offset, Type: f.Type})
				}
				if payloadClock {
					do.TimeOffset = l.TimeOffset
				}
			}
			if err := brokers[dev.Broker].AddDevice(do); err != nil {
				return fmt.Errorf("device %s: %w", dev.ID, err)
			}
		case config.DeviceWHIP:
			clock := sample.ClockDevice
			if dev.Clock == "arrival" {
				clock = sample.ClockArrival
			}
			d.rtc.AddWHIPStream(sample.Descriptor{
				Stream: dev.Stream, Kind: sample.KindVideo, Codec: sample.CodecH264, Device: dev.ID,
				Source: "whip", Clock: clock, Latency: int64(dev.Latency),
			})
		}
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
	y := d.cfg.Sync
	if err := d.loadKey(); err != nil {
		return err
	}
	if y.Target.Type == "" {
		return nil
	}
	prov, err := provenance.NewStatic(d.cfg)
	if err != nil {
		return err
	}
	t := y.Target
	u, err := upload.New(d.store, upload.Options{
		Target: upload.Target{
			Type: t.Type, Prefix: t.Prefix, Path: t.Path, Endpoint: t.Endpoint, Region: t.Region, Bucket: t.Bucket,
			PathStyle: t.PathStyle, AccessKey: t.AccessKey.Value(), SecretKey: t.SecretKey.Value(),
			CAFile: t.CAFile, InsecureSkipVerify: t.InsecureSkipVerify,
		},
		Site: d.cfg.Gateway.Site, Gateway: d.cfg.Gateway.ID,
		Windows: y.Windows, Timezone: y.Timezone, PriorityLabel: y.PriorityLabel,
		Bandwidth: int64(y.Bandwidth), Concurrency: y.Concurrency, PartSize: int64(y.PartSize),
		RetryMin: y.Retry.Min, RetryMax: y.Retry.Max, MaxAttempts: y.MaxAttempts,
		StageDir:    filepath.Join(d.cfg.Storage.Dir, "outbox"),
		Attachments: d.attachments,
		Logger:      d.log, Registerer: d.reg,
		OnUploaded: d.onUploaded,
		Signer:     d.key,
		Provenance: func(e episode.Episode) *provenance.Provenance {
			return prov.Build(e, d.streamInfo, func() *episode.TimeSync {
				ts, _ := provenance.ReadTimeSync("upload")
				return ts
			})
		},
	})
	if err != nil {
		return fmt.Errorf("sync target %s: %w", redact.URL(cmp.Or(t.Endpoint, t.Path)), err)
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
