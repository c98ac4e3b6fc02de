package lifecycle

import (
	"testing"
	"time"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/ingest"
)

// TestOfflineLog: down periods are taken from the trackers' exact Since
// stamps; one missed between two polls is seen through Reconnects.
func TestOfflineLog(t *testing.T) {
	l := newOfflineLog()
	base := time.Unix(1000, 0)
	at := func(s float64) time.Time { return base.Add(time.Duration(s * float64(time.Second))) }
	ns := func(s float64) int64 { return at(s).UnixNano() }
	poll := func(now float64, st devices.State, since float64, reconnects uint64) {
		l.poll(at(now), []devices.Status{{Device: "cam", State: st, Since: at(since), Reconnects: reconnects}})
	}
	poll(1, devices.Connecting, 0, 0)  // starting up: down since 0
	poll(2, devices.Streaming, 1.5, 0) // up at 1.5
	poll(3, devices.Streaming, 1.5, 0)
	poll(4, devices.Backoff, 3.2, 1)    // session ended at 3.2
	poll(5, devices.Connecting, 4.5, 1) // still down
	poll(6, devices.Streaming, 5.5, 1)  // up at 5.5
	poll(7, devices.Streaming, 6.8, 2)  // down and up between polls: [6, 6.8]
	poll(8, devices.Connecting, 7.9, 3) // down again; Backoff's Since missed: from the previous poll
	got := l.intervals("cam", 0, ns(100), ns(9))
	want := []ingest.Interval{{From: ns(0), To: ns(1.5)}, {From: ns(3.2), To: ns(5.5)}, {From: ns(6), To: ns(6.8)}, {From: ns(7), To: ns(9)}}
	if len(got) != len(want) {
		t.Fatalf("intervals %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("interval %d: [%v, %v], want [%v, %v]", i, time.Duration(got[i].From-ns(0)), time.Duration(got[i].To-ns(0)),
				time.Duration(want[i].From-ns(0)), time.Duration(want[i].To-ns(0)))
		}
	}
	if got := l.intervals("cam", ns(2), ns(3), ns(9)); len(got) != 0 {
		t.Errorf("nothing down in [2, 3]: %v", got)
	}
	if got := l.intervals("other", 0, ns(100), ns(9)); got != nil {
		t.Errorf("unknown connection: %v", got)
	}
}
