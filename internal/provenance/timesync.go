package provenance

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/episoded/episoded/episode"
)

// Kernel clock states returned by adjtimex(2).
var clockStates = map[int]string{
	unix.TIME_OK: "TIME_OK", unix.TIME_INS: "TIME_INS", unix.TIME_DEL: "TIME_DEL",
	unix.TIME_OOP: "TIME_OOP", unix.TIME_WAIT: "TIME_WAIT", unix.TIME_ERROR: "TIME_ERROR",
}

// ReadTimeSync asks the kernel for the clock's synchronisation state with
// a read-only adjtimex(2) (modes 0; no privilege needed). when is recorded
// as TimeSync.ReadWhen.
func ReadTimeSync(when string) (*episode.TimeSync, error) {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return nil, fmt.Errorf("adjtimex: %w", err)
	}
	return fromTimex(state, &tx, time.Now().UnixNano(), when), nil
}

func fromTimex(state int, tx *unix.Timex, now int64, when string) *episode.TimeSync {
	name, ok := clockStates[state]
	if !ok {
		name = fmt.Sprintf("state %d", state)
	}
	off := tx.Offset
	if tx.Status&unix.STA_NANO == 0 {
		off *= 1000 // microseconds
	}
	return &episode.TimeSync{
		Synchronized: state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0,
		State:        name,
		Status:       tx.Status,
		EstErrorUs:   tx.Esterror,
		MaxErrorUs:   tx.Maxerror,
		OffsetNs:     off,
		ReadAt:       now,
		ReadWhen:     when,
	}
}
