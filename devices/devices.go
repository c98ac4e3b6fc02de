// Package devices holds what every protocol adapter shares: the Sink that
// devices write samples into, the connection state each device reports, and
// the one reconnect loop with exponential backoff and jitter.
//
// Protocol adapters live in subpackages (devices/rtsp, devices/mqtt,
// devices/webrtc). Each runs as Run(ctx, sink) error: it blocks until ctx is
// cancelled, reconnecting through Supervise whenever its session fails, so a
// dead device never stops the daemon.
package devices

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/episoded/episoded/sample"
)

// Sink receives a device's streams. It is the one shared contract between
// protocol adapters and the rest of the pipeline.
//
// Write may block for a bounded time when storage applies backpressure;
// devices call it from their own goroutine, never from a library's callback
// goroutine.
type Sink interface {
	// Describe declares a stream, or updates its descriptor when codec
	// parameters change. It is called before the stream's first sample.
	Describe(d sample.Descriptor) error
	// Write hands over one sample. The pipeline assigns Seq and T. If done
	// is not nil it is called exactly once, when the sample is durable
	// (nil) or has failed to become durable (non-nil), and only if Write
	// returned nil. A non-nil return means the sample was not accepted.
	Write(s sample.Sample, done func(error)) error
}

// State is a device's connection state.
type State string

// Connection states.
const (
	Connecting State = "connecting"
	Streaming  State = "streaming"
	Backoff    State = "backoff"
	Stopped    State = "stopped"
)

// Status is a snapshot of a device's connection state.
type Status struct {
	Device   string    `json:"device"`
	Protocol string    `json:"protocol"`
	State    State     `json:"state"`
	Since    time.Time `json:"since"`
	// LastError is why the device is not streaming; "" while it streams.
	LastError  string `json:"last_error,omitempty"`
	Reconnects uint64 `json:"reconnects"`
}

// Tracker holds a device's Status; it is safe for concurrent use.
type Tracker struct {
	now func() time.Time
	mu  struct {
		sync.Mutex
		st Status
	}
}

// NewTracker returns a tracker in the Connecting state. now may be nil for
// time.Now.
func NewTracker(device, protocol string, now func() time.Time) *Tracker {
	if now == nil {
		now = time.Now
	}
	t := &Tracker{now: now}
	t.mu.st = Status{Device: device, Protocol: protocol, State: Connecting, Since: now()}
	return t
}

// Set moves to state st. A non-nil err is recorded as the last error. The
// last error describes the current trouble: it is kept while the device
// backs off and reconnects, and cleared once it streams again (a
// recovered device shows no error; its Reconnects count and the log keep
// the history).
func (t *Tracker) Set(st State, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.st.State != st {
		t.mu.st.State = st
		t.mu.st.Since = t.now()
	}
	switch {
	case err != nil:
		t.mu.st.LastError = err.Error()
	case st == Streaming:
		t.mu.st.LastError = ""
	}
}

// Status returns a snapshot.
func (t *Tracker) Status() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.st
}

func (t *Tracker) addReconnect() {
	t.mu.Lock()
	t.mu.st.Reconnects++
	t.mu.Unlock()
}

// Defaults for BackoffPolicy.
const (
	DefaultBackoffMin  = time.Second
	DefaultBackoffMax  = 30 * time.Second
	DefaultStableAfter = 10 * time.Second
)

// BackoffPolicy is exponential backoff with full jitter in [d/2, d].
type BackoffPolicy struct {
	// Min is the first delay (default 1s), Max the ceiling (default 30s).
	Min, Max time.Duration
	// StableAfter: a session that streamed at least this long resets the
	// backoff to Min (default 10s).
	StableAfter time.Duration
	// Jitter draws the jitter for each delay, in [0,1) (default: the
	// global math/rand/v2 source). Tests set it to get exact delays.
	Jitter func() float64
}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
func (p *BackoffPolicy) EnsureDefaults() {
	if p.Min == 0 {
		p.Min = DefaultBackoffMin
	}
	if p.Max == 0 {
		p.Max = DefaultBackoffMax
	}
	if p.StableAfter == 0 {
		p.StableAfter = DefaultStableAfter
	}
	if p.Jitter == nil {
		p.Jitter = rand.Float64
	}
}

// Validate reports every problem at once. It expects EnsureDefaults to
// have run.
func (p *BackoffPolicy) Validate() error {
	var errs []error
	if p.Min <= 0 || p.Max < p.Min {
		errs = append(errs, fmt.Errorf("need 0 < min <= max (got min %s, max %s)", p.Min, p.Max))
	}
	if p.StableAfter < 0 {
		errs = append(errs, fmt.Errorf("stable after %s is negative", p.StableAfter))
	}
	return errors.Join(errs...)
}

// Delay returns the wait before reconnect attempt n (0-based), with jitter
// taken from r in [0,1). An invalid policy (see Validate) is clamped: the
// delay is never below 1ms and Max is never below Min.
func (p BackoffPolicy) Delay(n int, r float64) time.Duration {
	p.EnsureDefaults()
	lo := max(p.Min, time.Millisecond)
	hi := max(p.Max, lo)
	d := lo
	for i := 0; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + time.Duration(r*float64(d/2))
}

// Session is one connection attempt. It calls streaming() once data flows
// (from any goroutine; later calls are harmless),
// and returns when the connection ends; it returns ctx.Err() (or nil) when
// ctx is cancelled.
type Session func(ctx context.Context, streaming func()) error

// Supervise runs session until ctx is cancelled, reconnecting with backoff
// after every failure and tracking state in t. It returns nil when ctx is
// cancelled; it never gives up on a device.
//
// Supervise reads time only through the time package (time.Now, timers) and
// jitter only through p.Jitter, so a test runs it inside a testing/synctest
// bubble with a fixed Jitter and sees exact, instant backoff delays.
func Supervise(ctx context.Context, t *Tracker, p BackoffPolicy, session Session) error {
	p.EnsureDefaults()
	jitter := p.Jitter
	attempt := 0
	for {
		t.Set(Connecting, nil)
		// streaming may be called from any goroutine of the session. The
		// start keeps its monotonic reading, so a wall-clock step cannot
		// make a session look stable or short.
		var started atomic.Pointer[time.Time]
		err := session(ctx, func() {
			now := time.Now()
			started.CompareAndSwap(nil, &now)
			t.Set(Streaming, nil)
		})
		if ctx.Err() != nil {
			t.Set(Stopped, nil)
			return nil
		}
		if s := started.Load(); s != nil && time.Since(*s) >= p.StableAfter {
			attempt = 0
		}
		wait := p.Delay(attempt, jitter())
		attempt++
		t.Set(Backoff, err)
		t.addReconnect()
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			t.Set(Stopped, nil)
			return nil
		case <-timer.C:
		}
	}
}
