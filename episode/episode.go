// Package episode defines the episode record: a time window over a cell's
// streams together with its metadata, state and quality report.
//
// It is a leaf package of plain data types. ingest drives episodes through
// their states, storage persists them, and sync exports and uploads them.
// All times are int64 nanoseconds since the Unix epoch on the gateway clock.
package episode

// State is where an episode is in its life.
type State string

// Episode states.
const (
	Recording   State = "recording"
	Closed      State = "closed"
	Interrupted State = "interrupted"
	Uploading   State = "uploading"
	Uploaded    State = "uploaded"
	Failed      State = "failed"
	Quarantined State = "quarantined"
)

// Finished reports whether the episode has stopped recording, so that its
// data and report no longer change.
func (s State) Finished() bool { return s != Recording && s != "" }

// States lists every valid state, in lifecycle order.
var States = []State{Recording, Closed, Interrupted, Uploading, Uploaded, Failed, Quarantined}

// Valid reports whether s is a known state.
func (s State) Valid() bool {
	switch s {
	case Recording, Closed, Interrupted, Uploading, Uploaded, Failed, Quarantined:
		return true
	}
	return false
}

// Episode is one recorded window over a cell's streams.
type Episode struct {
	// ID is a UUIDv7, so ids sort by creation time.
	ID       string            `json:"id"`
	Cell     string            `json:"cell"`
	Task     string            `json:"task,omitempty"`
	Operator string            `json:"operator,omitempty"`
	Robot    string            `json:"robot,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Priority episodes upload at once, ignoring upload windows.
	Priority bool `json:"priority"`
	// Trigger says what started the episode: "api", "mqtt", "rollover".
	Trigger string `json:"trigger"`
	// StopReason says what ended it: "api", "mqtt", "max_duration",
	// "idle_timeout", "shutdown", "crash".
	StopReason string `json:"stop_reason,omitempty"`
	// Start and Stop are the trigger times; Stop is 0 while recording.
	Start int64 `json:"start"`
	Stop  int64 `json:"stop"`
	// Preroll and Postroll widen the window: the episode covers
	// [Start-Preroll, Stop+Postroll].
	Preroll  int64 `json:"preroll"`
	Postroll int64 `json:"postroll"`
	// Streams are the stream ids of the cell at start.
	Streams []string `json:"streams"`
	// Previous and Next link episodes split by max-duration rollover.
	Previous string `json:"previous,omitempty"`
	Next     string `json:"next,omitempty"`
	State    State  `json:"state"`
	// Reason explains a failed or quarantined state, or, while an upload
	// is being retried, why its last attempt failed.
	Reason string `json:"reason,omitempty"`
	// TimeSync is the gateway's kernel time-sync state when the episode
	// closed (nil if it was not read, e.g. an episode recovered after a
	// crash); the upload manifest's provenance carries it.
	TimeSync *TimeSync `json:"time_sync,omitempty"`
	// Quality is the per-stream report; final once the episode is finished.
	Quality []StreamReport `json:"quality"`
	// Verdict is the episode's quality verdict (ok or degraded, and why),
	// set when the final report is built; nil while recording and for
	// episodes closed by an older version.
	Verdict *Verdict `json:"verdict,omitempty"`
	// Created and Updated are gateway wall-clock times of the record.
	Created int64 `json:"created"`
	Updated int64 `json:"updated"`
}

// Window returns the time range [from, to] the episode covers. While
// recording (Stop == 0), to is the given now plus nothing: callers pass the
// current aligned time.
func (e Episode) Window(now int64) (from, to int64) {
	stop := e.Stop
	if stop == 0 {
		return e.Start - e.Preroll, now
	}
	return e.Start - e.Preroll, stop + e.Postroll
}

// StreamReport is the quality report of one stream within an episode.
type StreamReport struct {
	Stream  string `json:"stream"`
	Kind    string `json:"kind"`
	Codec   string `json:"codec"`
	Samples uint64 `json:"samples"`
	Bytes   uint64 `json:"bytes"`
	// FirstT and LastT are the aligned times of the first and last sample.
	FirstT int64 `json:"first_t"`
	LastT  int64 `json:"last_t"`
	// MeanRateHz is Samples over the covered span.
	MeanRateHz float64 `json:"mean_rate_hz"`
	// Gaps counts the gaps in GapList (including those omitted from it):
	// places where data was lost (sequence or packet loss, dropped frames,
	// reconnects), silences longer than gap_factor times the expected
	// period, and silence at the window's edges.
	Gaps uint64 `json:"gaps"`
	// Lost counts samples known lost inside the window.
	Lost uint64 `json:"lost"`
	// Drops counts samples dropped at the gateway (full queue, frames before
	// the first keyframe).
	Drops uint64 `json:"drops"`
	// DecodeErrors counts samples flagged as undecodable.
	DecodeErrors uint64 `json:"decode_errors"`
	// TimeGaps counts the Gaps found from timing alone: silences longer
	// than gap_factor times ExpectedPeriodNs with no loss flagged, edges
	// included.
	TimeGaps uint64 `json:"time_gaps"`
	// ExpectedPeriodNs is the stream's typical sample interval (a running
	// median), 0 if unknown.
	ExpectedPeriodNs int64 `json:"expected_period_ns"`
	// NominalRateHz is the rate coverage is measured against: the
	// configured rate, or 1e9/ExpectedPeriodNs when learned (RateSource
	// "config" or "learned"); 0 with RateSource "" when unknown.
	NominalRateHz float64 `json:"nominal_rate_hz"`
	RateSource    string  `json:"rate_source,omitempty"`
	// WindowFrom and WindowTo are the window the stream is measured against.
	WindowFrom int64 `json:"window_from"`
	WindowTo   int64 `json:"window_to"`
	// Expected is the number of samples the window should hold at the
	// nominal rate (Samples when the rate is unknown).
	Expected uint64 `json:"expected"`
	// Coverage is Samples over Expected, at most 1; 0 for a stream with no
	// samples.
	Coverage float64 `json:"coverage"`
	// GapList holds every gap as an interval with a cause, in time order
	// (at most MaxGapList; GapsOmitted counts the rest). Leading and
	// trailing silence are gaps; a stream with no samples is one gap as long
	// as the window.
	GapList     []Gap  `json:"gap_list"`
	GapsOmitted uint64 `json:"gaps_omitted,omitempty"`
	// MissingNs is the total length of the gaps.
	MissingNs int64       `json:"missing_ns"`
	Clock     ClockReport `json:"clock"`
	// AlignmentErrorBoundMs bounds |T - true capture time| for this stream
	// (for video: |T + PTSOffset - true capture time|, the presentation time).
	AlignmentErrorBoundMs float64 `json:"alignment_error_bound_ms"`
	// VideoLeftOut (video, set by export) counts the frames inside the
	// window that no consumer gets because the keyframe they depend on was
	// no longer stored: the video starts at the first keyframe inside the
	// window instead.
	VideoLeftOut uint64 `json:"video_left_out,omitempty"`
}

// MaxGapList caps StreamReport.GapList.
const MaxGapList = 1000

// Gap causes.
const (
	// CauseNoData: nothing arrived and nothing says why (a silent device).
	CauseNoData = "no_data"
	// CausePacketLoss: the source's sequence numbers show data lost on the
	// way (RTP packets, numbered messages).
	CausePacketLoss = "packet_loss"
	// CauseQueueDrop: the gateway dropped samples (a full queue, frames
	// that could not be decoded until the next keyframe).
	CauseQueueDrop = "queue_drop"
	// CauseDeviceOffline: the device's connection was down during the gap.
	CauseDeviceOffline = "device_offline"
	// CauseStorageRejected: storage refused samples (full or overloaded).
	CauseStorageRejected = "storage_rejected"
)

// Gap is one interval without data: From is the time of the last sample
// before it (or the window's start), To the time of the first sample after
// it (or the window's end).
type Gap struct {
	From  int64  `json:"from"`
	To    int64  `json:"to"`
	Cause string `json:"cause"`
	// Lost and Dropped are the counts the sample after the gap carried.
	Lost    uint32 `json:"lost,omitempty"`
	Dropped uint32 `json:"dropped,omitempty"`
}

// Quality verdicts.
const (
	QualityOK       = "ok"
	QualityDegraded = "degraded"
)

// Verdict is an episode's quality verdict.
type Verdict struct {
	// Status is QualityOK or QualityDegraded.
	Status string `json:"status"`
	// Reasons say why the episode is degraded; empty when ok.
	Reasons []Reason `json:"reasons,omitempty"`
}

// Reason codes of a degraded verdict.
const (
	ReasonMissingStream  = "missing_stream"
	ReasonLowCoverage    = "low_coverage"
	ReasonAlignmentBound = "alignment_bound"
)

// Reason is one reason for a degraded verdict.
type Reason struct {
	Stream string `json:"stream"`
	Code   string `json:"code"`
	Detail string `json:"detail"`
}

// QualityStatus returns the verdict's status, or "" when there is none.
func (e Episode) QualityStatus() string {
	if e.Verdict == nil {
		return ""
	}
	return e.Verdict.Status
}

// ClockReport gives a stream's clock-alignment figures.
type ClockReport struct {
	// Mode is "device" or "arrival".
	Mode string `json:"mode"`
	// OffsetNs is gateway time minus device time at the end of the window.
	OffsetNs int64 `json:"offset_ns"`
	// DriftPPM is the device clock's rate error relative to the gateway.
	DriftPPM float64 `json:"drift_ppm"`
	// JitterNs is the residual jitter of the delay above the lower envelope.
	JitterNs int64 `json:"jitter_ns"`
	// ErrorBoundNs bounds the alignment error.
	ErrorBoundNs int64 `json:"error_bound_ns"`
	// Events lists clock resets, jumps and mode switches in the window.
	Events []ClockEvent `json:"events,omitempty"`
	// ClockSource is where the stream's times came from at the end of the
	// window: "device" (its device clock through the estimator) or
	// "arrival" (arrival time). ClockSourceReason says why a stream is on
	// arrival time: "configured", "no device time yet", or why its device
	// clock was found unusable (also recorded as an event).
	ClockSource       string `json:"clock_source,omitempty"`
	ClockSourceReason string `json:"clock_source_reason,omitempty"`
}

// ClockEvent is a notable change in a stream's clock.
type ClockEvent struct {
	T      int64  `json:"t"`
	Kind   string `json:"kind"`
	Detail string `json:"detail,omitempty"`
}

// TimeSync is the gateway clock's synchronisation state as the kernel
// reports it (adjtimex(2)): whether NTP/PTP discipline holds the clock, and
// the kernel's estimated and maximum error.
type TimeSync struct {
	// Synchronized is false when the kernel says the clock is not
	// synchronised (clock state TIME_ERROR or status STA_UNSYNC).
	Synchronized bool `json:"synchronized"`
	// State is the adjtimex return value by name: TIME_OK, TIME_INS,
	// TIME_DEL, TIME_OOP, TIME_WAIT or TIME_ERROR.
	State string `json:"state"`
	// Status is the raw timex status word (STA_* bits).
	Status int32 `json:"status"`
	// EstErrorUs and MaxErrorUs are the kernel's estimated and maximum
	// error in microseconds.
	EstErrorUs int64 `json:"est_error_us"`
	MaxErrorUs int64 `json:"max_error_us"`
	// OffsetNs is the current offset the discipline is slewing out.
	OffsetNs int64 `json:"offset_ns"`
	// ReadAt is the gateway wall-clock time of the reading (ns), and
	// ReadWhen says when it was taken: "close" (as the episode closed) or
	// "upload" (no reading was kept, so it was taken at upload).
	ReadAt   int64  `json:"read_at_ns"`
	ReadWhen string `json:"read_when"`
}
