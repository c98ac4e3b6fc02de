// Package config loads and validates episoded's one YAML config file.
//
// Loading is strict: an unknown key is an error naming the key and its line,
// and every problem (unknown keys, bad values, broken references) is
// reported at once. The key reference is docs/CONFIG.md.
//
// One source of truth for options: the keys that configure a component
// (storage, brokers, rtsp and mqtt devices, WebRTC, cells, the uploader) become
// that component's Options in one function, Components. Their defaults are
// the components' exported constants, applied by the components'
// EnsureDefaults (Config.EnsureDefaults copies them back so that --print
// shows them), and they are checked by the components' Validate methods,
// never a second time here; this package checks only what belongs to no
// component: ids, references between sections, the API's access settings,
// log, whip devices, device rates, sync.mode and sync.target.type (which may
// be empty). `episoded config check` and the daemon's
// start-up both Load the file and build the components from Components, so
// they cannot disagree (cmd/episoded TestConfigCheckAgreesWithStart).
// Component packages never import this package.
//
// Secrets come from three places, never from anything that gets logged:
//   - `${NAME}` in any value is replaced by the environment variable NAME;
//   - every secret key `x` has a sibling `x_file` naming a file whose
//     contents (trailing newline trimmed) are the secret;
//   - a relative `x_file` path is looked up in $CREDENTIALS_DIRECTORY
//     (systemd LoadCredential=) when that is set, else relative to the
//     config file.
//
// Secret values print as "<redacted>" and are scrubbed from error messages.
package config

import (
	"time"
)

// Config is the whole configuration.
type Config struct {
	Gateway Gateway `yaml:"gateway"`
	Log     Log     `yaml:"log"`
	// ShutdownTimeout bounds a graceful stop after SIGTERM/SIGINT.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	API             API           `yaml:"api"`
	Storage         Storage       `yaml:"storage"`
	Brokers         []Broker      `yaml:"brokers,omitempty"`
	Devices         []Device      `yaml:"devices,omitempty"`
	Cells           []Cell        `yaml:"cells,omitempty"`
	Sync            Sync          `yaml:"sync"`
}

// Gateway identifies this gateway in object keys and manifests.
type Gateway struct {
	ID   string `yaml:"id"`
	Site string `yaml:"site"`
}

// Log configures log/slog output on stderr.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text, json
}

// API configures the HTTP server: probes, /metrics, /v1, WebRTC, dashboard.
// docs/SECURITY.md says what each access setting protects.
type API struct {
	Listen string `yaml:"listen"`
	// Token is the admin token. When set, every /v1, /whip and /whep
	// request needs a bearer token, reads included.
	Token     Secret `yaml:"token,omitempty"`
	TokenFile string `yaml:"token_file,omitempty"`
	// ReadToken, optional, allows reads only: list, show, export, samples,
	// status, uploads and WHEP viewing. It needs Token.
	ReadToken     Secret `yaml:"read_token,omitempty"`
	ReadTokenFile string `yaml:"read_token_file,omitempty"`
	// MetricsOpen serves /metrics without a token.
	MetricsOpen bool `yaml:"metrics_open,omitempty"`
	// InsecureOpen allows a non-loopback listen address without a token.
	InsecureOpen bool `yaml:"insecure_open,omitempty"`
	// AllowedHosts are the host names (no port) the API answers to, besides
	// IP literals, localhost and the listen host; others get 421.
	AllowedHosts []string  `yaml:"allowed_hosts,omitempty"`
	TLS          ServerTLS `yaml:"tls,omitempty"`
	WebRTC       WebRTC    `yaml:"webrtc"`
}

// ServerTLS serves the API over HTTPS. The files are reloaded on SIGHUP and
// when they change.
type ServerTLS struct {
	CertFile string `yaml:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty"`
	// ClientCAFile, when set, requires every client to present a
	// certificate signed by one of these CAs (mutual TLS).
	ClientCAFile string `yaml:"client_ca_file,omitempty"`
}

// Enabled reports whether the API serves TLS.
func (t ServerTLS) Enabled() bool { return t.CertFile != "" }

// WebRTC configures ICE for WHIP ingest and WHEP preview. LAN only: host
// candidates, no STUN or TURN.
type WebRTC struct {
	// Interfaces limits ICE candidates to these network interfaces; empty
	// means all but loopback.
	Interfaces []string `yaml:"interfaces,omitempty"`
	// UDPPort, when non-zero, multiplexes all ICE traffic on one UDP port.
	UDPPort int `yaml:"udp_port,omitempty"`
}

