package ingest

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
)

// outageCase is one stream over a 20 s window with one outage [at, at+for)
// relative to the window's start (for < 0: the whole window).
type outageCase struct {
	name     string
	at, dur  time.Duration
	wantGaps int
}

var outageCases = []outageCase{
	{"start", 0, 3 * time.Second, 1},
	{"middle", 8 * time.Second, 3 * time.Second, 1},
	{"end", 17 * time.Second, 3 * time.Second, 1},
	{"whole", 0, 20 * time.Second, 1},
}

// TestReportOutages: outages at the start, in the middle, at the end and
// for the whole episode, for a camera (30 fps, rate learned from the data)
// and a telemetry stream (100 Hz, rate from the config). Coverage is exact
// to one sample against the ground truth, the one gap is within one sample
// period of the outage, and the verdict is degraded with the right reason.
func TestReportOutages(t *testing.T) {
	streams := []struct {
		d      sample.Descriptor
		period int64
		config bool
	}{
		{sample.Descriptor{Stream: "c1/cam", Kind: sample.KindVideo, Codec: sample.CodecH264, Clock: sample.ClockDevice}, int64(time.Second) / 30, false},
		{sample.Descriptor{Stream: "c1/joints", Kind: sample.KindTelemetry, Codec: sample.CodecJSON, Clock: sample.ClockArrival}, int64(10 * time.Millisecond), true},
	}
	const window = 20 * time.Second
	rng := rand.New(rand.NewPCG(7, 7))
	for _, st := range streams {
		for _, oc := range outageCases {
			t.Run(st.d.Stream+"/"+oc.name, func(t *testing.T) {
				from := t0
				to := from + int64(window)
				a, b := from+int64(oc.at), from+int64(oc.at+oc.dur)
				phase := rng.Int64N(st.period)
				var xs []sample.Sample
				slots := 0
				for tm := from + phase; tm <= to; tm += st.period {
					slots++
					if tm >= a && tm < b {
						continue
					}
					xs = append(xs, sample.Sample{T: tm, RecvT: tm, SrcT: tm, Payload: []byte{1}})
				}
				o := ReportOptions{From: from, To: to}
				if st.config {
					o.Period = st.period
				}
				r, err := NewReport(st.d, o)
				if err != nil {
					t.Fatal(err)
				}
				for i := range xs {
					r.Add(&xs[i])
				}
				rep := r.Result()
				if rep.Samples != uint64(len(xs)) {
					t.Fatalf("samples %d, want %d", rep.Samples, len(xs))
				}
				// Coverage exact to one sample: the expected count is the
				// window's slots, give or take one.
				if len(xs) > 0 || st.config {
					if d := int64(rep.Expected) - int64(slots); d < -1 || d > 1 {
						t.Errorf("expected %d, the window has %d slots", rep.Expected, slots)
					}
				}
				truth := float64(len(xs)) / float64(slots)
				if math.Abs(rep.Coverage-truth)*float64(slots) > 1 {
					t.Errorf("coverage %v, truth %v (%d of %d): more than one sample off", rep.Coverage, truth, len(xs), slots)
				}
				if len(rep.GapList) != oc.wantGaps || rep.Gaps != uint64(oc.wantGaps) {
					t.Fatalf("gaps %d %+v, want %d", rep.Gaps, rep.GapList, oc.wantGaps)
				}
				g := rep.GapList[0]
				if math.Abs(float64(g.From-a)) > float64(st.period) || math.Abs(float64(g.To-b)) > float64(st.period) {
					t.Errorf("gap [%d, %d] is more than one period (%v) from the outage [%d, %d] (relative to the window: [%v, %v] vs [%v, %v])",
						g.From, g.To, time.Duration(st.period), a, b, time.Duration(g.From-from), time.Duration(g.To-from), oc.at, oc.at+oc.dur)
				}
				if g.Cause != episode.CauseNoData {
					t.Errorf("cause %q, want no_data", g.Cause)
				}
				e := episode.Episode{Streams: []string{st.d.Stream}, Quality: []episode.StreamReport{rep}}
				v := Judge(e, QualityOptions{MinCoverage: 0.99, MaxAlignmentBound: 5 * time.Millisecond})
				want := episode.ReasonLowCoverage
				if oc.name == "whole" {
					want = episode.ReasonMissingStream
				}
				if v.Status != episode.QualityDegraded || len(v.Reasons) != 1 || v.Reasons[0].Code != want || v.Reasons[0].Stream != st.d.Stream {
					t.Errorf("verdict %+v, want degraded for %s", v, want)
				}
				t.Logf("%d/%d samples, expected %d, coverage %.4f, gap %+v; verdict %+v", len(xs), slots, rep.Expected, rep.Coverage, g, v)
			})
		}
	}
}

