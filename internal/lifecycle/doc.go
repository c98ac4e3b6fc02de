// Package lifecycle is the episode lifecycle between the devices and
// storage: the Sink every device writes into, and the Cells, which run
// each cell's episode state machine (ingest.Cell, pure) against the
// gateway clock and persist what it decides. internal/daemon only builds,
// connects, starts and stops them.
//
// # Episode states
//
// An episode is stored recording from its start until its post-roll has
// been captured (a stopped episode in post-roll has Stop set and is still
// recording), then closed with its final quality report and verdict, built
// from the stored index of its window (storage.RangeIndex: no payload is
// read). Only then does the uploader see it. Triggers: the API (Start,
// Stop), an MQTT trigger topic (Trigger), max-duration rollover and the
// idle timeout (timers, fired by the once-a-second tick and, first, by
// every Start and Stop).
//
// Settling waits one second plus the store's commit cadence after the
// window ends (Options.SyncInterval), so that samples still in flight are
// in the report.
//
// # Crash recovery and what a crash loses
//
// A crash leaves the open episode recording. On the next start, Recover
// (before any device runs) closes it as interrupted at its last durable
// sample, with its report; an episode that had already stopped is settled
// normally once its post-roll and margin have passed. Samples not yet
// committed when the process died are lost (storage's sync interval);
// a transition decided but not yet stored (the cell's queue) is decided
// again from what was stored: a start not stored never happened, a stop
// not stored becomes an interruption at the last durable sample.
//
// # Persistence
//
// Each cell has one persistence queue (jobQueue) drained by one worker
// goroutine, started by Run: transitions are stored in the order they were
// decided. API calls wait for their own job, so that a failure to store is
// their error; ticks and MQTT triggers do not wait, and failures are
// logged. On shutdown (Run's context cancelled) every recording episode is
// stopped (reason shutdown) and settled with what was stored.
//
// # Locks
//
// Each mutex, what it guards, and who takes it:
//
//   - cellState.mu: one cell's state machine, its known streams and the
//     episodes waiting out the settle margin. Taken briefly by every
//     sample's arrival (Sink.Write -> observe), by API calls, triggers and
//     ticks. Never held across I/O: under it a call only decides
//     transitions and pushes the steps that store them on the cell's
//     queue; the worker runs them without it.
//   - jobQueue.mu: one cell's queued jobs. A leaf.
//   - Sink.mu: the map of streams. Held for a lookup or an insert only; a
//     leaf.
//   - streamState.mu: one stream's ingest state (seq, clock estimator,
//     counters), its refusal flag and refused spans. Held across Process
//     and storage.Store.Append, which only queues the sample in memory (it
//     blocks only under storage's backpressure, for at most storage's
//     AppendTimeout); the cell's worker takes it to read the live clock
//     figures and the refused spans into a report.
//   - offlineLog.mu: the connections' outage log. A leaf.
//
// Order: cellState.mu may be held while taking jobQueue.mu, and nothing
// else. cellState.mu and streamState.mu are never held together: Write
// releases the stream's lock before it notes the sample on the cell, and
// the worker holds no cell lock when it takes a stream's. Storage's own
// locks are taken under streamState.mu (Append) and by the worker with no
// lifecycle lock held.
//
// A function or method whose name ends in Locked is called with the lock
// its doc comment names already held by the caller; it neither takes nor
// releases that lock. This is the meaning of the suffix across the
// repository.
package lifecycle
