package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/sample"
)

// Defaults and limits for ClientOptions and DeviceOptions. internal/config
// fills the config file's brokers and mqtt devices from these.
const (
	DefaultKeepAlive = 30 * time.Second
	DefaultQueueSize = 20000
	// DefaultMaxPendingBytes bounds the memory of the messages a broker
	// connection holds unacknowledged (ClientOptions.MaxPendingBytes).
	DefaultMaxPendingBytes = 64 << 20
	DefaultDrainTimeout    = 5 * time.Second
	DefaultMaxPayload      = 16 << 20
	// DefaultMaxStreams bounds the streams of one device: every stream
	// costs ingest state, a status row and metric series.
	DefaultMaxStreams = 256
	DefaultStream     = "{topic}"
	DefaultFormat     = FormatJSON
	DefaultTimeUnit   = "ns"

	// MaxMaxPayload and MaxMaxStreams are the largest MaxPayload and
	// MaxStreams accepted.
	MaxMaxPayload = 256 << 20
	MaxMaxStreams = 10000
)

// Device clocks: where a sample's time comes from.
const (
	// ClockPayload reads device time from the payload (TimeField, or a
	// point cloud's TimeOffset).
	ClockPayload = "payload"
	// ClockArrival stamps samples on arrival, less Latency.
	ClockArrival = "arrival"
)

// Payload formats.
const (
	FormatJSON       = "json"
	FormatCBOR       = "cbor"
	FormatRaw        = "raw"
	FormatPointCloud = "pointcloud"
)

// ClientOptions configure one client connection to a broker, shared by
// every device and trigger added to the Client.
type ClientOptions struct {
	// ID names the broker in logs, metrics and status (required).
	ID string
	// URL is tcp://, mqtt://, ssl://, tls://, mqtts://, ws:// or wss://
	// host:port (required). Credentials do not belong in the URL.
	URL string
	// ClientID must be stable across restarts so that the broker keeps the
	// persistent session (and the QoS 1 messages queued for it) while the
	// daemon is away. Default "episoded-<ID>"; the wiring derives it from
	// the gateway id.
	ClientID string
	// Username and Password authenticate to the broker. The password never
	// reaches a log line, an error or a status field.
	Username, Password string
	// KeepAlive is the MQTT keepalive (default 30s, at least 1s). A dead
	// connection is detected within about 1.5× this.
	KeepAlive time.Duration
	// TLS applies to ssl://, tls://, mqtts:// and wss:// URLs.
	TLS TLSOptions
	// Backoff between reconnect attempts (devices.BackoffPolicy defaults).
	Backoff devices.BackoffPolicy
	// QueueSize bounds the messages received but not yet handed to the sink
	// (default 20000). It should be at least the broker's in-flight window
	// for this client (mosquitto max_inflight_messages), see the package doc.
	QueueSize int
	// MaxPendingBytes bounds the memory of every message received and not
	// yet acknowledged (queued, in the sink, or waiting to be acked),
	// counted as twice its payload plus 512 B (default 64 MiB). A message
	// that would exceed it is not acknowledged and the session is drained
	// and reconnected (the full-rule of the package doc), whatever the
	// broker's window. One message is always taken when nothing is held.
	MaxPendingBytes int64
	// DrainTimeout bounds how long a shutdown, or a reconnect this package
	// asks for, waits for samples already handed to the sink to become
	// durable so that their acknowledgements reach the broker (default 5s).
	DrainTimeout time.Duration
	// Logger is tagged with component=devices.mqtt and broker=ID; nil
	// discards.
	Logger *slog.Logger
	// Registerer receives the broker's metrics; nil does not register.
	Registerer prometheus.Registerer
}

// TLSOptions configure the TLS client. Files are read at every connection
// attempt, so renewed certificates are picked up on the next reconnect.
type TLSOptions struct {
	// CAFile is a PEM bundle of trusted roots; empty uses the system pool.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and key (both or
	// neither).
	CertFile, KeyFile string
	// InsecureSkipVerify turns off server certificate verification. Off by
	// default; only for test rigs.
	InsecureSkipVerify bool
	// ServerName overrides the name checked in the server certificate;
	// default the URL's host.
	ServerName string
}

var brokerSchemes = map[string]bool{"tcp": true, "mqtt": true, "ssl": true, "tls": true, "mqtts": true, "ws": true, "wss": true}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
func (o *ClientOptions) EnsureDefaults() {
	if o.ClientID == "" && o.ID != "" {
		o.ClientID = "episoded-" + o.ID
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.MaxPendingBytes == 0 {
		o.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	o.Backoff.EnsureDefaults()
}

// Validate reports every problem at once (joined with errors.Join; each
// problem starts with the config key it is about). Messages never carry
// the password, and the URL is redacted. It reads no file: NewClient also
// loads the TLS files (checkFiles). It expects EnsureDefaults to have run.
func (o *ClientOptions) Validate() error {
	var errs []error
	if o.ID == "" {
		errs = append(errs, errors.New("id: is required"))
	}
	errs = append(errs, connProblems(o.URL, o.KeepAlive, o.TLS)...)
	if u, err := url.Parse(o.URL); err == nil && u.User != nil {
		errs = append(errs, errors.New("url: put credentials in username and password_file, not in the URL"))
	}
	if o.QueueSize < 1 {
		errs = append(errs, fmt.Errorf("queue_size: %d is not positive", o.QueueSize))
	}
	if o.MaxPendingBytes < 1 {
		errs = append(errs, fmt.Errorf("max_pending_bytes: %d is not positive", o.MaxPendingBytes))
	}
	if o.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("drain_timeout: %s is negative", o.DrainTimeout))
	}
	if err := o.Backoff.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("backoff: %w", err))
	}
	return errors.Join(errs...)
}

