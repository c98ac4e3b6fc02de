package rtsp

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/sample"
)

// ingestSink stamps every sample through the real ingest pipeline
// (ingest.Stream) as the daemon does, and keeps each stamped sample with
// the clock figures it was stamped under.
type ingestSink struct {
	mu      sync.Mutex
	proc    *ingest.Stream
	stamped []stamped
}

type stamped struct {
	s      sample.Sample
	bound  int64
	source string
}

func (k *ingestSink) Describe(d sample.Descriptor) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.proc != nil {
		return k.proc.SetDescriptor(d, time.Now().UnixNano())
	}
	p, err := ingest.NewStream(d, 0, ingest.ClockOptions{ErrorFloor: 500 * time.Microsecond})
	k.proc = p
	return err
}

func (k *ingestSink) Write(x sample.Sample, done func(error)) error {
	k.mu.Lock()
	k.proc.Process(&x)
	bound, _ := k.proc.BoundOver(x.T, x.T)
	k.stamped = append(k.stamped, stamped{s: x, bound: bound, source: k.proc.ClockStatus().Source})
	k.mu.Unlock()
	if done != nil {
		done(nil)
	}
	return nil
}

func (k *ingestSink) snapshot() []stamped {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]stamped(nil), k.stamped...)
}

// TestUntrustworthyTimestamps: a camera whose RTP timestamps cannot be
// trusted. The test server plays the repository's H.264 clip (encoded by
// ffmpeg, a keyframe every 30 frames) in real time at 30 fps over RTSP, and
// rewrites the RTP timestamps: "double" runs them at twice the real rate
// and steps them back at every keyframe; "random" makes every frame's
// timestamp random. A sender report maps the first frame's timestamp to its
// send time, as a camera would. Through the real camera client and the
// real ingest pipeline, the stream falls back to arrival time within a few
// seconds, recorded as an event with a reason; from then on every frame's
// time is within 10 ms of its arrival, and the stated bound covers its
// error against the time the server sent it.
func TestUntrustworthyTimestamps(t *testing.T) {
	if testing.Short() {
		t.Skip("plays 12 s of video in real time; skipped under -short")
	}
	for _, mode := range []string{"double", "random"} {
		t.Run(mode, func(t *testing.T) { testUntrusted(t, mode) })
	}
}

func testUntrusted(t *testing.T, mode string) {
	cl := loadClip(t, sample.CodecH264)
	srv := startServer(t, "", cl.desc, "", "")
	sink := &ingestSink{}
	cam, err := New(Options{Device: "cam1", Stream: "cell1/cam1", URL: srv.url("cam"), Transport: "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	stop, _ := runCamera(t, cam, sink)
	srv.waitPlay(t)

	rng := rand.New(rand.NewPCG(1, 2))
	rewrite := func(k int) uint32 {
		switch mode {
		case "double":
			gop, within := uint32(k/30), uint32(k%30)
			return tsBase + gop*90000 + 2*within*3000
		default:
			return rng.Uint32()
		}
	}
	const frames = 360 // 12 s
	type sent struct {
		payload []byte
		at      int64
	}
	var sends []sent
	start := time.Now()
	for k := range frames {
		// Real time: frame k leaves at start + k/30 s (pacing: the test
		// is about arrival times).
		if d := time.Until(start.Add(time.Duration(k) * time.Second / 30)); d > 0 {
			time.Sleep(d)
		}
		ts := rewrite(k)
		at := time.Now()
		for _, p := range cl.packets(t, k, ts) {
			if err := srv.str().WritePacketRTP(cl.medi, p); err != nil {
				t.Fatal(err)
			}
		}
		sends = append(sends, sent{annexBOf(cl.aus[k%len(cl.aus)]), at.UnixNano()})
		if k == 0 {
			// The client matches a sender report to the SSRC it has seen,
			// so the report follows the first frame.
			waitFor(t, 15*time.Second, "the first frame", func() bool { return len(sink.snapshot()) >= 1 })
			senderReport(t, srv.str(), cl, ts, at)
		}
	}
	// TCP: nothing is lost, so every frame arrives.
	waitFor(t, 15*time.Second, "every frame", func() bool { return len(sink.snapshot()) >= frames })
	stop()
	got := sink.snapshot()

	// Match samples to sends in order by payload.
	j := 0
	firstSrc := -1
	fellAt := -1
	var worstArr, worstErr time.Duration
	var worstBound int64
	uncovered := 0
	for i, st := range got {
		for j < len(sends) && !bytes.Equal(sends[j].payload, st.s.Payload) {
			j++
		}
		if j == len(sends) {
			t.Fatalf("sample %d matches no frame sent", i)
		}
		sendAt := sends[j].at
		j++
		if firstSrc < 0 && st.s.SrcT != 0 {
			firstSrc = i
		}
		if fellAt < 0 && st.source == ingest.SourceArrival && firstSrc >= 0 {
			fellAt = i
		}
		if fellAt < 0 {
			continue
		}
		arr := time.Duration(st.s.RecvT - st.s.T)
		worstArr = max(worstArr, arr, -arr)
		e := time.Duration(st.s.T - sendAt)
		if e < 0 {
			e = -e
		}
		if e > worstErr {
			worstErr, worstBound = e, st.bound
		}
		if int64(e) > st.bound {
			uncovered++
		}
		if st.s.Flags&sample.ArrivalTime == 0 {
			t.Errorf("sample %d on arrival time is not flagged", i)
		}
	}
	if firstSrc < 0 || fellAt < 0 {
		t.Fatalf("no fallback to arrival time (first sample with device time: %d)", firstSrc)
	}
	latency := time.Duration(got[fellAt].s.RecvT - got[firstSrc].s.RecvT)
	st := sink.proc.ClockStatus()
	t.Logf("%s: fell back %v (%d frames) after the first frame with device time: %q; after it, |T-arrival| <= %v, worst |T-sent| %v (bound there %v), status bound %v, events %v",
		mode, latency, fellAt-firstSrc, st.SourceReason, worstArr, worstErr, time.Duration(worstBound), time.Duration(st.ErrorBoundNs), st.Events)
	if latency > 6*time.Second {
		t.Errorf("fell back to arrival time %v after device time appeared, want within a few seconds", latency)
	}
	if worstArr > 10*time.Millisecond {
		t.Errorf("frame times up to %v from arrival on arrival time, want within 10ms", worstArr)
	}
	if uncovered > 0 {
		t.Errorf("%d frames had an error above their stated bound (worst %v vs %v)", uncovered, worstErr, time.Duration(worstBound))
	}
	if st.Source != ingest.SourceArrival || st.SourceReason == "" || st.Events[ingest.EventUntrusted] != 1 {
		t.Errorf("status %+v: want on arrival time with a reason and one %s event", st, ingest.EventUntrusted)
	}
	if r := sink.proc.ClockReport(0, 1<<62); r.ClockSource != ingest.SourceArrival || r.ClockSourceReason == "" {
		t.Errorf("report clock %+v", r)
	}
}
