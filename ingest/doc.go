// Package ingest is the pure core of episoded: clock alignment per stream,
// the episode state machine per cell, quality accounting per episode and
// stream, and the synchronized view used by exports.
//
// It does no I/O, starts no goroutines and never reads the wall clock: every
// time is an argument, in int64 nanoseconds since the Unix epoch on the
// gateway clock. Nothing in it is safe for concurrent use; the daemon
// serialises calls per stream (Stream, Clock, Report) and per cell (Cell).
// Nothing here has a queue, so nothing can fill up: back-pressure is the
// caller's business.
//
// # Clock alignment (Clock, Stream)
//
// A Stream numbers a device's raw samples (Seq, gapless, continuing from
// the last stored seq after a restart) and stamps their aligned time T:
//
//   - clock mode "arrival": T = RecvT − Latency;
//   - clock mode "device": T maps SrcT onto the gateway clock through the
//     stream's Clock. Samples with SrcT == 0 (RTSP before its first RTCP
//     sender report) are stamped RecvT − Latency, and the switch to device
//     time (and back, on a new session) is recorded as a clock event.
//
// The Clock sees (x, y) = (SrcT, RecvT − SrcT). The one-way delay is never
// negative, so the data lie on or above the line offset + drift·x, and the
// lower envelope is the evidence (passive synchronisation after Olson). The
// window (60s) is cut into 512 buckets that keep only their lowest point;
// the lower convex hull of those is rebuilt when one changes (at most every
// 500ms once converged). The drift is the hull's mean slope over the central
// half of the window, clamped to ±500 ppm; the line is then the support line
// of the hull with that slope (so it lies below every point, as in the LP of
// Moon, Skelly and Towsley). T = SrcT + line(SrcT), never later than RecvT.
// It converges once the evidence spans 2s; the error bound is derived from
// how densely the data crowd the envelope (it assumes the delay has mass
// near its minimum, as exponential jitter does). Jumps: once converged, 3
// consecutive samples more than 1ms below the envelope (impossible for a
// real delay), or 500ms of samples more than 100ms above it, reset the
// estimator on the held-back samples, keep the old drift as a prior and
// record a "jump" event. Samples held back while a jump is suspected are
// stamped at arrival; a single sample below the envelope that is not
// confirmed is dropped from the evidence as an outlier.
//
// # Episodes (Cell)
//
// A Cell is the state machine of one cell: at most one episode recording.
// Every call takes now and returns Transitions to act on in order: Started
// (persist the new recording episode), Stopped (persist it closed; post-roll
// data may still be arriving) and Settled (now >= Stop+Postroll: build the
// final quality report, store it, hand the episode to export and upload).
// Start while recording fails with ErrRecording (the API answers 409), Stop
// while idle with ErrNotRecording. Tick(now) fires max-duration rollover
// (the episode stops at Start+MaxDuration exactly and continues as a new
// episode linked by Previous/Next, with no post-roll on the old one and no
// pre-roll on the new one), the idle timeout (the episode stops at its last
// sample, as passed to Observe) and settling; Start and Stop fire due timers
// first. The window is [Start−Preroll, Stop+Postroll]; pre-roll data comes
// from the stored timeline. On restart, Interrupt closes an episode left
// recording at its last durable sample, as interrupted, without post-roll.
// Episode ids are UUIDv7 made from now (NewV7At), injectable for tests.
//
// # MQTT trigger messages
//
// A cell's trigger topic carries one JSON object per message (at most 64
// KiB, UTF-8):
//
//	{
//	  "action":   "start" | "stop",   // required
//	  "task":     "pick-and-place",    // optional, ≤ 256 bytes
//	  "operator": "ana",               // optional, ≤ 256 bytes
//	  "robot":    "ur10-1",            // optional, ≤ 256 bytes
//	  "labels":   {"shift": "a"},      // optional, ≤ 64 string pairs, keys non-empty, ≤ 256 bytes each
//	  "priority": true                 // optional: upload at once, ignoring upload windows
//	}
//
// Unknown fields, trailing data, wrong types and unknown actions are errors
// (wrapping ErrBadTrigger): a typo must not silently drop metadata. For
// "stop" the other fields are checked but not used. A start while recording fails with
// ErrRecording, a stop while idle with ErrNotRecording, exactly as from the
// API; the daemon logs and counts these and acknowledges the message anyway
// (redelivery would not change the answer).
//
// # Quality (Report) and synchronized view (View)
//
// A Report is built by feeding an episode's stored samples of one stream in
// time order (only their index: time, flags, counts and payload size); it
// needs only stored data and the window, plus the device's offline
// intervals, which only name causes. It measures the stream against the
// window: expected samples at the nominal rate, coverage, and every gap as
// an interval with a cause. Judge turns an episode's reports into its
// verdict (ok or degraded, with reasons) against the cell's thresholds.
// A View iterates a time-ordered sample sequence as frames at a fixed rate,
// taking per stream the nearest sample within a tolerance and counting
// misses.
package ingest
