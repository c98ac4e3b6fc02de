// Package testwait is the one way tests wait on the wall clock: poll a
// condition until it holds, and fail with what was awaited after a deadline.
//
// Use it where a test drives something real that synctest cannot fake
// (a process, a socket, mosquitto, ffmpeg, Pebble's background work). The
// deadline only bounds a failure; a passing test waits exactly as long as
// the condition takes, so deadlines are generous for a loaded machine.
//
// Never use it, or time.Sleep, to show that something did NOT happen: do
// that inside a testing/synctest bubble after synctest.Wait, or against a
// deterministic signal (a marker that arrives after whatever must not).
package testwait

import (
	"testing"
	"time"
)

// Interval is how often For polls.
const Interval = 10 * time.Millisecond

// For polls cond every Interval until it holds. After within it fails the
// test with what, followed by the output of each detail function (for
// example the tail of a log).
func For(t testing.TB, within time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			msg := ""
			for _, d := range detail {
				msg += "\n" + d()
			}
			t.Fatalf("timed out after %v waiting for %s%s", within, what, msg)
		}
		time.Sleep(Interval)
	}
}
