package upload

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/episode"
)

// Target says where episodes go.
type Target struct {
	// Type is "s3" or "dir".
	Type string
	// Prefix is prepended to every key; may be empty.
	Prefix string
	// Path is the root directory of a dir target.
	Path string
	// Endpoint is host:port or a URL with http:// or https:// (default
	// https) of an S3-compatible server.
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

// DefaultMaxAttempts is the default Options.MaxAttempts: with the
// daemon's default retry backoff (5s doubling to 10m) ten attempts span
// about half an hour.
const DefaultMaxAttempts = 10

// Options configure an Uploader. Zero values take the documented defaults.
type Options struct {
	Target Target
	// Site and Gateway identify this gateway in the object layout and the
	// manifest. Defaults: "default" and the host name.
	Site, Gateway string
	// Windows such as "22:00-06:00"; empty means always.
	Windows []string
	// Timezone of the windows (IANA name); default UTC.
	Timezone string
	// PriorityLabel: episodes carrying this label upload at once. Default
	// "priority".
	PriorityLabel string
	// Bandwidth caps upload bytes per second; 0 means unlimited.
	Bandwidth int64
	// Concurrency is the number of parts uploaded in parallel. Default 4.
	Concurrency int
	// PartSize of multipart uploads; objects up to it go in one PUT.
	// Default 16 MiB, minimum 5 MiB for s3.
	PartSize int64
	// RetryMin and RetryMax bound the backoff between attempts. Defaults
	// 2s and 5m.
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

func (o *Options) setDefaults() {
	if o.Site == "" {
		o.Site = "default"
	}
	if o.Gateway == "" {
		o.Gateway, _ = os.Hostname()
		if o.Gateway == "" {
			o.Gateway = "gateway"
		}
	}
	if o.PriorityLabel == "" {
		o.PriorityLabel = "priority"
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.PartSize <= 0 {
		o.PartSize = 16 << 20
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 2 * time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Minute
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = o.RetryMin
	}
	if o.OnceAttempts <= 0 {
		o.OnceAttempts = 5
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with o at once.
func (o Options) Validate() error {
	var errs []error
	switch o.Target.Type {
	case "s3":
		if o.Target.Endpoint == "" {
			errs = append(errs, errors.New("target.endpoint is required for s3"))
		}
		if o.Target.Bucket == "" {
			errs = append(errs, errors.New("target.bucket is required for s3"))
		}
		if o.PartSize > 0 && o.PartSize < 5<<20 {
			errs = append(errs, fmt.Errorf("part_size %d is below the S3 minimum of 5 MiB", o.PartSize))
		}
	case "dir":
		if o.Target.Path == "" {
			errs = append(errs, errors.New("target.path is required for dir"))
		}
	default:
		errs = append(errs, fmt.Errorf("target.type %q: want s3 or dir", o.Target.Type))
	}
	if o.StageDir == "" {
		errs = append(errs, errors.New("stage dir is required"))
	}
	for _, w := range o.Windows {
		if _, err := parseWindow(w); err != nil {
			errs = append(errs, err)
		}
	}
	if o.Timezone != "" {
		if _, err := time.LoadLocation(o.Timezone); err != nil {
			errs = append(errs, fmt.Errorf("timezone %q: %w", o.Timezone, err))
		}
	}
	if o.Bandwidth < 0 {
		errs = append(errs, errors.New("bandwidth must not be negative"))
	}
	for _, s := range []string{o.Site, o.Gateway} {
		if strings.ContainsAny(s, "/\\") {
			errs = append(errs, fmt.Errorf("site and gateway must not contain slashes: %q", s))
		}
	}
	return errors.Join(errs...)
}