// TestReportGapCauses: the cause of a gap comes from the sample after it
// and the device's offline intervals.
func TestReportGapCauses(t *testing.T) {
	const p = int64(10 * time.Millisecond)
	d := sample.Descriptor{Stream: "c1/joints", Kind: sample.KindTelemetry, Clock: sample.ClockArrival}
	from := t0
	to := from + 200*p
	offline := Interval{from + 100*p, from + 110*p}
	r, _ := NewReport(d, ReportOptions{From: from, To: to, Period: p, Offline: []Interval{offline}})
	// Slots 0..199; holes: 20..29 flagged Lost, 40..49 flagged Dropped,
	// 60..69 refused by storage, 80..89 silent, 98..112 offline.
	flags := map[int]sample.Sample{
		30:  {Flags: sample.Discontinuity, Lost: 40},
		50:  {Flags: sample.Discontinuity, Dropped: 10},
		70:  {Flags: sample.Refused},
		113: {Flags: sample.Discontinuity},
	}
	for i := range 200 {
		if i >= 20 && i < 30 || i >= 40 && i < 50 || i >= 60 && i < 70 || i >= 80 && i < 90 || i >= 98 && i < 113 {
			continue
		}
		x := flags[i]
		x.T = from + int64(i)*p
		x.RecvT = x.T
		r.Add(&x)
	}
	rep := r.Result()
	want := []string{episode.CausePacketLoss, episode.CauseQueueDrop, episode.CauseStorageRejected, episode.CauseNoData, episode.CauseDeviceOffline}
	if len(rep.GapList) != len(want) {
		t.Fatalf("gaps %+v", rep.GapList)
	}
	for i, g := range rep.GapList {
		if g.Cause != want[i] {
			t.Errorf("gap %d [%v, %v]: cause %s, want %s", i, time.Duration(g.From-from), time.Duration(g.To-from), g.Cause, want[i])
		}
	}
	if rep.Lost != 40 || rep.Drops != 10 || rep.TimeGaps != 2 {
		t.Errorf("lost %d drops %d time gaps %d", rep.Lost, rep.Drops, rep.TimeGaps)
	}
	if rep.Expected != 200 || rep.Samples != 200-55 {
		t.Errorf("expected %d samples %d", rep.Expected, rep.Samples)
	}
}

// TestReportRefusedTail: storage refused the stream's samples until the
// window's end, so no stored sample carries the Refused flag after the
// gap; the Refused intervals still account it to storage_rejected.
func TestReportRefusedTail(t *testing.T) {
	const p = int64(10 * time.Millisecond)
	d := sample.Descriptor{Stream: "c1/cam", Kind: sample.KindVideo, Clock: sample.ClockArrival}
	from := t0
	to := from + 100*p
	for _, tc := range []struct {
		refused []Interval
		want    string
	}{
		{nil, episode.CauseNoData},
		{[]Interval{{from + 60*p, from + 99*p}}, episode.CauseStorageRejected},
	} {
		r, _ := NewReport(d, ReportOptions{From: from, To: to, Period: p, Refused: tc.refused})
		for i := range 60 {
			x := sample.Sample{T: from + int64(i)*p, RecvT: from + int64(i)*p}
			r.Add(&x)
		}
		rep := r.Result()
		if len(rep.GapList) != 1 || rep.GapList[0].Cause != tc.want || rep.GapList[0].To != to {
			t.Errorf("refused %v: gaps %+v, want one to the window's end caused by %s", tc.refused, rep.GapList, tc.want)
		}
	}
}

// TestReportNoWindow: without a window the span of the samples is measured
// and a short edge silence is not a gap.
func TestReportNoWindow(t *testing.T) {
	const p = int64(10 * time.Millisecond)
	d := sample.Descriptor{Stream: "c1/joints", Kind: sample.KindTelemetry, Clock: sample.ClockArrival}
	r, _ := NewReport(d, ReportOptions{})
	for i := range 100 {
		tm := t0 + int64(i)*p
		r.Add(&sample.Sample{T: tm, RecvT: tm})
	}
	rep := r.Result()
	if rep.Expected != 100 || rep.Coverage != 1 || rep.Gaps != 0 || rep.RateSource != "learned" || rep.NominalRateHz != 100 {
		t.Fatalf("%+v", rep)
	}
	// Edge silence just under gap_factor-1 periods is not a gap.
	r, _ = NewReport(d, ReportOptions{From: t0 - 2*p + 1, To: t0 + 99*p + 2*p - 1})
	for i := range 100 {
		tm := t0 + int64(i)*p
		r.Add(&sample.Sample{T: tm, RecvT: tm})
	}
	if rep := r.Result(); rep.Gaps != 0 || rep.Expected != 103 {
		t.Fatalf("edges: %+v", rep.GapList)
	}
}

