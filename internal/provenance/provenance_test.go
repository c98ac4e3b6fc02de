package provenance

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestFromTimex(t *testing.T) {
	for _, c := range []struct {
		name   string
		state  int
		tx     unix.Timex
		synced bool
		off    int64
	}{
		{"synced, microseconds", unix.TIME_OK, unix.Timex{Status: unix.STA_PLL, Offset: -12, Esterror: 40, Maxerror: 900}, true, -12000},
		{"synced, nanoseconds", unix.TIME_OK, unix.Timex{Status: unix.STA_PLL | unix.STA_NANO, Offset: -12}, true, -12},
		{"unsync bit", unix.TIME_OK, unix.Timex{Status: unix.STA_UNSYNC}, false, 0},
		{"clock error", unix.TIME_ERROR, unix.Timex{Status: unix.STA_PLL}, false, 0},
	} {
		ts := fromTimex(c.state, &c.tx, 1, "close")
		if ts.Synchronized != c.synced || ts.OffsetNs != c.off || ts.EstErrorUs != c.tx.Esterror || ts.MaxErrorUs != c.tx.Maxerror || ts.ReadWhen != "close" {
			t.Errorf("%s: %+v", c.name, ts)
		}
	}
	if ts := fromTimex(unix.TIME_ERROR, &unix.Timex{}, 1, ""); ts.State != "TIME_ERROR" {
		t.Errorf("state %q", ts.State)
	}
}
