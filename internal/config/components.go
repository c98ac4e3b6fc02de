package config

import (
	"path/filepath"
	"slices"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/devices/mqtt"
	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/devices/webrtc"
	"github.com/episoded/episoded/internal/lifecycle"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/upload"
)

// Components are the component options the config file describes. They
// are built in one place, Config.Components, which both `config check`
// (through Validate) and the daemon's start-up (internal/daemon) use, and
// validated by the components' own Validate methods, so the check and the
// daemon cannot disagree. What a config file cannot say (loggers, metric
// registerers, callbacks) is left for the daemon to fill in.
type Components struct {
	Storage storage.Options
	// Brokers are the MQTT connections, in config order.
	Brokers []mqtt.ClientOptions
	// MQTTDevices are the mqtt devices, in config order, each with the id
	// of the broker it is added to.
	MQTTDevices []MQTTDevice
	// Cameras are the rtsp devices, in config order.
	Cameras []rtsp.Options
	// WebRTC is the WHIP/WHEP server.
	WebRTC webrtc.Options
	// Upload is the uploader; nil when sync.target.type is empty (nothing
	// uploads).
	Upload *upload.Options
	// Lifecycle are the cells and what they need to know of the devices.
	Lifecycle lifecycle.Options
}

// MQTTDevice is an mqtt device and the broker it is added to.
type MQTTDevice struct {
	Broker  string
	Options mqtt.DeviceOptions
}

// Components converts the config into component options. It does not
// validate (Validate does, with the components' Validate methods) and it
// copies no secret but into the fields the components need.
func (c *Config) Components() Components {
	var out Components
	out.Storage = c.storageOptions()
	for i := range c.Brokers {
		out.Brokers = append(out.Brokers, c.Brokers[i].options())
	}
	for i := range c.Devices {
		d := &c.Devices[i]
		switch d.Type {
		case DeviceRTSP:
			out.Cameras = append(out.Cameras, d.rtspOptions())
		case DeviceMQTT:
			out.MQTTDevices = append(out.MQTTDevices, MQTTDevice{Broker: d.Broker, Options: d.mqttOptions()})
		}
	}
	out.WebRTC = c.API.WebRTC.options()
	if c.Sync.Target.Type != "" {
		u := c.uploadOptions()
		out.Upload = &u
	}
	out.Lifecycle = c.lifecycleOptions()
	return out
}

// lifecycleOptions converts the cells, and what the cells need to know of
// the devices.
func (c *Config) lifecycleOptions() lifecycle.Options {
	o := lifecycle.Options{SyncInterval: c.Storage.SyncInterval}
	for i := range c.Cells {
		o.Cells = append(o.Cells, c.Cells[i].options())
	}
	for _, d := range c.Devices {
		ld := lifecycle.Device{ID: d.ID, Cell: c.cellOf(d.ID), Rate: d.Rate}
		if d.Type == DeviceMQTT {
			// Streams come from topics; the broker's outages silence them.
			ld.Conn = d.Broker
		} else {
			ld.Stream, ld.Kind, ld.Codec = d.Stream, sample.KindVideo, sample.CodecH264
		}
		o.Devices = append(o.Devices, ld)
	}
	return o
}

func (c *Cell) options() lifecycle.CellOptions {
	return lifecycle.CellOptions{
		ID: c.ID, Preroll: c.Preroll, Postroll: c.Postroll, MaxDuration: c.MaxDuration, IdleTimeout: c.IdleTimeout,
		GapFactor: c.GapFactor, MinCoverage: c.Quality.MinCoverage, MaxAlignmentBound: c.Quality.MaxAlignmentBound,
		RequiredStreams: slices.Clone(c.Quality.RequiredStreams),
	}
}

