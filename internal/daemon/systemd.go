package daemon

import (
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// Systemd notifies systemd through $NOTIFY_SOCKET (Type=notify). Without
// that variable every call is a no-op, so the daemon runs the same outside
// systemd.
type Systemd struct{}

// Ready sends READY=1.
func (Systemd) Ready() { _, _ = sd.SdNotify(false, sd.SdNotifyReady) }

// Stopping sends STOPPING=1.
func (Systemd) Stopping() { _, _ = sd.SdNotify(false, sd.SdNotifyStopping) }

// Watchdog sends WATCHDOG=1.
func (Systemd) Watchdog() { _, _ = sd.SdNotify(false, sd.SdNotifyWatchdog) }

// WatchdogInterval reads $WATCHDOG_USEC (and $WATCHDOG_PID); 0 when unset.
func (Systemd) WatchdogInterval() time.Duration {
	iv, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		return 0
	}
	return iv
}
