package ingest

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/episoded/episoded/sample"
)

func TestStreamArrival(t *testing.T) {
	d := sample.Descriptor{Stream: "c1/joints", Kind: sample.KindTelemetry, Codec: sample.CodecJSON, Clock: sample.ClockArrival, Latency: int64(3 * time.Millisecond)}
	s, err := NewStream(d, 41, ClockOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		x := sample.Sample{RecvT: t0 + int64(i)*int64(10*time.Millisecond), SrcT: 12345, Payload: []byte("abc")}
		s.Process(&x)
		if x.Seq != uint64(42+i) {
			t.Fatalf("sample %d: seq %d, want %d (continuing from 41)", i, x.Seq, 42+i)
		}
		if x.Stream != "c1/joints" {
			t.Fatalf("stream %q", x.Stream)
		}
		if x.T != x.RecvT-int64(3*time.Millisecond) {
			t.Fatalf("T %d, want RecvT-latency %d (SrcT is ignored in arrival mode)", x.T, x.RecvT-int64(3*time.Millisecond))
		}
	}
	st := s.ClockStatus()
	if st.Mode != "arrival" || st.OffsetNs != -int64(3*time.Millisecond) || st.ErrorBoundNs != int64(3*time.Millisecond) {
		t.Fatalf("clock status %+v", st)
	}
	if c := s.Counters(); c.Samples != 5 || c.Bytes != 15 || c.LastSeq != 46 || c.ArrivalStamped != 5 {
		t.Fatalf("counters %+v", c)
	}
	if _, err := NewStream(sample.Descriptor{Stream: "x", Clock: "sundial"}, 0, ClockOptions{}); err == nil {
		t.Fatal("unknown clock mode accepted")
	}
}

func TestStreamCounters(t *testing.T) {
	s, _ := NewStream(sample.Descriptor{Stream: "c1/cam", Clock: sample.ClockArrival}, 0, ClockOptions{})
	in := []sample.Sample{
		{RecvT: 1, Flags: sample.Keyframe, Payload: make([]byte, 100)},
		{RecvT: 2, Flags: sample.Discontinuity, Lost: 7},
		{RecvT: 3, Flags: sample.Discontinuity | sample.Keyframe, Dropped: 4, Lost: 1},
		{RecvT: 4, Flags: sample.DecodeError, Payload: make([]byte, 10)},
	}
	for i := range in {
		s.Process(&in[i])
	}
	c := s.Counters()
	want := StreamCounters{Samples: 4, Bytes: 110, Discontinuities: 2, Lost: 8, Dropped: 4, DecodeErrors: 1, ArrivalStamped: 4, LastSeq: 4, LastT: 4, LastRecvT: 4}
	if c != want {
		t.Fatalf("counters\n got %+v\nwant %+v", c, want)
	}
}