// Storage configures the Pebble store.
type Storage struct {
	Dir string `yaml:"dir"`
	// SyncInterval is how often appended samples are committed and fsynced.
	// A crash loses at most the samples appended in the last interval, none
	// of which has been reported durable.
	SyncInterval time.Duration `yaml:"sync_interval"`
	// Quota caps the store's size on disk; 0 means no quota.
	Quota ByteSize `yaml:"quota"`
	// MinFree is the free space kept on the filesystem: samples are refused
	// before free space drops below it. Unset means DefaultMinFree; an
	// explicit 0 means no floor (the store still refuses before ENOSPC).
	MinFree *ByteSize `yaml:"min_free"`
	// FullPolicy is what happens when only episodes not yet uploaded are
	// left to evict: "reject-new" or "evict-oldest".
	FullPolicy string `yaml:"full_policy"`
	// Retention keeps uploaded episodes locally this long before they may
	// be evicted.
	Retention time.Duration `yaml:"retention"`
	// TimelineRetention keeps timeline data that no episode covers this
	// long; it must be at least every cell's preroll.
	TimelineRetention time.Duration `yaml:"timeline_retention"`
}

// Broker is an MQTT broker connection, shared by every device that names it.
type Broker struct {
	ID  string `yaml:"id"`
	URL string `yaml:"url"` // tcp://, ssl:// or ws://
	// ClientID defaults to "episoded-<gateway.id>-<broker id>", stable so
	// that the persistent session survives restarts.
	ClientID     string        `yaml:"client_id,omitempty"`
	Username     string        `yaml:"username,omitempty"`
	Password     Secret        `yaml:"password,omitempty"`
	PasswordFile string        `yaml:"password_file,omitempty"`
	KeepAlive    time.Duration `yaml:"keepalive"`
	TLS          TLS           `yaml:"tls,omitempty"`
	Backoff      Backoff       `yaml:"backoff"`
	// MaxPendingBytes bounds the memory of the messages received on this
	// connection and not yet acknowledged (devices/mqtt
	// ClientOptions.MaxPendingBytes); 0 takes its default.
	MaxPendingBytes ByteSize `yaml:"max_pending_bytes,omitempty"`
}

// TLS configures a TLS client.
type TLS struct {
	CAFile             string `yaml:"ca_file,omitempty"`
	CertFile           string `yaml:"cert_file,omitempty"`
	KeyFile            string `yaml:"key_file,omitempty"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify,omitempty"`
}

// Backoff is the reconnect delay range: exponential with jitter.
type Backoff struct {
	Min time.Duration `yaml:"min"`
	Max time.Duration `yaml:"max"`
}

// Device types.
const (
	DeviceRTSP = "rtsp"
	DeviceMQTT = "mqtt"
	DeviceWHIP = "whip"
)

// Device is one piece of equipment: a camera (rtsp, whip) or an MQTT
// telemetry or lidar source. Which keys apply depends on Type.
type Device struct {
	ID   string `yaml:"id"`
	Type string `yaml:"type"` // rtsp, mqtt, whip
	// Stream is the stream id. rtsp and whip default to "<cell>/<id>".
	// For mqtt it is a template: {topic} is the full topic, {1}, {2}, ...
	// are topic levels; default "{topic}".
	Stream string `yaml:"stream,omitempty"`
	// Latency is subtracted from arrival time for samples without device
	// time.
	Latency time.Duration `yaml:"latency"`
	// Rate is the device's nominal sample rate in Hz (frames or messages
	// per second, per stream), which coverage is measured against; 0 learns
	// it from the data (the median interval).
	Rate float64 `yaml:"rate,omitempty"`

	// rtsp
	URL          string        `yaml:"url,omitempty"`
	Transport    string        `yaml:"transport,omitempty"` // tcp, udp, auto
	Username     string        `yaml:"username,omitempty"`
	Password     Secret        `yaml:"password,omitempty"`
	PasswordFile string        `yaml:"password_file,omitempty"`
	Clock        string        `yaml:"clock,omitempty"` // rtcp, arrival (rtsp, whip); payload, arrival (mqtt)
	ReadTimeout  time.Duration `yaml:"read_timeout,omitempty"`
	Backoff      Backoff       `yaml:"backoff"`

	// mqtt
	Broker     string   `yaml:"broker,omitempty"`
	Topics     []string `yaml:"topics,omitempty"`
	Format     string   `yaml:"format,omitempty"`      // json, cbor, raw, pointcloud
	TimeField  string   `yaml:"time_field,omitempty"`  // dotted path, e.g. header.stamp
	TimeUnit   string   `yaml:"time_unit,omitempty"`   // s, ms, us, ns, rfc3339
	MaxPayload ByteSize `yaml:"max_payload,omitempty"` // default 16MiB
	// MaxStreams bounds the streams one mqtt device creates (a {topic}
	// template on a wildcard filter makes one per topic). Default 256.
	MaxStreams int `yaml:"max_streams,omitempty"`
	// Layout describes point-cloud payloads (format: pointcloud).
	Layout *PointLayout `yaml:"layout,omitempty"`
}

