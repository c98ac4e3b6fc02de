package webrtc

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for Options.
const (
	// DefaultQueueSize is the per-session frame queue: between the WHIP RTP
	// reader and the sink writer, and between the Hub and one WHEP viewer.
	DefaultQueueSize = 128
	// DefaultReplayChunk is how much episode time one storage read covers
	// during WHEP replay.
	DefaultReplayChunk = time.Second
	// DefaultMaxSessions bounds WHIP plus WHEP sessions at once.
	DefaultMaxSessions = 64
	// DefaultReorderWait is how long WHIP ingest waits for a missing RTP
	// packet (a NACKed retransmission or a reordered packet).
	DefaultReorderWait = 150 * time.Millisecond
)

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	// Interfaces limits ICE host candidates to these network interfaces;
	// empty means every interface but loopback. Tests pass ["lo"] together
	// with IncludeLoopback.
	Interfaces []string
	// UDPPort, when non-zero, multiplexes all ICE traffic of all sessions
	// on this one UDP port (one socket per allowed interface address); 0
	// means an ephemeral port per session.
	UDPPort int
	// IncludeLoopback gathers loopback candidates too (off by default:
	// LAN only). Loopback is gathered only if it also passes Interfaces.
	IncludeLoopback bool
	// QueueSize is the number of frames queued per session (default 128,
	// about 4 s at 30 fps). A full WHIP queue drops frames until the next
	// keyframe; a full viewer queue drops that viewer's frames until the
	// next keyframe. Both are counted.
	QueueSize int
	// ReorderWait is how long WHIP ingest holds the packets after a
	// sequence gap while the missing packet is NACKed and may still
	// arrive (default 150ms); after it, the gap is loss. Negative turns
	// NACKs and reordering off: every gap is loss at once.
	ReorderWait time.Duration
	// MaxSessions bounds concurrent WHIP and WHEP sessions (default 64);
	// beyond it POST answers 503.
	MaxSessions int
	// ReplayChunk is the span of episode time read from storage at once
	// during replay (default 1s), so no storage iterator stays open for
	// the length of a replay.
	ReplayChunk time.Duration
	// ErrNotFound is the episode source's not-found sentinel (for the
	// daemon: storage.ErrNotFound). Errors matching it with errors.Is
	// answer 404, others 500. Nil: every error from Episode answers 404.
	ErrNotFound error
	// Logger receives the server's logs (default: discard).
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// EnsureDefaults fills unset fields with their defaults. It is idempotent.
func (o *Options) EnsureDefaults() {
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.MaxSessions <= 0 {
		o.MaxSessions = DefaultMaxSessions
	}
	if o.ReorderWait == 0 {
		o.ReorderWait = DefaultReorderWait
	}
	if o.ReplayChunk <= 0 {
		o.ReplayChunk = DefaultReplayChunk
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem in o at once (joined with errors.Join;
// each problem starts with the config key it is about). It expects
// EnsureDefaults to have run; NewServer runs both.
func (o *Options) Validate() error {
	var errs []error
	if o.UDPPort < 0 || o.UDPPort > 65535 {
		errs = append(errs, fmt.Errorf("udp_port: %d is out of range", o.UDPPort))
	}
	for i, n := range o.Interfaces {
		if n == "" {
			errs = append(errs, fmt.Errorf("interfaces[%d]: is empty", i))
		}
	}
	return errors.Join(errs...)
}
