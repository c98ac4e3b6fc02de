package config

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/upload"
)

// maxStreamsLimit caps max_streams: every stream costs ingest state, a
// status row and metric series.
const maxStreamsLimit = 10000

// Validate reports every problem in c at once; nil means valid. It expects
// ApplyDefaults to have run.
func (c *Config) Validate() error {
	if p := c.problems(); len(p) > 0 {
		return &Error{File: "(in memory)", Problems: p}
	}
	return nil
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

type problems []string

func (p *problems) addf(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p *problems) id(where, v string) {
	switch {
	case v == "":
		p.addf("%s: id is required", where)
	case !idRE.MatchString(v):
		p.addf("%s: id %q may use only letters, digits, '.', '_' and '-'", where, v)
	}
}

func (p *problems) oneOf(where, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	p.addf("%s: %q is not one of %s", where, v, strings.Join(allowed, ", "))
}

func (p *problems) nonNegative(where string, d time.Duration) {
	if d < 0 {
		p.addf("%s: must not be negative", where)
	}
}

func (p *problems) backoff(where string, b Backoff) {
	if b.Min <= 0 || b.Max < b.Min {
		p.addf("%s: need 0 < min <= max (got min %s, max %s)", where, b.Min, b.Max)
	}
}

func (c *Config) problems() []string {
	var p problems
	p.id("gateway", c.Gateway.ID)
	if c.Gateway.Site == "" {
		p.addf("gateway: site is required")
	} else if !idRE.MatchString(c.Gateway.Site) {
		p.addf("gateway: site %q may use only letters, digits, '.', '_' and '-'", c.Gateway.Site)
	}
	p.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	p.oneOf("log.format", c.Log.Format, "text", "json")
	if c.ShutdownTimeout <= 0 {
		p.addf("shutdown_timeout: must be positive")
	}
	c.apiAccessProblems(&p)
	if c.API.WebRTC.UDPPort < 0 || c.API.WebRTC.UDPPort > 65535 {
		p.addf("api.webrtc.udp_port: %d is out of range", c.API.WebRTC.UDPPort)
	}

	s := c.Storage
	if s.Dir == "" {
		p.addf("storage.dir: is required")
	}
	if s.SyncInterval <= 0 || s.SyncInterval > 10*time.Second {
		p.addf("storage.sync_interval: must be between 0 and 10s (got %s)", s.SyncInterval)
	}
	if s.Quota < 0 || (s.MinFree != nil && *s.MinFree < 0) {
		p.addf("storage: quota and min_free must not be negative")
	}
	if err := storage.CheckQuota(int64(s.Quota)); err != nil {
		p.addf("storage.quota: %v", err)
	}
	p.oneOf("storage.full_policy", s.FullPolicy, "reject-new", "evict-oldest")
	p.nonNegative("storage.retention", s.Retention)

	brokers := map[string]bool{}
	for i, b := range c.Brokers {
		where := fmt.Sprintf("brokers[%d]", i)
		p.id(where, b.ID)
		if brokers[b.ID] {
			p.addf("%s: duplicate broker id %q", where, b.ID)
		}
		brokers[b.ID] = true
		where = fmt.Sprintf("brokers[%s]", b.ID)
		if b.MaxPendingBytes < 0 {
			p.addf("%s.max_pending_bytes: %s is negative", where, b.MaxPendingBytes)
		}
		if u, err := url.Parse(b.URL); err != nil || u.Host == "" {
			p.addf("%s.url: %q is not a broker URL such as tcp://host:1883", where, redactURL(b.URL))
		} else {
			p.oneOf(where+".url scheme", u.Scheme, "tcp", "ssl", "tls", "mqtt", "mqtts", "ws", "wss")
			if u.User != nil {
				p.addf("%s.url: put credentials in username and password_file, not in the URL", where)
			}
		}
		if b.KeepAlive < time.Second {
			p.addf("%s.keepalive: must be at least 1s", where)
		}
		if (b.TLS.CertFile == "") != (b.TLS.KeyFile == "") {
			p.addf("%s.tls: cert_file and key_file go together", where)
		}
		p.backoff(where+".backoff", b.Backoff)
	}

	devices := map[string]*Device{}
	streams := map[string]string{}
	for i := range c.Devices {
		d := &c.Devices[i]
		where := fmt.Sprintf("devices[%d]", i)
		p.id(where, d.ID)
		if devices[d.ID] != nil {
			p.addf("%s: duplicate device id %q", where, d.ID)
		}
		devices[d.ID] = d
		where = fmt.Sprintf("devices[%s]", d.ID)
		p.nonNegative(where+".latency", d.Latency)
		if !(d.Rate >= 0 && d.Rate <= 1e6) {
			p.addf("%s.rate: %v Hz is not between 0 (learn it) and 1000000", where, d.Rate)
		}
		switch d.Type {
		case DeviceRTSP:
			if u, err := url.Parse(d.URL); err != nil || u.Host == "" || (u.Scheme != "rtsp" && u.Scheme != "rtsps") {
				p.addf("%s.url: %q is not an rtsp:// or rtsps:// URL", where, redactURL(d.URL))
			}
			p.oneOf(where+".transport", d.Transport, "tcp", "udp", "auto")
			p.oneOf(where+".clock", d.Clock, "rtcp", "arrival")
			if d.ReadTimeout <= 0 {
				p.addf("%s.read_timeout: must be positive", where)
			}
			p.backoff(where+".backoff", d.Backoff)
		case DeviceWHIP:
			p.oneOf(where+".clock", d.Clock, "rtcp", "arrival")
		case DeviceMQTT:
			c.mqttDeviceProblems(&p, where, d, brokers)
		default:
			p.addf("%s.type: %q is not one of rtsp, mqtt, whip", where, d.Type)
		}
		// Only fixed stream ids can collide; templated MQTT streams are
		// derived from topics at run time.
		if d.Stream != "" && !strings.Contains(d.Stream, "{") {
			if other, dup := streams[d.Stream]; dup {
				p.addf("%s: duplicate stream id %q (also used by device %s)", where, d.Stream, other)
			}
			streams[d.Stream] = d.ID
		}
	}

	cells := map[string]bool{}
	inCell := map[string]string{}
	var maxPreroll time.Duration
	for i, cell := range c.Cells {
		where := fmt.Sprintf("cells[%d]", i)
		p.id(where, cell.ID)
		if cells[cell.ID] {
			p.addf("%s: duplicate cell id %q", where, cell.ID)
		}
		cells[cell.ID] = true
		where = fmt.Sprintf("cells[%s]", cell.ID)
		if len(cell.Devices) == 0 {
			p.addf("%s.devices: list at least one device", where)
		}
		for _, id := range cell.Devices {
			if devices[id] == nil {
				p.addf("%s.devices: device %q is not defined under devices", where, id)
				continue
			}
			if other, ok := inCell[id]; ok {
				p.addf("%s.devices: device %q is already in cell %s", where, id, other)
			}
			inCell[id] = cell.ID
		}
		p.nonNegative(where+".preroll", cell.Preroll)
		p.nonNegative(where+".postroll", cell.Postroll)
		p.nonNegative(where+".max_duration", cell.MaxDuration)
		p.nonNegative(where+".idle_timeout", cell.IdleTimeout)
		if cell.MaxDuration > 0 && cell.MaxDuration < time.Second {
			p.addf("%s.max_duration: must be at least 1s", where)
		}
		if cell.GapFactor < 1 {
			p.addf("%s.gap_factor: must be at least 1", where)
		}
		if q := cell.Quality; !(q.MinCoverage >= 0 && q.MinCoverage <= 1) {
			p.addf("%s.quality.min_coverage: %v is not between 0 and 1", where, q.MinCoverage)
		}
		p.nonNegative(where+".quality.max_alignment_bound", cell.Quality.MaxAlignmentBound)
		for _, pat := range cell.Quality.RequiredStreams {
			if _, err := path.Match(pat, ""); err != nil || pat == "" {
				p.addf("%s.quality.required_streams: %q is not a stream id or pattern", where, pat)
			}
		}
		if t := cell.Trigger; t != nil {
			if !brokers[t.Broker] {
				p.addf("%s.trigger.broker: broker %q is not defined under brokers", where, t.Broker)
			}
			if t.Topic == "" || strings.ContainsAny(t.Topic, "+#") {
				p.addf("%s.trigger.topic: need one topic without wildcards", where)
			}
		}
		maxPreroll = max(maxPreroll, cell.Preroll)
	}
	if c.Storage.TimelineRetention < maxPreroll {
		p.addf("storage.timeline_retention: %s is shorter than the longest cell preroll %s", c.Storage.TimelineRetention, maxPreroll)
	}

	c.syncProblems(&p)
	return p
}

var timeFieldUnits = []string{"s", "ms", "us", "ns", "rfc3339"}

var pointTypes = map[string]int{"uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4, "float32": 4, "float64": 8}

func (c *Config) mqttDeviceProblems(p *problems, where string, d *Device, brokers map[string]bool) {
	if d.Broker == "" {
		p.addf("%s.broker: is required for mqtt devices", where)
	} else if !brokers[d.Broker] {
		p.addf("%s.broker: broker %q is not defined under brokers", where, d.Broker)
	}
	if len(d.Topics) == 0 {
		p.addf("%s.topics: list at least one topic filter", where)
	}
	for _, t := range d.Topics {
		if !validTopicFilter(t) {
			p.addf("%s.topics: %q is not a valid MQTT topic filter", where, t)
		}
	}
	p.oneOf(where+".format", d.Format, "json", "cbor", "raw", "pointcloud")
	p.oneOf(where+".clock", d.Clock, "payload", "arrival")
	if d.TimeField != "" {
		p.oneOf(where+".time_unit", d.TimeUnit, timeFieldUnits...)
		if d.Format != "json" && d.Format != "cbor" {
			p.addf("%s.time_field: only json and cbor payloads have fields", where)
		}
	}
	if d.Clock == "payload" && d.TimeField == "" && (d.Layout == nil || d.Layout.TimeOffset < 0) {
		p.addf("%s.clock: payload time needs time_field (or layout.time_offset for pointcloud)", where)
	}
	if d.MaxPayload <= 0 || d.MaxPayload > 256<<20 {
		p.addf("%s.max_payload: must be between 1 byte and 256MiB", where)
	}
	if d.MaxStreams < 1 || d.MaxStreams > maxStreamsLimit {
		p.addf("%s.max_streams: %d must be between 1 and %d", where, d.MaxStreams, maxStreamsLimit)
	}
	if d.Format != "pointcloud" {
		if d.Layout != nil {
			p.addf("%s.layout: only format pointcloud has a layout", where)
		}
		return
	}
	l := d.Layout
	if l == nil {
		p.addf("%s.layout: format pointcloud needs a layout", where)
		return
	}
	if l.Stride <= 0 || l.HeaderSize < 0 {
		p.addf("%s.layout: stride must be positive and header_size not negative", where)
	}
	if l.TimeOffset >= 0 && l.TimeOffset+8 > l.HeaderSize {
		p.addf("%s.layout.time_offset: the int64 time at %d does not fit in a %d-byte header (use -1 for arrival time)", where, l.TimeOffset, l.HeaderSize)
	}
	if len(l.Fields) == 0 {
		p.addf("%s.layout.fields: list at least one field", where)
	}
	for _, f := range l.Fields {
		size, ok := pointTypes[f.Type]
		switch {
		case f.Name == "":
			p.addf("%s.layout.fields: every field needs a name", where)
		case !ok:
			p.addf("%s.layout.fields[%s].type: %q is not one of uint8, int8, uint16, int16, uint32, int32, float32, float64", where, f.Name, f.Type)
		case f.Offset < 0 || f.Offset+size > l.Stride:
			p.addf("%s.layout.fields[%s]: offset %d does not fit in stride %d", where, f.Name, f.Offset, l.Stride)
		}
	}
}

func validTopicFilter(t string) bool {
	if t == "" {
		return false
	}
	levels := strings.Split(t, "/")
	for i, l := range levels {
		if l == "#" && i != len(levels)-1 {
			return false
		}
		if l != "#" && l != "+" && strings.ContainsAny(l, "+#") {
			return false
		}
	}
	return true
}

func (c *Config) syncProblems(p *problems) {
	y := c.Sync
	p.oneOf("sync.mode", y.Mode, SyncDaemon, SyncOneshot)
	t := y.Target
	switch t.Type {
	case "":
	case TargetDir:
		if t.Path == "" {
			p.addf("sync.target.path: is required for a dir target")
		}
	case TargetS3:
		if u, err := url.Parse(t.Endpoint); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			p.addf("sync.target.endpoint: %q is not an http:// or https:// URL", redactURL(t.Endpoint))
		} else if u.User != nil {
			p.addf("sync.target.endpoint: %q has credentials in it; put them in access_key and secret_key (or access_key_file and secret_key_file)", redactURL(t.Endpoint))
		}
		if t.Bucket == "" {
			p.addf("sync.target.bucket: is required for an s3 target")
		}
		if y.PartSize < 5<<20 {
			p.addf("sync.part_size: S3 needs at least 5MiB (got %s)", y.PartSize)
		}
	default:
		p.addf("sync.target.type: %q is not one of s3, dir", t.Type)
	}
	if strings.HasPrefix(t.Prefix, "/") || strings.Contains(t.Prefix, "..") {
		p.addf("sync.target.prefix: %q must be relative, without ..", t.Prefix)
	}
	for _, w := range y.Windows {
		if _, _, err := upload.ParseWindow(w); err != nil {
			p.addf("sync.windows: %v", err)
		}
	}
	if _, err := time.LoadLocation(y.Timezone); err != nil {
		p.addf("sync.timezone: unknown time zone %q", y.Timezone)
	}
	if y.Bandwidth < 0 {
		p.addf("sync.bandwidth: must not be negative")
	}
	if y.MaxAttempts < 1 {
		p.addf("sync.max_attempts: %d must be at least 1", y.MaxAttempts)
	}
	if y.Concurrency < 1 || y.Concurrency > 64 {
		p.addf("sync.concurrency: must be between 1 and 64")
	}
	p.backoff("sync.retry", y.Retry)
}

func redactURL(u string) string { return redact.URL(u) }

// apiAccessProblems checks the API's access settings (docs/SECURITY.md).
func (c *Config) apiAccessProblems(p *problems) {
	a := c.API
	host, _, err := net.SplitHostPort(a.Listen)
	if err != nil {
		p.addf("api.listen: %q is not host:port", a.Listen)
		return
	}
	// A token given as a file counts as set even when the command did not
	// read it (config.LoadSecrets).
	token, readToken := a.Token.IsSet() || a.TokenFile != "", a.ReadToken.IsSet() || a.ReadTokenFile != ""
	if readToken && !token {
		p.addf("api.read_token: needs api.token (the admin token) as well")
	}
	if a.ReadToken.IsSet() && a.ReadToken.Value() == a.Token.Value() {
		p.addf("api.read_token: must differ from api.token")
	}
	if !token && !a.InsecureOpen && !loopbackHost(host) {
		p.addf("api.listen: %s is reachable from the network but no api.token is set; set api.token_file, or api.insecure_open: true to let anyone who reaches it read and control the daemon", a.Listen)
	}
	for _, h := range a.AllowedHosts {
		if h == "" || strings.ContainsAny(h, ":/@ ") || strings.HasPrefix(h, "[") {
			p.addf("api.allowed_hosts: %q is not a host name (no scheme, port or path)", h)
		}
	}
	t := a.TLS
	if (t.CertFile == "") != (t.KeyFile == "") {
		p.addf("api.tls: cert_file and key_file go together")
	}
	if t.ClientCAFile != "" && t.CertFile == "" {
		p.addf("api.tls.client_ca_file: mutual TLS needs cert_file and key_file too")
	}
}

// loopbackHost reports whether a listen host is reachable from this
// machine only: localhost or a loopback IP. An empty host (all interfaces)
// or any other name is not.
func loopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
