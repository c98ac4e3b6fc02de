package config

import (
	"time"

	"github.com/episoded/episoded/internal/lifecycle"
	"github.com/episoded/episoded/sync/upload"
)

// The defaults, in one place. docs/CONFIG.md repeats them for readers; a
// test checks that every value below appears there.
const (
	DefaultLogLevel          = "info"
	DefaultLogFormat         = "text"
	DefaultShutdownTimeout   = 10 * time.Second
	DefaultListen            = "127.0.0.1:7480"
	DefaultStorageDir        = "/var/lib/episoded"
	DefaultSyncInterval      = 100 * time.Millisecond
	DefaultMinFree           = ByteSize(1 << 30)
	DefaultFullPolicy        = "reject-new"
	DefaultRetention         = 7 * 24 * time.Hour
	DefaultTimelineRetention = time.Minute
	DefaultKeepAlive         = 30 * time.Second
	DefaultBackoffMin        = time.Second
	DefaultBackoffMax        = 30 * time.Second
	DefaultTransport         = "tcp"
	DefaultRTSPClock         = "rtcp"
	DefaultReadTimeout       = 10 * time.Second
	DefaultMQTTFormat        = "json"
	DefaultMQTTStream        = "{topic}"
	DefaultMaxPayload        = ByteSize(16 << 20)
	DefaultMaxStreams        = 256
	DefaultTimeUnit          = "ns"
	DefaultGapFactor         = lifecycle.DefaultGapFactor
	DefaultMinCoverage       = lifecycle.DefaultMinCoverage
	DefaultMaxAlignBound     = lifecycle.DefaultMaxAlignmentBound
	DefaultSyncMode          = SyncDaemon
	DefaultTimezone          = "Local"
	DefaultConcurrency       = 2
	DefaultPartSize          = ByteSize(16 << 20)
	DefaultPriorityLabel     = "priority"
	DefaultRetryMin          = 5 * time.Second
	DefaultRetryMax          = 10 * time.Minute
	DefaultMaxAttempts       = upload.DefaultMaxAttempts
)

// ApplyDefaults fills every unset field with its default. It is idempotent.
func (c *Config) ApplyDefaults() {
	setStr(&c.Log.Level, DefaultLogLevel)
	setStr(&c.Log.Format, DefaultLogFormat)
	setDur(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setStr(&c.API.Listen, DefaultListen)

	s := &c.Storage
	setStr(&s.Dir, DefaultStorageDir)
	setDur(&s.SyncInterval, DefaultSyncInterval)
	if s.MinFree == nil { // an explicit 0 stays 0
		v := DefaultMinFree
		s.MinFree = &v
	}
	setStr(&s.FullPolicy, DefaultFullPolicy)
	setDur(&s.Retention, DefaultRetention)
	setDur(&s.TimelineRetention, DefaultTimelineRetention)

	for i := range c.Brokers {
		b := &c.Brokers[i]
		setStr(&b.ClientID, "episoded-"+c.Gateway.ID+"-"+b.ID)
		setDur(&b.KeepAlive, DefaultKeepAlive)
		b.Backoff.applyDefaults(DefaultBackoffMin, DefaultBackoffMax)
	}
	for i := range c.Devices {
		d := &c.Devices[i]
		switch d.Type {
		case DeviceRTSP, DeviceWHIP:
			if cell := c.cellOf(d.ID); cell != "" {
				setStr(&d.Stream, cell+"/"+d.ID)
			}
			setStr(&d.Stream, d.ID)
			setStr(&d.Clock, DefaultRTSPClock)
			if d.Type == DeviceRTSP {
				setStr(&d.Transport, DefaultTransport)
				setDur(&d.ReadTimeout, DefaultReadTimeout)
				d.Backoff.applyDefaults(DefaultBackoffMin, DefaultBackoffMax)
			}
		case DeviceMQTT:
			setStr(&d.Stream, DefaultMQTTStream)
			setStr(&d.Format, DefaultMQTTFormat)
			if d.MaxPayload == 0 {
				d.MaxPayload = DefaultMaxPayload
			}
			if d.MaxStreams == 0 {
				d.MaxStreams = DefaultMaxStreams
			}
			if d.Clock == "" {
				d.Clock = "arrival"
				if d.TimeField != "" || (d.Layout != nil && d.Layout.TimeOffset >= 0) {
					d.Clock = "payload"
				}
			}
			if d.TimeField != "" {
				setStr(&d.TimeUnit, DefaultTimeUnit)
			}
		}
	}
	for i := range c.Cells {
		if c.Cells[i].GapFactor == 0 {
			c.Cells[i].GapFactor = DefaultGapFactor
		}
		q := &c.Cells[i].Quality
		if q.MinCoverage == 0 {
			q.MinCoverage = DefaultMinCoverage
		}
		setDur(&q.MaxAlignmentBound, DefaultMaxAlignBound)
	}

	y := &c.Sync
	setStr(&y.Mode, DefaultSyncMode)
	setStr(&y.Timezone, DefaultTimezone)
	if y.Concurrency == 0 {
		y.Concurrency = DefaultConcurrency
	}
	if y.PartSize == 0 {
		y.PartSize = DefaultPartSize
	}
	setStr(&y.PriorityLabel, DefaultPriorityLabel)
	y.Retry.applyDefaults(DefaultRetryMin, DefaultRetryMax)
	if y.MaxAttempts == 0 {
		y.MaxAttempts = DefaultMaxAttempts
	}
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

func (b *Backoff) applyDefaults(lo, hi time.Duration) {
	setDur(&b.Min, lo)
	setDur(&b.Max, hi)
}

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