// TestStreamDeviceBeforeSenderReport: an RTSP stream in device mode has no
// SrcT until the first RTCP sender report; it is stamped by arrival until
// then, and the switch is a clock event. Losing device time again (a new
// session) is an event too.
func TestStreamDeviceBeforeSenderReport(t *testing.T) {
	lat := int64(40 * time.Millisecond)
	d := sample.Descriptor{Stream: "c1/cam", Kind: sample.KindVideo, Codec: sample.CodecH264, Clock: sample.ClockDevice, Latency: lat}
	s, _ := NewStream(d, 0, ClockOptions{})
	rng := rand.New(rand.NewPCG(7, 7))
	sc := synthClock{rateHz: 30, dur: 60 * time.Second, offset: int64(1500 * time.Millisecond), driftPPM: 80}
	data := sc.generate(rng)
	const noSR = 90 // the first 3 s have no sender report
	var worst float64
	var prevT int64
	for i, o := range data {
		x := sample.Sample{RecvT: o.recv, SrcT: o.src}
		if i < noSR || (i >= 1500 && i < 1530) {
			x.SrcT = 0
		}
		s.Process(&x)
		if x.T < prevT {
			t.Fatalf("sample %d: T went back from %d to %d", i, prevT, x.T)
		}
		before := prevT
		prevT = x.T
		if x.SrcT == 0 {
			// Arrival minus latency (or minus the largest delay measured,
			// once there are measurements), unless that is before the
			// previous sample (T never decreases).
			if x.T > max(x.RecvT-lat, before) || x.T < before || x.T < x.RecvT-lat-int64(100*time.Millisecond) || x.Flags&sample.ArrivalTime == 0 {
				t.Fatalf("sample %d without SrcT: T=%d flags %b, want RecvT-latency (or the previous T), flagged", i, x.T, x.Flags)
			}
			if st := s.ClockStatus(); st.Mode != "arrival" {
				t.Fatalf("sample %d: mode %q while stamping by arrival", i, st.Mode)
			}
			continue
		}
		if i > noSR+150 && (i < 1500 || i > 1530+150) {
			worst = max(worst, math.Abs(float64(x.PTS()-o.g)))
		}
	}
	if worst > 2e6 {
		t.Errorf("worst alignment error once converged %.3fms", worst/1e6)
	}
	evs := s.Clock().Events(math.MinInt64, math.MaxInt64)
	kinds := []string{}
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	want := []string{EventDeviceTime, EventArrivalTime, EventDeviceTime}
	if len(kinds) != len(want) || kinds[0] != want[0] || kinds[1] != want[1] || kinds[2] != want[2] {
		t.Fatalf("events %v, want %v", kinds, want)
	}
	if evs[0].T != data[noSR].recv {
		t.Errorf("switch event at %d, want the first sample with SrcT (%d)", evs[0].T, data[noSR].recv)
	}
	st := s.ClockStatus()
	if st.Mode != "device" || !st.Converged || math.Abs(st.DriftPPM-80) > 5 {
		t.Fatalf("clock status %+v", st)
	}
	// The report for a window covers only events inside it.
	if r := s.ClockReport(evs[1].T, math.MaxInt64); len(r.Events) != 2 || r.Mode != "device" || r.ErrorBoundNs <= 0 {
		t.Fatalf("clock report %+v", r)
	}
	// A descriptor change of clock mode is an event; seq carries on.
	last := s.LastSeq()
	if err := s.SetDescriptor(sample.Descriptor{Stream: "c1/cam", Clock: sample.ClockArrival}, t0); err != nil {
		t.Fatal(err)
	}
	next := data[len(data)-1].recv + int64(time.Second)
	x := sample.Sample{RecvT: next, SrcT: 5}
	s.Process(&x)
	if x.Seq != last+1 || x.T != next || x.Flags&sample.ArrivalTime != 0 {
		t.Fatalf("after SetDescriptor: seq %d T %d", x.Seq, x.T)
	}
	if evs := s.Clock().Events(t0, t0); len(evs) != 1 || evs[0].Kind != EventMode {
		t.Fatalf("mode change events %+v", evs)
	}
}

// TestStreamUnprocess: a sample storage refused is taken back, so the next
// one reuses its seq and the counters forget it.
func TestStreamUnprocess(t *testing.T) {
	s, _ := NewStream(sample.Descriptor{Stream: "c1/cam", Clock: sample.ClockArrival}, 10, ClockOptions{})
	a := sample.Sample{RecvT: 1, Payload: make([]byte, 5)}
	s.Process(&a)
	refused := sample.Sample{RecvT: 2, Flags: sample.Discontinuity | sample.DecodeError, Lost: 3, Dropped: 2, Payload: make([]byte, 7)}
	s.Process(&refused)
	s.Unprocess(&a) // not the last one: ignored
	if s.LastSeq() != 12 {
		t.Fatalf("Unprocess of an older sample changed seq to %d", s.LastSeq())
	}
	s.Unprocess(&refused)
	next := sample.Sample{RecvT: 3}
	s.Process(&next)
	if next.Seq != 12 {
		t.Fatalf("seq after a refused sample = %d, want 12 (gapless)", next.Seq)
	}
	c := s.Counters()
	if c.Samples != 2 || c.Bytes != 5 || c.Discontinuities != 0 || c.DecodeErrors != 0 || c.Lost != 0 || c.Dropped != 0 || c.LastSeq != 12 {
		t.Fatalf("counters after Unprocess: %+v", c)
	}
}

