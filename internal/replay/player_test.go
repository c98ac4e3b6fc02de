package replay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

type sent struct {
	topic   string
	payload []byte
	at      time.Time
	media   time.Duration
	abs     int64
}

// recorder stands in for the sinks in schedule tests: it records what the
// player hands to the Publisher and VideoStream interfaces, and when. The
// schedule tests run in a testing/synctest bubble, whose clock moves only
// when every goroutine in it waits, so a schedule is checked exactly and
// at once; timing accuracy is measured with the real clock elsewhere
// (TestReplayMQTT, BenchmarkReplayTiming). The real sinks (mosquitto, the
// RTSP server) are exercised in TestReplayMQTT and TestReplayRTSP.
type recorder struct {
	mu    sync.Mutex
	msgs  []sent
	video map[string][]sent
	onPub func(n int)
}

func (r *recorder) Publish(topic string, qos byte, payload []byte, done func(error)) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, sent{topic: topic, payload: payload, at: time.Now()})
	n := len(r.msgs)
	r.mu.Unlock()
	if qos != 1 {
		return errors.New("qos is not 1")
	}
	done(nil)
	if r.onPub != nil {
		r.onPub(n)
	}
	return nil
}

type recVideo struct {
	r      *recorder
	stream string
}

func (v recVideo) WriteAccessUnit(media time.Duration, abs int64, au []byte) error {
	v.r.mu.Lock()
	defer v.r.mu.Unlock()
	v.r.video[v.stream] = append(v.r.video[v.stream], sent{payload: au, at: time.Now(), media: media, abs: abs})
	return nil
}

func newRecorder() *recorder {
	return &recorder{video: map[string][]sent{}}
}

func (r *recorder) options(o Options) Options {
	o.MQTT = r
	o.Video = func(stream string, d sample.Descriptor) (VideoStream, error) { return recVideo{r, stream}, nil }
	return o
}

// At rate 2 every sample goes out at start + (T − From)/2, to its original
// topic (the stream id for a templated stream), with its payload unchanged;
// video gets media time T − From and absolute time T.
func TestScheduleRateTopics(t *testing.T) {
	st := openStore(t)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	te := buildEpisode(t, st, epID, t0, time.Second, episode.Closed)
	for _, prefix := range []string{"", "replay/"} {
		synctest.Test(t, func(t *testing.T) { scheduleRateTopics(t, st, t0, te, prefix) })
	}
}