// uploadOptions converts the sync section (with the gateway's identity
// and the staging directory under storage.dir).
func (c *Config) uploadOptions() upload.Options {
	y := c.Sync
	t := y.Target
	return upload.Options{
		Target: upload.Target{
			Type: t.Type, Prefix: t.Prefix, Path: t.Path, Endpoint: t.Endpoint, Region: t.Region, Bucket: t.Bucket,
			PathStyle: t.PathStyle, AccessKey: t.AccessKey.Value(), SecretKey: t.SecretKey.Value(),
			CAFile: t.CAFile, InsecureSkipVerify: t.InsecureSkipVerify,
		},
		Site: c.Gateway.Site, Gateway: c.Gateway.ID,
		Windows: slices.Clone(y.Windows), Timezone: y.Timezone, PriorityLabel: y.PriorityLabel,
		Bandwidth: int64(y.Bandwidth), Concurrency: y.Concurrency, PartSize: int64(y.PartSize),
		RetryMin: y.Retry.Min, RetryMax: y.Retry.Max, MaxAttempts: y.MaxAttempts,
		StageDir: filepath.Join(c.Storage.Dir, "outbox"),
	}
}

func (c *Config) storageOptions() storage.Options {
	s := c.Storage
	o := storage.Options{
		Dir:               s.Dir,
		SyncInterval:      s.SyncInterval,
		Quota:             int64(s.Quota),
		FullPolicy:        s.FullPolicy,
		Retention:         s.Retention,
		TimelineRetention: s.TimelineRetention,
	}
	if s.MinFree != nil {
		o.MinFree = int64(*s.MinFree)
	}
	return o
}

func policy(b Backoff) devices.BackoffPolicy { return devices.BackoffPolicy{Min: b.Min, Max: b.Max} }

func (b *Broker) options() mqtt.ClientOptions {
	return mqtt.ClientOptions{
		ID: b.ID, URL: b.URL, ClientID: b.ClientID, Username: b.Username, Password: b.Password.Value(),
		KeepAlive: b.KeepAlive, Backoff: policy(b.Backoff), MaxPendingBytes: int64(b.MaxPendingBytes),
		TLS: mqtt.TLSOptions{CAFile: b.TLS.CAFile, CertFile: b.TLS.CertFile, KeyFile: b.TLS.KeyFile, InsecureSkipVerify: b.TLS.InsecureSkipVerify},
	}
}

func (d *Device) rtspOptions() rtsp.Options {
	return rtsp.Options{
		Device: d.ID, Stream: d.Stream, URL: d.URL, Transport: d.Transport,
		Username: d.Username, Password: d.Password.Value(), Clock: d.Clock,
		Latency: d.Latency, ReadTimeout: d.ReadTimeout, Backoff: policy(d.Backoff),
	}
}

func (d *Device) mqttOptions() mqtt.DeviceOptions {
	o := mqtt.DeviceOptions{
		Device: d.ID, Topics: slices.Clone(d.Topics), Stream: d.Stream, Format: d.Format,
		TimeField: d.TimeField, TimeUnit: d.TimeUnit, Latency: d.Latency, Clock: d.Clock,
		MaxPayload: int64(d.MaxPayload), MaxStreams: d.MaxStreams, TimeOffset: -1,
	}
	if l := d.Layout; l != nil {
		o.Layout = &sample.PointLayout{HeaderSize: l.HeaderSize, Stride: l.Stride}
		for _, f := range l.Fields {
			o.Layout.Fields = append(o.Layout.Fields, sample.PointField{Name: f.Name, Offset: f.Offset, Type: f.Type})
		}
		o.TimeOffset = l.TimeOffset
	}
	return o
}

func (w WebRTC) options() webrtc.Options {
	return webrtc.Options{
		Interfaces: slices.Clone(w.Interfaces), UDPPort: w.UDPPort,
		// Loopback candidates only when asked for by name (tests, a
		// dashboard opened on the gateway itself).
		IncludeLoopback: slices.Contains(w.Interfaces, "lo"),
	}
}
