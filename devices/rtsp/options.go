package rtsp

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/internal/redact"
)

// Defaults for Options.
const (
	DefaultTransport   = "tcp"
	DefaultClock       = "rtcp"
	DefaultReadTimeout = 10 * time.Second
	DefaultQueueSize   = 128
)

// Options configure a Camera. Zero values take the documented defaults.
type Options struct {
	// Device is the configured device id (required); Stream the stream id
	// (default: Device).
	Device, Stream string
	// URL is the rtsp:// or rtsps:// source. Credentials may be inline
	// (rtsp://user:pass@host/path) or given as Username and Password,
	// which take precedence.
	URL string
	// Transport is tcp (default), udp, or auto (UDP first, then TCP).
	Transport string
	// Username and Password authenticate to the camera. The password never
	// appears in logs, errors, status or the stream descriptor.
	Username, Password string
	// Clock is rtcp (default: SrcT from RTCP sender reports) or arrival
	// (SrcT stays 0 and samples are stamped arrival - Latency).
	Clock string
	// Latency is the configured capture-to-arrival delay used for arrival
	// stamping (default 0).
	Latency time.Duration
	// ReadTimeout: a session that delivers no RTP packet for this long is
	// restarted (default 10s). It is also gortsplib's RTSP read timeout.
	ReadTimeout time.Duration
	// Backoff is the reconnect policy (default 1s doubling to 30s, with
	// jitter).
	Backoff devices.BackoffPolicy
	// QueueSize is the number of frames buffered between gortsplib's reader
	// and the goroutine writing to the sink (default 128, about 4 s at 30
	// fps). When it is full, frames are dropped until the next keyframe.
	QueueSize int
	// Logger receives the device's logs (default: discard).
	Logger *slog.Logger
	// Registerer receives the device's metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
func (o *Options) EnsureDefaults() {
	if o.Stream == "" {
		o.Stream = o.Device
	}
	if o.Transport == "" {
		o.Transport = DefaultTransport
	}
	if o.Clock == "" {
		o.Clock = DefaultClock
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	o.Backoff.EnsureDefaults()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem at once (joined with errors.Join; each
// problem starts with the config key it is about). It never echoes a
// credential. It expects EnsureDefaults to have run; New runs both.
func (o *Options) Validate() error {
	var errs []error
	if o.Device == "" {
		errs = append(errs, errors.New("id: is required"))
	}
	if u, err := base.ParseURL(o.URL); err != nil || u.Host == "" || (u.Scheme != "rtsp" && u.Scheme != "rtsps") {
		errs = append(errs, fmt.Errorf("url: %q is not an rtsp:// or rtsps:// URL", redact.URL(o.URL)))
	}
	switch o.Transport {
	case "tcp", "udp", "auto":
	default:
		errs = append(errs, fmt.Errorf("transport: %q is not one of tcp, udp, auto", o.Transport))
	}
	switch o.Clock {
	case "rtcp", "arrival":
	default:
		errs = append(errs, fmt.Errorf("clock: %q is not one of rtcp, arrival", o.Clock))
	}
	if o.Latency < 0 {
		errs = append(errs, errors.New("latency: must not be negative"))
	}
	if o.ReadTimeout <= 0 {
		errs = append(errs, errors.New("read_timeout: must be positive"))
	}
	if o.Password != "" && o.Username == "" {
		errs = append(errs, errors.New("password: set without username"))
	}
	if err := o.Backoff.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("backoff: %w", err))
	}
	return errors.Join(errs...)
}
