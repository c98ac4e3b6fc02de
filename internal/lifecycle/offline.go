package lifecycle

import (
	"sync"
	"time"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/ingest"
)

// offlineLog remembers when each device connection (a camera, or the
// broker an MQTT device is on) was down, so that the quality report can
// account a gap to device_offline. It is fed by polling the devices'
// Status every second (Cells.Run): a down period starts at the Since of
// the first non-streaming state seen and ends at the Since of the next
// streaming one, which the trackers stamp exactly. A down period shorter
// than a poll that ends in a reconnect is seen only through the
// Reconnects counter; it is then taken to have started at the previous
// poll. The log is kept in memory (maxOffline periods per connection): a
// report rebuilt after a restart accounts such gaps to no_data.
type offlineLog struct {
	mu struct {
		sync.Mutex
		conns map[string]*connLog
	}
}

const maxOffline = 256

type connLog struct {
	polled     bool
	lastPoll   int64
	down       bool  // down since downSince
	downSince  int64 // valid while down
	reconnects uint64
	past       []ingest.Interval // closed periods, oldest first
}

func newOfflineLog() *offlineLog {
	l := &offlineLog{}
	l.mu.conns = map[string]*connLog{}
	return l
}

// poll records the connection states sts seen at now.
func (l *offlineLog) poll(now time.Time, sts []devices.Status) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := now.UnixNano()
	for _, st := range sts {
		c := l.mu.conns[st.Device]
		if c == nil {
			c = &connLog{}
			l.mu.conns[st.Device] = c
		}
		streaming := st.State == devices.Streaming
		since := st.Since.UnixNano()
		switch {
		case !c.down && !streaming:
			c.down, c.downSince = true, since
			if c.polled && st.State != devices.Backoff && st.Reconnects > c.reconnects {
				// Backoff's Since (the session's end) was missed: it lies
				// after the previous poll.
				c.downSince = min(since, c.lastPoll)
			}
		case c.down && streaming:
			c.closeLocked(ingest.Interval{From: c.downSince, To: since})
			c.down = false
		case !c.down && streaming && c.polled && st.Reconnects > c.reconnects:
			// Down and up again between two polls.
			c.closeLocked(ingest.Interval{From: c.lastPoll, To: since})
		}
		c.polled, c.lastPoll, c.reconnects = true, n, st.Reconnects
	}
}

// closeLocked adds the closed down period iv. Called with offlineLog.mu
// held.
func (c *connLog) closeLocked(iv ingest.Interval) {
	if iv.To < iv.From {
		iv.To = iv.From
	}
	if len(c.past) == maxOffline {
		c.past = append(c.past[:0], c.past[1:]...)
	}
	c.past = append(c.past, iv)
}

// intervals returns the down periods of connection conn that overlap
// [from, to], a period still open ending at now.
func (l *offlineLog) intervals(conn string, from, to, now int64) []ingest.Interval {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.mu.conns[conn]
	if c == nil {
		return nil
	}
	var out []ingest.Interval
	for _, iv := range c.past {
		if iv.From <= to && from <= iv.To {
			out = append(out, iv)
		}
	}
	if c.down && c.downSince <= to {
		out = append(out, ingest.Interval{From: c.downSince, To: max(now, c.downSince)})
	}
	return out
}
