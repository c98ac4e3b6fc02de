package upload

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/storage"
)

// Target says where episodes go.
type Target struct {
	// Type is "s3" or "dir".
	Type string
	// Prefix is prepended to every key; may be empty.
	Prefix string
	// Path is the root directory of a dir target.
	Path string
	// Endpoint is the http:// or https:// URL of an S3-compatible server,
	// without credentials in it.
	Endpoint, Region, Bucket string
	// PathStyle forces path-style bucket addressing (MinIO, Ceph, ...).
	PathStyle bool
	// AccessKey and SecretKey; both empty means AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY from the environment. Never logged.
	AccessKey, SecretKey string
	// CAFile is a PEM bundle of extra trusted CAs; InsecureSkipVerify
	// turns off certificate checks (lab use only).
	CAFile             string
	InsecureSkipVerify bool
}

// Defaults and limits for Options. internal/config fills the config file's
// sync section from these; docs/CONFIG.md says why concurrency 2, retry 5s
// to 10m and local time (they replaced this package's old 4, 2s to 5m and
// UTC, which disagreed with the config file's).
const (
	DefaultSite          = "default"
	DefaultPriorityLabel = "priority"
	// DefaultConcurrency: two parts in flight keep a long uplink busy
	// while one waits for its answer; more only queue on a link the
	// gateway shares with production traffic.
	DefaultConcurrency = 2
	MaxConcurrency     = 64
	DefaultPartSize    = 16 << 20
	// MinS3PartSize is S3's smallest multipart part.
	MinS3PartSize = 5 << 20
	// DefaultRetryMin and DefaultRetryMax bound the retry backoff: an
	// upload is not urgent, and a slow backoff spares a recovering
	// central store.
	DefaultRetryMin = 5 * time.Second
	DefaultRetryMax = 10 * time.Minute
	// DefaultTimezone: windows are written in the plant's wall-clock time,
	// the gateway's local time.
	DefaultTimezone = "Local"
	// DefaultMaxAttempts: with the default retry backoff (5s doubling to
	// 10m) ten attempts span about half an hour.
	DefaultMaxAttempts  = 10
	DefaultOnceAttempts = 5
	DefaultPollInterval = time.Minute
)

