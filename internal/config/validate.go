package config

import (
	"cmp"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"
)

// Validate reports every problem in c at once; nil means valid. It expects
// EnsureDefaults to have run. The keys that become component options are
// checked by the components' own Validate methods, on the options
// Components builds (the same options the daemon starts with); this file
// checks only what belongs to no component: ids, references between
// sections, the API's access settings, log, whip devices, device rates,
// sync.mode and sync.target.type.
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

// component adds the problems a component's Validate reported, each
// prefixed with where the component's keys sit in the file (each problem
// starts with its key, so "devices[cam]" and "transport: ..." make
// "devices[cam].transport: ..."). An "id" problem is dropped: ids are
// checked here, more strictly (p.id), under the section's index.
func (p *problems) component(where string, err error) {
	if err == nil {
		return
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			p.component(where, e)
		}
		return
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "id: ") {
		p.addf("%s.%s", where, msg)
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

	so := c.storageOptions()
	so.EnsureDefaults()
	p.component("storage", so.Validate())
	wo := c.API.WebRTC.options()
	wo.EnsureDefaults()
	p.component("api.webrtc", wo.Validate())

	brokers := map[string]bool{}
	for i, b := range c.Brokers {
		where := fmt.Sprintf("brokers[%d]", i)
		p.id(where, b.ID)
		if brokers[b.ID] {
			p.addf("%s: duplicate broker id %q", where, b.ID)
		}
		brokers[b.ID] = true
		o := c.Brokers[i].options()
		o.EnsureDefaults()
		p.component(fmt.Sprintf("brokers[%s]", b.ID), o.Validate())
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
		if !(d.Rate >= 0 && d.Rate <= 1e6) {
			p.addf("%s.rate: %v Hz is not between 0 (learn it) and 1000000", where, d.Rate)
		}
		switch d.Type {
		case DeviceRTSP:
			o := d.rtspOptions()
			o.EnsureDefaults()
			p.component(where, o.Validate())
		case DeviceWHIP:
			p.oneOf(where+".clock", d.Clock, "rtcp", "arrival")
			p.nonNegative(where+".latency", d.Latency)
		case DeviceMQTT:
			if d.Broker == "" {
				p.addf("%s.broker: is required for mqtt devices", where)
			} else if !brokers[d.Broker] {
				p.addf("%s.broker: broker %q is not defined under brokers", where, d.Broker)
			}
			o := d.mqttOptions()
			o.EnsureDefaults()
			p.component(where, o.Validate())
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
		o := c.Cells[i].options()
		o.EnsureDefaults()
		p.component(where, o.Validate())
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

func (c *Config) syncProblems(p *problems) {
	p.oneOf("sync.mode", c.Sync.Mode, SyncDaemon, SyncOneshot)
	// The uploader's keys are checked by upload.Options.Validate, even
	// without a target (the file may name windows for a later one); only
	// the target type is this file's: empty means nothing uploads.
	o := c.uploadOptions()
	switch o.Target.Type {
	case "":
		o.Target.Type = TargetDir
		o.Target.Path = "-" // no target: check the rest
	case TargetS3, TargetDir:
	default:
		p.addf("sync.target.type: %q is not one of s3, dir", o.Target.Type)
		o.Target.Type = TargetDir
		o.Target.Path = cmp.Or(o.Target.Path, "-")
	}
	o.EnsureDefaults()
	p.component("sync", o.Validate())
}

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
