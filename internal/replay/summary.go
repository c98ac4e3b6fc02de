package replay

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// Summary reports one replay: what went where, and how accurately it was
// timed.
type Summary struct {
	Episode string  `json:"episode"`
	Rate    float64 `json:"rate"`
	Loop    bool    `json:"loop"`
	// From and To are the replayed range (aligned ns); WindowFrom is the
	// start of the episode window the offsets count from.
	From       int64 `json:"from_ns"`
	To         int64 `json:"to_ns"`
	WindowFrom int64 `json:"window_from_ns"`
	// Passes counts passes started (more than 1 only with Loop).
	Passes      int             `json:"passes"`
	Interrupted bool            `json:"interrupted"`
	Started     time.Time       `json:"started"`
	Elapsed     time.Duration   `json:"elapsed_ns"`
	Streams     []StreamSummary `json:"streams"`
	// Timing is, per sink and then over all ("all"), the distribution of
	// the actual minus the intended send time of each sample: intended is
	// the replay start plus the sample's offset (by T) divided by the
	// rate; actual is when the sink's write (paho Publish, RTP packets
	// queued to the RTSP readers) returned.
	Timing []Timing `json:"timing"`

	all *histogram // every sample's error (for the benchmark)
}

// StreamSummary is one stream's part of a replay.
type StreamSummary struct {
	Stream string `json:"stream"`
	Kind   string `json:"kind,omitempty"`
	// Sink is "mqtt", "rtsp", or "" when the stream was not replayed
	// (Note says why).
	Sink   string `json:"sink,omitempty"`
	Target string `json:"target,omitempty"`
	Note   string `json:"note,omitempty"`
	// Sent counts samples handed to the sink; Acked the MQTT messages the
	// broker acknowledged; Failed those that were refused or not sent;
	// Skipped those the store could not read, and the H.265 leading
	// (RASL) pictures after the starting CRA, which no decoder starting
	// there can decode.
	Sent    uint64 `json:"sent"`
	Acked   uint64 `json:"acked,omitempty"`
	Failed  uint64 `json:"failed,omitempty"`
	Skipped uint64 `json:"skipped,omitempty"`
	// ParamsInserted counts keyframes sent with the parameter sets of the
	// descriptor version in force prepended (they lacked them in band).
	ParamsInserted uint64 `json:"params_inserted,omitempty"`
	Error          string `json:"error,omitempty"`
}

// Failed reports whether any sample failed to reach its sink.
func (s *Summary) Failed() bool {
	for _, st := range s.Streams {
		if st.Failed > 0 || (st.Sink == SinkMQTT && st.Acked < st.Sent) {
			return true
		}
	}
	return false
}

// Overall returns the "all" timing.
func (s *Summary) Overall() Timing {
	for _, t := range s.Timing {
		if t.Sink == "all" {
			return t
		}
	}
	return Timing{Sink: "all"}
}

// WriteText prints the summary for a terminal.
func (s *Summary) WriteText(w io.Writer) {
	state := "finished"
	if s.Interrupted {
		state = "interrupted"
	}
	fmt.Fprintf(w, "replay of episode %s %s: offsets %s..%s, rate %g, %d pass(es), %s\n",
		s.Episode, state, time.Duration(s.From-s.WindowFrom), time.Duration(s.To-s.WindowFrom),
		s.Rate, s.Passes, s.Elapsed.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tSINK\tTARGET\tSENT\tACKED\tFAILED\tSKIPPED\tNOTE")
	for _, st := range s.Streams {
		sink, acked := st.Sink, "-"
		if sink == "" {
			sink = "-"
		}
		if st.Sink == SinkMQTT {
			acked = fmt.Sprint(st.Acked)
		}
		note := st.Note
		if st.Error != "" {
			note = st.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%s\n", st.Stream, sink, st.Target, st.Sent, acked, st.Failed, st.Skipped, note)
	}
	tw.Flush()
	fmt.Fprintln(w, "timing error (actual - intended send time):")
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SINK\tN\tP50\tP99\tMAX")
	for _, t := range s.Timing {
		fmt.Fprintf(tw, "%s\t%d\t%.3f ms\t%.3f ms\t%.3f ms\n", t.Sink, t.N, t.P50, t.P99, t.Max)
	}
	tw.Flush()
}