func scheduleRateTopics(t *testing.T, st *storage.Store, t0 int64, te *testEpisode, prefix string) {
	r := newRecorder()
	p, err := New(r.options(Options{Rate: 2, TopicPrefix: prefix}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := p.Run(context.Background(), StoreOpener(st, epID, Selection{}))
	if err != nil {
		t.Fatal(err)
	}
	start := sum.Started
	pre := ""
	if prefix != "" {
		pre = "replay/"
	}
	topics := map[string]string{sJoints: pre + topicJoints, sLidar: pre + topicLidar, sDoor: pre + sDoor}
	byTopic := map[string][]sent{}
	for _, m := range r.msgs {
		byTopic[m.topic] = append(byTopic[m.topic], m)
	}
	if len(byTopic) != 3 {
		t.Errorf("published on topics %v, want 3", keys(byTopic))
	}
	for stream, topic := range topics {
		want := te.samples[stream]
		got := byTopic[topic]
		if len(got) != len(want) {
			t.Fatalf("%s: %d messages on %s, want %d", stream, len(got), topic, len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i].payload, want[i].Payload) {
				t.Fatalf("%s #%d: payload differs", stream, i)
			}
			if d := got[i].at.Sub(start); d != time.Duration((want[i].T-t0)/2) {
				t.Fatalf("%s #%d sent at +%s, want +%s", stream, i, d, time.Duration((want[i].T-t0)/2))
			}
		}
	}
	vs := r.video[sCam]
	if len(vs) != len(te.samples[sCam]) {
		t.Fatalf("%d access units, want %d", len(vs), len(te.samples[sCam]))
	}
	for i, s := range te.samples[sCam] {
		if !bytes.Equal(vs[i].payload, s.Payload) || vs[i].abs != s.T || vs[i].media != time.Duration(s.T-t0) ||
			vs[i].at.Sub(start) != time.Duration((s.T-t0)/2) {
			t.Fatalf("access unit %d: media %s abs %d at +%s", i, vs[i].media, vs[i].abs, vs[i].at.Sub(start))
		}
	}
	if sum.Passes != 1 || sum.Interrupted || sum.Failed() {
		t.Errorf("summary %+v", sum)
	}
	for _, ss := range sum.Streams {
		want := uint64(len(te.samples[ss.Stream]))
		if ss.Sent != want || (ss.Sink == SinkMQTT && ss.Acked != want) {
			t.Errorf("%s: sent %d acked %d, want %d", ss.Stream, ss.Sent, ss.Acked, want)
		}
	}
	if all := sum.Overall(); all.N != uint64(len(r.msgs)+len(vs)) || all.Max != 0 {
		t.Errorf("timing %+v: want every sample, and zero error in a synctest bubble", all)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Loop replays [from, to] again and again, pass k shifted by k·(to − from);
// cancelling stops it without an error.
func TestScheduleLoopRange(t *testing.T) {
	st := openStore(t)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	te := buildEpisode(t, st, epID, t0, time.Second, episode.Closed)
	synctest.Test(t, func(t *testing.T) { scheduleLoopRange(t, st, t0, te) })
}

func scheduleLoopRange(t *testing.T, st *storage.Store, t0 int64, te *testEpisode) {
	r := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var inRange []sample.Sample
	for _, s := range te.samples[sJoints] {
		if s.T >= t0+int64(200*time.Millisecond) && s.T <= t0+int64(600*time.Millisecond) {
			inRange = append(inRange, s)
		}
	}
	r.onPub = func(n int) {
		if n == 3*len(inRange)+5 {
			cancel()
		}
	}
	o := r.options(Options{Loop: true})
	o.Video = nil
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := p.Run(ctx, StoreOpener(st, epID, Selection{Streams: "cell1/robot1/*", From: 200 * time.Millisecond, To: 600 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	start := sum.Started
	if !sum.Interrupted || sum.Passes != 4 {
		t.Errorf("interrupted %v passes %d, want true, 4", sum.Interrupted, sum.Passes)
	}
	if len(r.msgs) != 3*len(inRange)+5 {
		t.Fatalf("%d messages, want %d", len(r.msgs), 3*len(inRange)+5)
	}
	span := 400 * time.Millisecond
	for i, m := range r.msgs {
		pass, k := i/len(inRange), i%len(inRange)
		s := inRange[k]
		want := time.Duration(s.T-t0-int64(200*time.Millisecond)) + time.Duration(pass)*span
		if m.at.Sub(start) != want || !bytes.Equal(m.payload, s.Payload) || m.topic != topicJoints {
			t.Fatalf("message %d (pass %d): at +%s on %s, want +%s on %s", i, pass, m.at.Sub(start), m.topic, want, topicJoints)
		}
	}
	for _, ss := range sum.Streams {
		if ss.Stream != sJoints {
			t.Errorf("stream %s in the summary, not selected", ss.Stream)
		}
	}
}

// Without a broker and a video server nothing can be replayed; with only a
// broker, video is reported as not served.
func TestScheduleSinksMissing(t *testing.T) {
	st := openStore(t)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	buildEpisode(t, st, epID, t0, 100*time.Millisecond, episode.Closed)
	synctest.Test(t, func(t *testing.T) { scheduleSinksMissing(t, st) })
}

func scheduleSinksMissing(t *testing.T, st *storage.Store) {
	p, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Run(context.Background(), StoreOpener(st, epID, Selection{})); !errors.Is(err, ErrNothing) {
		t.Errorf("no sinks: %v, want ErrNothing", err)
	}
	r := newRecorder()
	o := r.options(Options{})
	o.Video = nil
	p, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := p.Run(context.Background(), StoreOpener(st, epID, Selection{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, ss := range sum.Streams {
		if ss.Stream == sCam && (ss.Sink != "" || ss.Note != "video not served" || ss.Sent != 0) {
			t.Errorf("camera: %+v", ss)
		}
	}
	if _, err := New(Options{Rate: -1, TopicPrefix: "a/#"}); err == nil {
		t.Error("bad options accepted")
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * 10 * time.Microsecond) // 10 µs .. 10 ms
	}
	h.add(-time.Millisecond) // counts as 0
	h.add(3 * time.Second)
	if got := h.quantile(0.5); got < 4990*time.Microsecond || got > 5010*time.Microsecond {
		t.Errorf("p50 %s, want ~5ms", got)
	}
	if got := h.quantile(0.99); got < 9890*time.Microsecond || got > 9990*time.Microsecond {
		t.Errorf("p99 %s, want ~9.9ms", got)
	}
	if got := h.quantile(1); got != 3*time.Second || h.max != 3*time.Second {
		t.Errorf("p100 %s max %s, want 3s", got, h.max)
	}
	if h.n != 1002 {
		t.Errorf("n %d", h.n)
	}
}

// A keyframe without in-band parameter sets, after the descriptor changed,
// is sent with the new version's sets in front (the SDP still carries the
// first version's); other units go out unchanged.
func TestScheduleParamsInserted(t *testing.T) {
	st := openStore(t)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	v1 := sample.Descriptor{Stream: sCam, Kind: sample.KindVideo, Codec: sample.CodecH264, Params: [][]byte{{0x67, 1}, {0x68, 1}}, Since: t0}
	v2 := v1
	v2.Params, v2.Since = [][]byte{{0x67, 2}, {0x68, 2}}, t0+int64(time.Second)
	for _, d := range []sample.Descriptor{v1, v2} {
		if _, err := st.PutDescriptor(d); err != nil {
			t.Fatal(err)
		}
	}
	idr := []byte{0, 0, 0, 1, 0x65, 0x88, 0x84}
	withSPS := append([]byte{0, 0, 0, 1, 0x67, 3, 0, 0, 0, 1, 0x68, 3}, idr...)
	p := []byte{0, 0, 0, 1, 0x41, 0x9a}
	ss := []sample.Sample{
		{T: t0, Flags: sample.Keyframe, Payload: idr},                                    // v1 in force: gets v1's sets
		{T: t0 + int64(500*time.Millisecond), Payload: p},                                // not a keyframe
		{T: t0 + int64(1100*time.Millisecond), Flags: sample.Keyframe, Payload: idr},     // v2: gets v2's sets
		{T: t0 + int64(1200*time.Millisecond), Payload: p},                               // unchanged
		{T: t0 + int64(1300*time.Millisecond), Flags: sample.Keyframe, Payload: withSPS}, // has its own: unchanged
	}
	for i := range ss {
		ss[i].Stream, ss[i].Seq = sCam, uint64(i+1)
	}
	durable := make(chan error, 1)
	if err := st.Append(ss, func(err error) { durable <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-durable; err != nil {
		t.Fatal(err)
	}
	if err := st.PutEpisode(episode.Episode{ID: epID, Start: t0, Stop: t0 + int64(2*time.Second), Streams: []string{sCam}, State: episode.Closed}); err != nil {
		t.Fatal(err)
	}
	synctest.Test(t, func(t *testing.T) { scheduleParamsInserted(t, st, idr, p, withSPS) })
}

func scheduleParamsInserted(t *testing.T, st *storage.Store, idr, p, withSPS []byte) {
	r := newRecorder()
	var sdp sample.Descriptor
	o := r.options(Options{})
	o.MQTT = nil
	o.Video = func(stream string, d sample.Descriptor) (VideoStream, error) {
		sdp = d
		return recVideo{r, stream}, nil
	}
	pl, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := pl.Run(context.Background(), StoreOpener(st, epID, Selection{}))
	if err != nil {
		t.Fatal(err)
	}
	if sdp.Version != 1 {
		t.Errorf("SDP from descriptor version %d, want 1", sdp.Version)
	}
	got := r.video[sCam]
	want := [][]byte{append([]byte{0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 1}, idr...), p,
		append([]byte{0, 0, 0, 1, 0x67, 2, 0, 0, 0, 1, 0x68, 2}, idr...), p, withSPS}
	if len(got) != len(want) {
		t.Fatalf("%d units, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i].payload, want[i]) {
			t.Errorf("unit %d: % x, want % x", i, got[i].payload, want[i])
		}
	}
	if sum.Streams[0].ParamsInserted != 2 {
		t.Errorf("params inserted %d, want 2", sum.Streams[0].ParamsInserted)
	}
}

// A samples stream that breaks off mid-way ends the replay with an error
// (after sending what arrived), never as a complete replay.
func TestScheduleTruncatedSource(t *testing.T) {
	synctest.Test(t, scheduleTruncatedSource)
}

func scheduleTruncatedSource(t *testing.T) {
	var buf bytes.Buffer
	enc := NewEncoder(&buf)
	h := Header{Format: Format, Episode: episode.Episode{ID: "x", Start: 1000, Stop: 1000 + int64(time.Second), State: episode.Closed},
		From: 1000, To: 1000 + int64(time.Second), Streams: []StreamInfo{{Stream: "a", Descriptors: []sample.Descriptor{
			{Stream: "a", Version: 1, Kind: sample.KindTelemetry, Codec: sample.CodecJSON, Source: "t/a"}}}}}
	if err := enc.Header(h); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := enc.Sample(sample.Sample{Stream: "a", Seq: uint64(i + 1), T: 1000 + int64(i)*1e6, Payload: []byte(`{}`)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	cut := buf.Bytes()[:buf.Len()-3] // the last sample frame is incomplete, and no end frame
	r := newRecorder()
	p, err := New(r.options(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := p.Run(context.Background(), ReaderOpener(func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(cut)), nil
	}))
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("err %v, want ErrTruncated", err)
	}
	if len(r.msgs) != 9 || sum.Streams[0].Sent != 9 || r.msgs[0].topic != "t/a" {
		t.Errorf("%d messages sent, summary %+v; want the 9 complete ones on t/a", len(r.msgs), sum.Streams)
	}
}
