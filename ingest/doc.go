// Package ingest is the pure core of episoded: clock alignment per stream,
// the episode state machine per cell, and quality accounting per episode
// and stream.
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
//     sender report) are stamped RecvT − Latency (or, once the clock has
//     measured the delays, like a held-back sample when that is earlier),
//     flagged sample.ArrivalTime, and the switch to device time (and
//     back, on a new session) is recorded as a clock event.
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
// near its minimum, as exponential jitter does).
//
// # Outliers and steps: no single sample moves the estimate
//
// An offset is accepted only when 3 consecutive samples agree on it (their
// offsets RecvT − SrcT within 50 ms): the first one, and every new one.
// Until then each sample is held back: it never enters the evidence, it is
// stamped from arrival and flagged sample.ArrivalTime, and counted
// (StreamCounters.ClockHeld); one that is never confirmed (a wild
// timestamp: a year ahead, an hour behind, int64 max, zero, negative) is
// dropped as an outlier (ClockStatus.Outliers). A sample is a candidate
// when, once converged, it lies more than 1 ms below the envelope
// (impossible for a real delay; 50 ms before convergence) or more than
// 100 ms above it. Three agreeing candidates below the envelope are a
// forward step; three above it are a backward step, unless their arrivals
// are bunched (arrival span under half their device-time span: a backlog
// draining after congestion, whose samples are stamped through the old
// line as the late deliveries they are). So a step is detected within 3
// samples in both directions (about 70 ms at 30 Hz; at 200 Hz a step back
// may take a few more samples, within 100 ms, to tell it from jitter), the
// estimator is reseeded on the agreeing samples with the old drift as
// prior, and a "jump" event records the step, measured as the smallest
// residual of the agreeing samples and measured again once the new
// estimate rests on 20 samples (within 2 % for 200 ms). A step back
// smaller than 100 ms reads as a longer delay for a while: it is found
// when for 1 s (and 10 samples) no sample came within max(5 ms, 4 mean
// excess delays, at most 20 ms) of the envelope (steps below that stay a bias until the
// window forgets the old envelope). Held-back samples
// are stamped from arrival: the previous T plus one cadence period (the
// median device-time interval), kept within [arrival − the largest delay
// above the envelope in the window, arrival]. After a step T catches up
// with the new line by at most one period per sample (while the reseeded
// line rests on fewer than 10 samples it lies above the true envelope;
// after a small step back the samples before its detection were early),
// the bound carrying the lag. So T stays continuous across a step: a step
// is a clock event, never a gap. Samples stamped through the line while
// they lay far above it owe their residual in the bound only if their run
// turns out to be a step. The first offset must
// also come from paced samples, so a backlog delivered in a burst at
// startup (its offsets are queueing delays) is not taken as the offset;
// before the first offset is agreed, arrival stamps can only assume a
// delay of at most the jump threshold (100 ms), which such a backlog can
// exceed. All timestamp arithmetic saturates: no input overflows an
// offset, a stamp or a bound.
//
// # Honest bounds: every sample within the bound stated for it
//
// ClockStatus().ErrorBoundNs is the bound of the last sample as stamped,
// with every widening below (not the estimator's bare figure), and the
// same value goes to BoundOver's history. Decisions (integration of the
// robust clock with video and a loaded machine):
//
//   - A held-back sample above the envelope is either late (the line is
//     right) or the start of a step back (arrival is right); its bound
//     covers the distance from its stamp to the line's time (plus the
//     line's bound), unless the line puts it more than 10s before its
//     arrival (maxLate: a wrong timestamp, not a delivery delay).
//   - On arrival fallback the bound adds the sample's lateness against the
//     stream's cadence: Lindley's recursion over arrival intervals minus
//     the period (whole periods across a loss), so a frame held up by a
//     stall, and the bunch behind it, state the stall, which the deviation
//     of intervals from whole periods (at most half a period) cannot show.
//   - Video: the reordering depth (largest PTSOffset) is learned from the
//     frames; while a stream that reorders has shown fewer than 16 frames
//     (the deepest reordering H.264/H.265 allow), a later frame may reveal
//     a deeper one, so the bound adds maxReorder (1s) minus the depth so
//     far. When decodeOrder raises T to keep decode order, the bound is
//     widened by as much (the presentation time moves with T).
//   - Before the estimate converges, a run of samples above the envelope
//     is taken for a swing of the delays (a startup backlog, a slow spell)
//     and stamped through the line of the first prompt samples, and is a
//     step back only once it has lasted 2s (stepBackUnconverged). A
//     backlog from the very first sample on cannot be told from the
//     offset by any estimator: those samples are stamped late, and when
//     later samples move the line earlier the bound history (BoundOver,
//     what an episode's report states) of the samples stamped before
//     convergence is widened by how far the line moved (settleEarly);
//     the bounds stated as they were stamped cannot be taken back. A run
//     below the envelope is such evidence of lower delays only while it
//     lies within maxLate (10s) of the line; lower than that it is a
//     step of the device clock (for example the return from a burst of
//     wild times just taken for a step), never merged: merging it moved
//     the line, and so the stated bound, by the whole step (an hour).
//   - When the line moves earlier (lower delays revealed), T does not
//     stand still (a run of equal T would shrink the median interval of
//     the quality report and turn normal intervals into gaps): a sample
//     stamped through the line gets at least the previous such sample's T
//     plus half its device-time interval, the bound widened by what T is
//     ahead of the estimate, so T catches up with the line at half a
//     period per sample.
//
// The quality report (Report) re-derives the clock figures from stored
// samples (after a restart) with the same inputs as the live Stream: the
// decode time SrcT − PTSOffset for video, and no sample flagged
// ArrivalTime (held back, or on arrival fallback: its device time is no
// evidence); it states clock_source (and why "arrival").
//
// # Order: T never decreases per stream
//
// Stream.Process never lets T go back: a sample whose estimate lies before
// its predecessor's T (an unconfirmed step, the envelope moving, a gateway
// clock step) gets the predecessor's T, its bound is widened by the
// difference, and it is counted (StreamCounters.Reordered). So the stored
// order (time, then seq) equals the arrival order, which for video is the
// decode order (SrcT of video is the decode time), and no export shows
// samples out of order around a step.
//
// # Untrusted device clocks fall back to arrival time
//
// A device clock can be unusable (a camera whose RTP timestamps run at
// twice the real rate and step back at every keyframe, or are random). Per
// stream, after the clock has seen each sample, the stream is put on
// arrival time when: more than 3 resets (confirmed steps, or a device time
// going back more than ReorderDepth, 200 ms, behind the previous accepted
// one) happen within a minute (no reset storms); the clock's rate measured
// over 4 s or more disagrees with arrival by more than 3 %; more than
// half of the last 16 samples were held back as wild; or no offset was
// agreed for 2 s (and 16 samples). The stream is then
// stamped RecvT − Latency, flagged ArrivalTime, with the bound: error floor
// + latency + twice the largest recent deviation of arrival intervals from
// whole cadence periods (the measured arrival jitter). This is a
// "clock_untrusted" event with the reason, and ClockStatus/ClockReport
// state clock_source "arrival" with clock_source_reason. The clock keeps
// running quietly on the device times; when it has been consistent
// (converged, nothing held, no reset, rate within tolerance) for 30 s the
// stream goes back to device time (a "clock_trusted" event). All of this
// is pure (time is the samples' RecvT) and serves every stream kind.
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
// sample, as passed to Observe, with no post-roll: the cell is silent) and
// settling; Start and Stop fire due timers
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
// # Quality (Report)
//
// A Report is built by feeding an episode's stored samples of one stream in
// time order (only their index: time, flags, counts and payload size); it
// needs only stored data and the window, plus the device's offline
// intervals, which only name causes. It measures the stream against the
// window: expected samples at the nominal rate, coverage, and every gap as
// an interval with a cause. Judge turns an episode's reports into its
// verdict (ok or degraded, with reasons) against the cell's thresholds.
// (Frames on a common time grid, for datasets, are built by sync/dataset
// from the exported MCAP.)
package ingest