func TestJudge(t *testing.T) {
	e := episode.Episode{Streams: []string{"c1/cam", "c1/joints", "c1/robot/a"}, Quality: []episode.StreamReport{
		{Stream: "c1/cam", Samples: 100, Expected: 100, Coverage: 1, AlignmentErrorBoundMs: 7},
		{Stream: "c1/joints", Samples: 90, Expected: 100, Coverage: 0.9},
		{Stream: "c1/robot/a", Samples: 100, Expected: 100, Coverage: 1},
	}}
	o := QualityOptions{MinCoverage: 0.99, MaxAlignmentBound: 5 * time.Millisecond}
	v := Judge(e, o)
	if v.Status != episode.QualityDegraded || len(v.Reasons) != 2 || v.Reasons[0].Code != episode.ReasonAlignmentBound || v.Reasons[1].Code != episode.ReasonLowCoverage {
		t.Fatalf("%+v", v)
	}
	o.Required = []string{"c1/robot/*"}
	if v := Judge(e, o); v.Status != episode.QualityOK || len(v.Reasons) != 0 {
		t.Fatalf("only c1/robot/* required: %+v", v)
	}
	if v := Judge(episode.Episode{}, QualityOptions{MinCoverage: 0.99}); v.Status != episode.QualityDegraded || len(v.Reasons) != 1 || v.Reasons[0].Code != episode.ReasonMissingStream {
		t.Fatalf("an episode without streams: %+v", v)
	}
	o.Required = []string{"c1/robot/*", "c1/lidar"}
	if v := Judge(e, o); v.Status != episode.QualityDegraded || len(v.Reasons) != 1 || v.Reasons[0].Code != episode.ReasonMissingStream || v.Reasons[0].Stream != "c1/lidar" {
		t.Fatalf("missing required: %+v", v)
	}
}

// TestReportFewSamplesConfiguredRate: with a configured rate, a gap between
// the only two samples of a window is found (no median is needed).
func TestReportFewSamplesConfiguredRate(t *testing.T) {
	const p = int64(100 * time.Millisecond)
	d := sample.Descriptor{Stream: "c1/lidar", Kind: sample.KindPointCloud, Clock: sample.ClockArrival}
	r, _ := NewReport(d, ReportOptions{From: t0, To: t0 + 20*p, Period: p})
	for _, tm := range []int64{t0, t0 + 20*p} {
		r.Add(&sample.Sample{T: tm, RecvT: tm})
	}
	rep := r.Result()
	if rep.Gaps != 1 || rep.Expected != 20 || rep.Coverage != 0.1 || rep.GapList[0].From != t0 || rep.GapList[0].To != t0+20*p {
		t.Fatalf("%+v", rep)
	}
}

// TestReportPriorPeriod: a stream silent for the whole window, with no
// configured rate, is measured at the period learned before the window.
func TestReportPriorPeriod(t *testing.T) {
	const p = int64(time.Second) / 30
	d := sample.Descriptor{Stream: "c1/cam", Kind: sample.KindVideo, Clock: sample.ClockArrival}
	r, _ := NewReport(d, ReportOptions{From: t0, To: t0 + 300*p, PriorPeriod: p})
	rep := r.Result()
	if rep.Expected != 300 || rep.Coverage != 0 || rep.RateSource != "learned" || rep.Gaps != 1 {
		t.Fatalf("%+v", rep)
	}
}

// TestReportClockStepNotAGap: a clock step moves aligned time while samples
// keep arriving. With the clock event on record it is not a gap; the same
// silence without a clock event is (data missing from a burst), and a real
// outage (nothing arrived) next to a clock event is a gap too.
func TestReportClockStepNotAGap(t *testing.T) {
	const p = int64(time.Second) / 30
	d := sample.Descriptor{Stream: "c1/cam", Kind: sample.KindVideo, Clock: sample.ClockDevice}
	build := func(jumpT, recvGap int64, events []episode.ClockEvent) episode.StreamReport {
		r, _ := NewReport(d, ReportOptions{From: t0, To: t0 + 599*p, Period: p})
		shift, recvShift := int64(0), int64(0)
		for k := int64(0); k < 600; k++ {
			if k == 300 {
				shift, recvShift = jumpT, recvGap
			}
			tm := t0 + k*p
			x := sample.Sample{T: min(tm+shift, t0+599*p), RecvT: tm + recvShift + int64(time.Millisecond)}
			r.Add(&x)
		}
		if events != nil {
			r.SetClock(episode.ClockReport{Mode: "device", Events: events})
		}
		return r.Result()
	}
	step := []episode.ClockEvent{{T: t0 + 300*p + int64(150*time.Millisecond), Kind: EventJump, Detail: "step"}}
	if rep := build(int64(200*time.Millisecond), 0, step); rep.Gaps != 0 || len(rep.GapList) != 0 {
		t.Errorf("a +200 ms clock step counted as a gap: %+v", rep.GapList)
	}
	if rep := build(int64(200*time.Millisecond), 0, []episode.ClockEvent{}); rep.Gaps != 1 {
		t.Errorf("a silence in aligned time without a clock event: %d gaps, want 1", rep.Gaps)
	}
	if rep := build(int64(2*time.Second), int64(2*time.Second), step); rep.Gaps != 1 || rep.GapList[0].Cause != episode.CauseNoData {
		t.Errorf("a real 2 s outage next to a clock event: %+v, want one no_data gap", rep.GapList)
	}
}
