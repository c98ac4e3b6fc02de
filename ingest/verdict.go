package ingest

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/episoded/episoded/episode"
)

// QualityOptions are a cell's quality thresholds (config key
// cells[].quality; the defaults live in internal/lifecycle).
type QualityOptions struct {
	// MinCoverage is the least coverage a required stream may have; 0
	// checks nothing.
	MinCoverage float64
	// MaxAlignmentBound is the largest alignment error bound a required
	// stream may state; 0 checks nothing.
	MaxAlignmentBound time.Duration
	// Required are the streams the verdict is about: stream ids or
	// path.Match patterns (for templated MQTT streams). Empty means every
	// stream of the episode. A required stream or pattern with no samples
	// in the episode is a missing stream.
	Required []string
}

// Judge gives the quality verdict of a finished episode from its per-stream
// reports (e.Quality) and its streams (e.Streams). It is degraded when a
// required stream has no samples, covers less of the window than
// MinCoverage, or states an alignment bound above MaxAlignmentBound, and
// when the episode has no stream at all; every such finding is one reason,
// in stream order.
func Judge(e episode.Episode, o QualityOptions) episode.Verdict {
	byStream := make(map[string]*episode.StreamReport, len(e.Quality))
	for i := range e.Quality {
		byStream[e.Quality[i].Stream] = &e.Quality[i]
	}
	streams := slices.Clone(e.Streams)
	for s := range byStream {
		if !slices.Contains(streams, s) {
			streams = append(streams, s)
		}
	}
	slices.Sort(streams)
	required := func(s string) bool {
		if len(o.Required) == 0 {
			return true
		}
		for _, p := range o.Required {
			if ok, _ := path.Match(p, s); ok {
				return true
			}
		}
		return false
	}
	var reasons []episode.Reason
	matched := make([]bool, len(o.Required))
	for _, s := range streams {
		for i, p := range o.Required {
			if ok, _ := path.Match(p, s); ok {
				matched[i] = true
			}
		}
		if !required(s) {
			continue
		}
		q := byStream[s]
		if q == nil || q.Samples == 0 {
			detail := "no samples in the episode"
			if q != nil && len(q.GapList) > 0 {
				detail += " (" + q.GapList[0].Cause + ")"
			}
			reasons = append(reasons, episode.Reason{Stream: s, Code: episode.ReasonMissingStream, Detail: detail})
			continue
		}
		if o.MinCoverage > 0 && q.Coverage < o.MinCoverage {
			reasons = append(reasons, episode.Reason{Stream: s, Code: episode.ReasonLowCoverage,
				Detail: fmt.Sprintf("coverage %.4g below %.4g: %d of %d samples; %s", q.Coverage, o.MinCoverage, q.Samples, q.Expected, gapSummary(q))})
		}
		if b := o.MaxAlignmentBound; b > 0 && q.AlignmentErrorBoundMs*1e6 > float64(b) {
			reasons = append(reasons, episode.Reason{Stream: s, Code: episode.ReasonAlignmentBound,
				Detail: fmt.Sprintf("alignment error bound %.3g ms above %.3g ms", q.AlignmentErrorBoundMs, float64(b)/1e6)})
		}
	}
	for i, p := range o.Required {
		if !matched[i] {
			reasons = append(reasons, episode.Reason{Stream: p, Code: episode.ReasonMissingStream, Detail: "required stream not in the episode"})
		}
	}
	if len(streams) == 0 && len(o.Required) == 0 {
		// Nothing to measure is not clean: no device of the cell has ever
		// produced a stream.
		reasons = append(reasons, episode.Reason{Code: episode.ReasonMissingStream, Detail: "the episode has no streams: no device of the cell has produced data"})
	}
	if len(reasons) > 0 {
		return episode.Verdict{Status: episode.QualityDegraded, Reasons: reasons}
	}
	return episode.Verdict{Status: episode.QualityOK}
}

// gapSummary says how long the gaps of a stream are, by cause.
func gapSummary(q *episode.StreamReport) string {
	if q.Gaps == 0 {
		return "no gaps"
	}
	dur := map[string]int64{}
	var causes []string
	for _, g := range q.GapList {
		if _, ok := dur[g.Cause]; !ok {
			causes = append(causes, g.Cause)
		}
		dur[g.Cause] += g.To - g.From
	}
	slices.Sort(causes)
	parts := make([]string, 0, len(causes))
	for _, c := range causes {
		parts = append(parts, fmt.Sprintf("%s %s", c, time.Duration(dur[c]).Round(time.Millisecond)))
	}
	s := fmt.Sprintf("%d gaps, %s", q.Gaps, time.Duration(q.MissingNs).Round(time.Millisecond))
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s
}