// PointLayout describes a lidar frame: a header of HeaderSize bytes, then
// points of Stride bytes. TimeOffset, if not negative, is the byte offset in
// the header of a little-endian int64 capture time in ns since the Unix
// epoch; -1 stamps frames on arrival.
type PointLayout struct {
	HeaderSize int          `yaml:"header_size"`
	TimeOffset int          `yaml:"time_offset"`
	Stride     int          `yaml:"stride"`
	Fields     []PointField `yaml:"fields"`
}

// PointField is one field of a point.
type PointField struct {
	Name   string `yaml:"name"`
	Offset int    `yaml:"offset"`
	Type   string `yaml:"type"` // uint8, int8, uint16, int16, uint32, int32, float32, float64
}

// Cell is a named group of devices, typically one robot work cell, that
// episodes are recorded over.
type Cell struct {
	ID      string   `yaml:"id"`
	Devices []string `yaml:"devices"`
	// Preroll and Postroll widen each episode's window.
	Preroll  time.Duration `yaml:"preroll"`
	Postroll time.Duration `yaml:"postroll"`
	// MaxDuration rolls a long episode over into a new, linked one; 0 means
	// no limit.
	MaxDuration time.Duration `yaml:"max_duration"`
	// IdleTimeout stops an episode when no sample arrives on the cell for
	// this long; 0 disables it.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// GapFactor: a telemetry gap longer than GapFactor times the stream's
	// typical period counts as a gap.
	GapFactor float64 `yaml:"gap_factor"`
	// Quality holds the thresholds of the episode verdict.
	Quality Quality `yaml:"quality"`
	// Trigger is an optional MQTT topic carrying start/stop messages.
	Trigger *Trigger `yaml:"trigger,omitempty"`
	// Attachments are files (calibration, URDF) added to every export.
	Attachments []string `yaml:"attachments,omitempty"`
}

// Quality holds a cell's quality thresholds: an episode is degraded when a
// required stream covers less than MinCoverage of the window, or states an
// alignment error bound above MaxAlignmentBound, or has no samples.
type Quality struct {
	MinCoverage       float64       `yaml:"min_coverage"`
	MaxAlignmentBound time.Duration `yaml:"max_alignment_bound"`
	// RequiredStreams are stream ids or patterns (path.Match: *, ?, [...]);
	// empty means every stream of the cell.
	RequiredStreams []string `yaml:"required_streams,omitempty"`
}

// Trigger is an MQTT topic carrying JSON start/stop messages for a cell.
type Trigger struct {
	Broker string `yaml:"broker"`
	Topic  string `yaml:"topic"`
}

// Sync configures export and upload to the central pipeline.
type Sync struct {
	// Mode "daemon" uploads finished episodes while the daemon runs;
	// "oneshot" leaves uploads to `episoded sync run` (a systemd timer).
	// Nothing uploads while target.type is empty.
	Mode   string `yaml:"mode"`
	Target Target `yaml:"target"`
	// Windows are upload windows such as "22:00-06:00" in Timezone; empty
	// means always.
	Windows  []string `yaml:"windows,omitempty"`
	Timezone string   `yaml:"timezone"`
	// Bandwidth caps upload bytes per second; 0 means unlimited.
	Bandwidth   ByteSize `yaml:"bandwidth"`
	Concurrency int      `yaml:"concurrency"`
	PartSize    ByteSize `yaml:"part_size"`
	// PriorityLabel: episodes with this label (any value) upload at once.
	PriorityLabel string  `yaml:"priority_label"`
	Retry         Backoff `yaml:"retry"`
	// MaxAttempts quarantines an episode after this many failed upload
	// attempts in a row whose last failure the server reported (not an
	// unreachable server). Default 10.
	MaxAttempts int `yaml:"max_attempts"`
}

// Sync modes.
const (
	SyncDaemon  = "daemon"
	SyncOneshot = "oneshot"
)

// Target types.
const (
	TargetS3  = "s3"
	TargetDir = "dir"
)

// Target is where episodes go.
type Target struct {
	Type   string `yaml:"type"` // s3, dir
	Prefix string `yaml:"prefix,omitempty"`

	// dir
	Path string `yaml:"path,omitempty"`

	// s3
	Endpoint           string `yaml:"endpoint,omitempty"`
	Region             string `yaml:"region,omitempty"`
	Bucket             string `yaml:"bucket,omitempty"`
	PathStyle          bool   `yaml:"path_style,omitempty"`
	AccessKey          Secret `yaml:"access_key,omitempty"`
	AccessKeyFile      string `yaml:"access_key_file,omitempty"`
	SecretKey          Secret `yaml:"secret_key,omitempty"`
	SecretKeyFile      string `yaml:"secret_key_file,omitempty"`
	CAFile             string `yaml:"ca_file,omitempty"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify,omitempty"`
}
