package webrtc

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// pionLogs routes pion's logs to slog. pion is chatty: its Info and Warn
// lines are routine per-session events ("failed to ping without candidate
// pairs", "stream is already closed" on close), so they go to Debug, its
// Errors to Warn; Trace is dropped. The server logs what matters itself.
type pionLogs struct{ log *slog.Logger }

func (f pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.log.With("pion", scope)}
}

type pionLogger struct{ log *slog.Logger }

func (l pionLogger) logf(level slog.Level, format string, args ...any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	l.log.Log(context.Background(), level, fmt.Sprintf(format, args...))
}

func (l pionLogger) Trace(string)          {}
func (l pionLogger) Tracef(string, ...any) {}
func (l pionLogger) Debug(m string)        { l.logf(slog.LevelDebug, "%s", m) }
func (l pionLogger) Debugf(f string, a ...any) {
	l.logf(slog.LevelDebug, f, a...)
}
func (l pionLogger) Info(m string)            { l.logf(slog.LevelDebug, "%s", m) }
func (l pionLogger) Infof(f string, a ...any) { l.logf(slog.LevelDebug, f, a...) }
func (l pionLogger) Warn(m string)            { l.logf(slog.LevelDebug, "%s", m) }
func (l pionLogger) Warnf(f string, a ...any) { l.logf(slog.LevelDebug, f, a...) }
func (l pionLogger) Error(m string)           { l.logf(slog.LevelWarn, "%s", m) }
func (l pionLogger) Errorf(f string, a ...any) {
	l.logf(slog.LevelWarn, f, a...)
}