// Options configure an Uploader. Zero values take the documented defaults.
type Options struct {
	Target Target
	// Site and Gateway identify this gateway in the object layout and the
	// manifest. Defaults: "default" and the host name.
	Site, Gateway string
	// Windows such as "22:00-06:00"; empty means always.
	Windows []string
	// Timezone of the windows (IANA name, or "Local", the default: the
	// gateway's local time; "UTC" for UTC).
	Timezone string
	// PriorityLabel: episodes carrying this label upload at once. Default
	// "priority".
	PriorityLabel string
	// Bandwidth caps upload bytes per second; 0 means unlimited.
	Bandwidth int64
	// Concurrency is the number of parts uploaded in parallel (1 to 64).
	// Default 2.
	Concurrency int
	// PartSize of multipart uploads; objects up to it go in one PUT.
	// Default 16 MiB, minimum 5 MiB for s3.
	PartSize int64
	// RetryMin and RetryMax bound the backoff between attempts
	// (0 < RetryMin <= RetryMax). Defaults 5s and 10m.
	RetryMin, RetryMax time.Duration
	// OnceAttempts is how often RunOnce tries an episode that fails with
	// a transient error before giving up for this run. Default 5.
	OnceAttempts int
	// MaxAttempts quarantines an episode whose upload failed this many
	// times in a row (counted across runs and restarts) when the last
	// failure was an answer from the server (ServerError, or a failure
	// of a dir target). Failures to reach the server at all (connection
	// refused or reset, timeouts, 502/503/504) are retried without limit:
	// an outage of the central store must not quarantine every episode.
	// Default DefaultMaxAttempts.
	MaxAttempts int
	// PollInterval: Run re-checks the store this often even without Wake.
	// Default 1 minute.
	PollInterval time.Duration
	// StageDir holds the staged exports (<id>.mcap). Required; typically
	// <datadir>/outbox.
	StageDir string
	// Attachments returns the files (calibration, URDF) to add to a
	// cell's exports; nil means none.
	Attachments func(cell string) []string
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
	// OnUploaded, if set, is called after an episode reached uploaded.
	OnUploaded func(episode.Episode)
	// Signer, if set, signs every manifest (see internal/signing).
	Signer Signer
	// Provenance, if set, gives the manifest's provenance block.
	Provenance ProvenanceFunc

	// transport, if set, replaces the network for an s3 target: the tests
	// run the uploader in a testing/synctest bubble over an in-memory S3
	// (see export_test.go).
	transport http.RoundTripper
}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
func (o *Options) EnsureDefaults() {
	if o.Site == "" {
		o.Site = DefaultSite
	}
	if o.Gateway == "" {
		o.Gateway, _ = os.Hostname()
		if o.Gateway == "" {
			o.Gateway = "gateway"
		}
	}
	if o.Timezone == "" {
		o.Timezone = DefaultTimezone
	}
	if o.PriorityLabel == "" {
		o.PriorityLabel = DefaultPriorityLabel
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.PartSize == 0 {
		o.PartSize = DefaultPartSize
	}
	if o.RetryMin == 0 {
		o.RetryMin = DefaultRetryMin
	}
	if o.RetryMax == 0 {
		o.RetryMax = DefaultRetryMax
	}
	if o.OnceAttempts <= 0 {
		o.OnceAttempts = DefaultOnceAttempts
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with o at once (joined with errors.Join;
// each problem starts with the config key, under sync, it is about). It
// never echoes a credential. It expects EnsureDefaults to have run; New
// runs both.
func (o *Options) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	t := o.Target
	switch t.Type {
	case "s3":
		if u, err := url.Parse(t.Endpoint); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			add("target.endpoint: %q is not an http:// or https:// URL", redact.URL(t.Endpoint))
		} else if u.User != nil {
			add("target.endpoint: %q has credentials in it; put them in access_key and secret_key (or access_key_file and secret_key_file)", redact.URL(t.Endpoint))
		}
		if t.Bucket == "" {
			add("target.bucket: is required for an s3 target")
		}
		if o.PartSize < MinS3PartSize {
			add("part_size: S3 needs at least 5MiB (got %s)", storage.FormatSize(o.PartSize))
		}
	case "dir":
		if t.Path == "" {
			add("target.path: is required for a dir target")
		}
	default:
		add("target.type: %q is not one of s3, dir", t.Type)
	}
	if strings.HasPrefix(t.Prefix, "/") || strings.Contains(t.Prefix, "..") {
		add("target.prefix: %q must be relative, without ..", t.Prefix)
	}
	if o.PartSize <= 0 {
		add("part_size: must be positive")
	}
	if o.StageDir == "" {
		add("stage_dir: is required")
	}
	for _, w := range o.Windows {
		if _, err := parseWindow(w); err != nil {
			add("windows: %v", err)
		}
	}
	if _, err := time.LoadLocation(o.Timezone); err != nil {
		add("timezone: unknown time zone %q", o.Timezone)
	}
	if o.Bandwidth < 0 {
		add("bandwidth: must not be negative")
	}
	if o.Concurrency < 1 || o.Concurrency > MaxConcurrency {
		add("concurrency: must be between 1 and %d", MaxConcurrency)
	}
	if o.RetryMin <= 0 || o.RetryMax < o.RetryMin {
		add("retry: need 0 < min <= max (got min %s, max %s)", o.RetryMin, o.RetryMax)
	}
	if o.MaxAttempts < 1 {
		add("max_attempts: %d must be at least 1", o.MaxAttempts)
	}
	for _, s := range []string{o.Site, o.Gateway} {
		if strings.ContainsAny(s, "/\\") {
			add("gateway: site and gateway id must not contain slashes: %q", s)
		}
	}
	return errors.Join(errs...)
}
