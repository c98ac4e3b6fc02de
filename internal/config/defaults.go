package config

import (
	"time"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/storage"
)

// The defaults of the keys that belong to no component. Every other
// default lives in the component that uses it, as an exported constant and
// in the component's EnsureDefaults (storage, devices, devices/mqtt,
// devices/rtsp, internal/lifecycle, sync/upload); EnsureDefaults below takes them from
// there. docs/CONFIG.md repeats them for readers; TestDefaultsDocumented
// checks that every one appears there.
const (
	DefaultLogLevel        = "info"
	DefaultLogFormat       = "text"
	DefaultShutdownTimeout = 10 * time.Second
	DefaultListen          = "127.0.0.1:7480"
	DefaultStorageDir      = "/var/lib/episoded"
	// DefaultMinFree is the config file's min_free default; to
	// storage.Options a 0 MinFree means no floor.
	DefaultMinFree  = ByteSize(storage.DefaultMinFree)
	DefaultSyncMode = SyncDaemon
)

// EnsureDefaults fills every unset field with its default. It is
// idempotent. For the sections that become component options (storage,
// brokers, rtsp and mqtt devices, cells, sync), the defaults are the components' own:
// the section is converted (Components), the component's EnsureDefaults
// runs, and the values the file can set are copied back, so that --print
// shows what the daemon will use.
func (c *Config) EnsureDefaults() {
	setStr(&c.Log.Level, DefaultLogLevel)
	setStr(&c.Log.Format, DefaultLogFormat)
	setDur(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setStr(&c.API.Listen, DefaultListen)

	s := &c.Storage
	setStr(&s.Dir, DefaultStorageDir)
	if s.MinFree == nil { // an explicit 0 stays 0
		v := DefaultMinFree
		s.MinFree = &v
	}
	so := c.storageOptions()
	so.EnsureDefaults()
	s.SyncInterval, s.FullPolicy, s.Retention, s.TimelineRetention = so.SyncInterval, so.FullPolicy, so.Retention, so.TimelineRetention

	for i := range c.Brokers {
		b := &c.Brokers[i]
		setStr(&b.ClientID, "episoded-"+c.Gateway.ID+"-"+b.ID)
		o := b.options()
		o.EnsureDefaults()
		b.KeepAlive, b.Backoff, b.MaxPendingBytes = o.KeepAlive, fromPolicy(o.Backoff), ByteSize(o.MaxPendingBytes)
	}
	for i := range c.Devices {
		d := &c.Devices[i]
		switch d.Type {
		case DeviceRTSP, DeviceWHIP:
			if cell := c.cellOf(d.ID); cell != "" {
				setStr(&d.Stream, cell+"/"+d.ID)
			}
			setStr(&d.Stream, d.ID)
			if d.Type == DeviceWHIP {
				setStr(&d.Clock, rtsp.DefaultClock) // as for rtsp cameras
				continue
			}
			o := d.rtspOptions()
			o.EnsureDefaults()
			d.Transport, d.Clock, d.ReadTimeout, d.Backoff = o.Transport, o.Clock, o.ReadTimeout, fromPolicy(o.Backoff)
		case DeviceMQTT:
			o := d.mqttOptions()
			o.EnsureDefaults()
			d.Stream, d.Format, d.TimeUnit, d.Clock = o.Stream, o.Format, o.TimeUnit, o.Clock
			d.MaxPayload, d.MaxStreams = ByteSize(o.MaxPayload), o.MaxStreams
		}
	}
	for i := range c.Cells {
		cell := &c.Cells[i]
		o := cell.options()
		o.EnsureDefaults()
		cell.GapFactor, cell.Quality.MinCoverage, cell.Quality.MaxAlignmentBound = o.GapFactor, o.MinCoverage, o.MaxAlignmentBound
	}

	y := &c.Sync
	setStr(&y.Mode, DefaultSyncMode)
	uo := c.uploadOptions()
	uo.EnsureDefaults()
	y.Timezone, y.Concurrency, y.PartSize, y.PriorityLabel = uo.Timezone, uo.Concurrency, ByteSize(uo.PartSize), uo.PriorityLabel
	y.Retry, y.MaxAttempts = Backoff{Min: uo.RetryMin, Max: uo.RetryMax}, uo.MaxAttempts
}

// cellOf returns the id of the cell that lists device id, or "" if none.
func (c *Config) cellOf(id string) string {
	for _, cell := range c.Cells {
		for _, d := range cell.Devices {
			if d == id {
				return cell.ID
			}
		}
	}
	return ""
}

func fromPolicy(p devices.BackoffPolicy) Backoff { return Backoff{Min: p.Min, Max: p.Max} }

func setStr(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setDur(p *time.Duration, v time.Duration) {
	if *p == 0 {
		*p = v
	}
}