// checkFiles reads the TLS files, as every connection attempt will, and
// reports what is wrong with them; nil when no file is named.
func (t TLSOptions) checkFiles() error {
	if !t.hasFiles() {
		return nil
	}
	_, err := t.config("")
	return err
}

func (t TLSOptions) hasFiles() bool { return t.CAFile != "" || t.CertFile != "" }

// config builds a tls.Config, reading the files now.
func (t TLSOptions) config(host string) (*tls.Config, error) {
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // opt-in, documented as test-only
		ServerName:         host,
	}
	if t.ServerName != "" {
		c.ServerName = t.ServerName
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: read ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: ca file %s holds no PEM certificate", t.CAFile)
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			// The error text names files, never key material.
			return nil, fmt.Errorf("tls: load client certificate %s: %w", t.CertFile, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// DeviceOptions configure one telemetry or lidar device on a broker.
type DeviceOptions struct {
	// Device is the configured device id (required, unique per broker).
	Device string
	// Topics are MQTT topic filters; + and # wildcards are allowed
	// (required).
	Topics []string
	// Stream is the stream-name template: {topic} is the full topic, {1},
	// {2}, ... are its levels, counted from 1. Default "{topic}".
	Stream string
	// Format is json (default), cbor, raw or pointcloud.
	Format string
	// TimeField is the dotted path of the device time in json and cbor
	// payloads, such as "header.stamp". Empty stamps samples on arrival.
	TimeField string
	// TimeUnit of a numeric TimeField: s, ms, us, ns (default) or rfc3339
	// for a string.
	TimeUnit string
	// Latency is subtracted from arrival time for samples stamped on
	// arrival (no time field, or a payload whose time could not be read).
	// It is recorded in the descriptor; the pipeline does the stamping.
	Latency time.Duration
	// MaxPayload rejects larger payloads (default 16 MiB).
	MaxPayload int64
	// MaxStreams bounds the distinct streams this device creates in one
	// run (default 256); it matters for templates that name a stream per
	// topic ({topic}, {1}, ...) on wildcard filters. A message that would
	// create one more is refused: counted (rejected, reason max_streams),
	// logged at most once per 10 s, and acknowledged, so that the broker
	// does not redeliver it forever.
	MaxStreams int
	// Layout describes pointcloud frames (required for pointcloud).
	Layout *sample.PointLayout
	// TimeOffset is, for pointcloud, the byte offset in the frame header of
	// a little-endian int64 capture time in ns since the Unix epoch, or -1
	// to stamp frames on arrival. Note that 0 is a valid offset.
	TimeOffset int
	// Clock is payload (read TimeField or TimeOffset) or arrival (ignore
	// them and stamp samples on arrival less Latency). Default payload
	// when TimeField is set or a point cloud has TimeOffset >= 0, else
	// arrival.
	Clock string
}

var timeUnits = map[string]int{"s": 9, "ms": 6, "us": 3, "ns": 0, "rfc3339": -1}

var pointTypes = map[string]int{
	"uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4,
	"float32": 4, "float64": 8,
}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
// Clock defaults to payload when there is a time field (or a point-cloud
// time offset), else arrival.
func (o *DeviceOptions) EnsureDefaults() {
	if o.Stream == "" {
		o.Stream = DefaultStream
	}
	if o.Format == "" {
		o.Format = DefaultFormat
	}
	if o.TimeField != "" && o.TimeUnit == "" {
		o.TimeUnit = DefaultTimeUnit
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.MaxStreams == 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.Clock == "" {
		o.Clock = ClockArrival
		if o.TimeField != "" || (o.Format == FormatPointCloud && o.TimeOffset >= 0) {
			o.Clock = ClockPayload
		}
	}
}

// Validate reports every problem at once (joined with errors.Join; each
// problem starts with the config key it is about). It expects
// EnsureDefaults to have run.
func (o *DeviceOptions) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if o.Device == "" {
		add("id: is required")
	}
	if len(o.Topics) == 0 {
		add("topics: list at least one topic filter")
	}
	for _, t := range o.Topics {
		if !validFilter(t) {
			add("topics: %q is not a valid MQTT topic filter", t)
		}
	}
	if _, err := parseTemplate(o.Stream); err != nil {
		add("stream: %v", err)
	}
	switch o.Format {
	case FormatJSON, FormatCBOR, FormatRaw, FormatPointCloud:
	default:
		add("format: %q is not one of json, cbor, raw, pointcloud", o.Format)
	}
	if o.TimeField != "" {
		if o.Format != FormatJSON && o.Format != FormatCBOR {
			add("time_field: only json and cbor payloads have fields")
		}
		if _, ok := timeUnits[o.TimeUnit]; !ok {
			add("time_unit: %q is not one of s, ms, us, ns, rfc3339", o.TimeUnit)
		}
		for _, p := range strings.Split(o.TimeField, ".") {
			if p == "" {
				add("time_field: %q has an empty path element", o.TimeField)
				break
			}
		}
	}
	switch o.Clock {
	case ClockArrival:
	case ClockPayload:
		if o.TimeField == "" && (o.Format != FormatPointCloud || o.TimeOffset < 0) {
			add("clock: payload time needs time_field (or layout.time_offset for pointcloud)")
		}
	default:
		add("clock: %q is not one of payload, arrival", o.Clock)
	}
	if o.Latency < 0 {
		add("latency: must not be negative")
	}
	if o.MaxPayload < 1 || o.MaxPayload > MaxMaxPayload {
		add("max_payload: must be between 1 byte and 256MiB")
	}
	if o.MaxStreams < 1 || o.MaxStreams > MaxMaxStreams {
		add("max_streams: %d must be between 1 and %d", o.MaxStreams, MaxMaxStreams)
	}
	if o.Format != FormatPointCloud {
		if o.Layout != nil {
			add("layout: only format pointcloud has a layout")
		}
		return errors.Join(errs...)
	}
	l := o.Layout
	if l == nil {
		add("layout: format pointcloud needs a layout")
		return errors.Join(errs...)
	}
	if l.Stride <= 0 || l.HeaderSize < 0 {
		add("layout: stride must be positive and header_size not negative")
	}
	if o.TimeOffset < -1 || (o.TimeOffset >= 0 && o.TimeOffset+8 > l.HeaderSize) {
		add("layout.time_offset: the int64 time at %d does not fit in a %d-byte header (use -1 for arrival time)", o.TimeOffset, l.HeaderSize)
	}
	if len(l.Fields) == 0 {
		add("layout.fields: list at least one field")
	}
	for _, f := range l.Fields {
		size, ok := pointTypes[f.Type]
		switch {
		case f.Name == "":
			add("layout.fields: every field needs a name")
		case !ok:
			add("layout.fields[%s].type: %q is not one of uint8, int8, uint16, int16, uint32, int32, float32, float64", f.Name, f.Type)
		case f.Offset < 0 || f.Offset+size > l.Stride:
			add("layout.fields[%s]: offset %d does not fit in stride %d", f.Name, f.Offset, l.Stride)
		}
	}
	return errors.Join(errs...)
}

// onClock returns o with the time sources its Clock does not use
// removed: on arrival time the time field and time offset are ignored.
func (o DeviceOptions) onClock() DeviceOptions {
	if o.Clock == ClockArrival {
		o.TimeField, o.TimeUnit, o.TimeOffset = "", "", -1
	}
	return o
}

// descriptor returns the stream descriptor for stream, fed by topic.
func (o DeviceOptions) descriptor(stream, source string) sample.Descriptor {
	d := sample.Descriptor{
		Stream:  stream,
		Kind:    sample.KindTelemetry,
		Device:  o.Device,
		Source:  source,
		Clock:   sample.ClockArrival,
		Latency: int64(o.Latency),
	}
	switch o.Format {
	case FormatJSON:
		d.Codec = sample.CodecJSON
	case FormatCBOR:
		d.Codec = sample.CodecCBOR
	default:
		d.Codec = sample.CodecRaw
	}
	if o.TimeField != "" {
		d.Clock = sample.ClockDevice
	}
	if o.Format == FormatPointCloud {
		d.Kind = sample.KindPointCloud
		if o.Layout != nil {
			l := *o.Layout
			l.Fields = append([]sample.PointField(nil), l.Fields...)
			d.Layout = &l
		}
		if o.TimeOffset >= 0 {
			d.Clock = sample.ClockDevice
		}
	}
	return d
}

// connProblems checks what a broker connection and a publisher share: the
// URL, the keepalive and the TLS file pairing.
func connProblems(rawURL string, keepAlive time.Duration, tls TLSOptions) []error {
	var errs []error
	u, err := url.Parse(rawURL)
	switch {
	case rawURL == "":
		errs = append(errs, errors.New("url: is required"))
	case err != nil || u.Host == "":
		errs = append(errs, fmt.Errorf("url: %q is not a broker URL such as tcp://host:1883", redact.URL(rawURL)))
	case !brokerSchemes[u.Scheme]:
		errs = append(errs, fmt.Errorf("url: scheme %q is not one of tcp, mqtt, ssl, tls, mqtts, ws, wss", u.Scheme))
	}
	if keepAlive < time.Second {
		errs = append(errs, fmt.Errorf("keepalive: %s is below 1s", keepAlive))
	}
	if (tls.CertFile == "") != (tls.KeyFile == "") {
		errs = append(errs, errors.New("tls: cert file and key file go together"))
	}
	return errs
}