// TestStreamBoundOver: an episode's stated bound is the worst bound of the
// samples it holds as they were stamped, including those stamped before
// the estimate converged and those without device time yet.
func TestStreamBoundOver(t *testing.T) {
	d := sample.Descriptor{Stream: "c1/cam", Clock: sample.ClockDevice}
	s, _ := NewStream(d, 0, ClockOptions{})
	const period = int64(time.Second / 30)
	base := t0
	// Two samples before any device time, then 20 s of device time with a
	// constant 1 ms delay.
	for i := range 2 {
		x := sample.Sample{RecvT: base + int64(i)*period}
		s.Process(&x)
	}
	var lastT int64
	for i := 2; i < 600; i++ {
		src := base + int64(i)*period - 1_000_000_000 // device clock 1 s behind
		x := sample.Sample{SrcT: src, RecvT: base + int64(i)*period + 1_000_000}
		s.Process(&x)
		lastT = x.T
	}
	early, ok := s.BoundOver(base, base+int64(time.Second))
	if !ok || early < int64(50*time.Millisecond) {
		t.Fatalf("bound over the first second = %v, %v; want a wide bound (arrival-stamped and unconverged samples)", time.Duration(early), ok)
	}
	late, ok := s.BoundOver(lastT-int64(5*time.Second), lastT)
	if !ok || late <= 0 || late > int64(time.Millisecond) {
		t.Fatalf("bound over the last 5 s = %v, %v; want a small positive bound once converged", time.Duration(late), ok)
	}
	if _, ok := s.BoundOver(base-int64(2*time.Hour), base); ok {
		t.Fatal("a range older than the history must report not covered")
	}
	arr, _ := NewStream(sample.Descriptor{Stream: "a", Clock: sample.ClockArrival}, 0, ClockOptions{})
	if _, ok := arr.BoundOver(0, 1); ok {
		t.Fatal("arrival streams have no stamped-bound history")
	}
}

// TestStreamDecodeOrder: a video stream with B-frames arrives in decode
// order with presentation (capture) times that go back and forth. T must
// never decrease (storage keys on it, so it keeps the camera's order), and
// T + PTSOffset must stay the aligned presentation time.
func TestStreamDecodeOrder(t *testing.T) {
	d := sample.Descriptor{Stream: "c1/cam", Kind: sample.KindVideo, Codec: sample.CodecH264, Clock: sample.ClockDevice}
	s, _ := NewStream(d, 0, ClockOptions{})
	const frame = int64(time.Second / 30)
	base := int64(1_800_000_000) * 1e9
	// IPBB...: presentation index per decode index, PTS - DTS in frames.
	order := []struct{ pts, off int64 }{{0, 1}, {3, 3}, {1, 0}, {2, 0}, {6, 3}, {4, 0}, {5, 0}}
	var lastT int64
	for gop := int64(0); gop < 100; gop++ {
		for k, o := range order {
			capture := base + (gop*7+o.pts)*frame
			// Sent after the P frame it depends on is encoded: at the
			// DTS + 3 frames, plus a 2 ms network delay.
			dts := base + (gop*7+int64(k)-1)*frame
			x := sample.Sample{SrcT: capture, RecvT: dts + 3*frame + 2e6, PTSOffset: o.off * frame}
			if x.RecvT < capture {
				t.Fatalf("test data: arrival before capture")
			}
			s.Process(&x)
			if x.Seq > 1 && x.T < lastT {
				t.Fatalf("sample %d: T %d before the previous %d", x.Seq, x.T, lastT)
			}
			lastT = x.T
			if gop > 10 {
				if e := x.PTS() - capture; e < 0 || e > 5e6 {
					t.Fatalf("sample %d: presentation %d off the capture time by %v", x.Seq, x.PTS(), time.Duration(e))
				}
			}
		}
	}
}
