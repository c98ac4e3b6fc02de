package webrtc

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/internal/video/videotest"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// openStore opens and runs a real store on a temp dir.
func openStore(t *testing.T) *storage.Store {
	t.Helper()
	st, err := storage.Open(storage.Options{Dir: t.TempDir(), MinFree: -1, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("store run: %v", err)
		}
		if err := st.Close(); err != nil && !errors.Is(err, storage.ErrClosed) {
			t.Errorf("store close: %v", err)
		}
	})
	return st
}

// Replay of a stored episode from an offset in the middle of a GOP: the
// viewer gets the frames from the last keyframe at or before the offset
// (pre-roll from the stored timeline) to the end, in order, starting with
// that keyframe and its parameter sets, paced in real time; then the
// session closes.
func TestWHEPReplay(t *testing.T) {
	st := openStore(t)
	aus := clipAUs(t)
	const frame = int64(time.Second) / 30
	t0 := time.Now().Add(-time.Hour).UnixNano()
	d := liveDesc
	d.Params = clipParams(t)
	d.Since = t0
	if _, err := st.PutDescriptor(d); err != nil {
		t.Fatal(err)
	}
	samples := make([]sample.Sample, len(aus))
	for i := range aus {
		s := clipSample(aus, i, t0+int64(i)*frame) // SPS/PPS stripped: they come from the descriptor
		s.Seq = uint64(i + 1)
		samples[i] = s
	}
	durable := make(chan error, 1)
	if err := st.Append(samples, func(err error) { durable <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-durable; err != nil {
		t.Fatal(err)
	}
	ep := episode.Episode{ID: "0193a1b2-0000-7000-8000-000000000001", Cell: "cell1", Start: t0, Stop: t0 + int64(len(aus))*frame,
		Streams: []string{d.Stream, "cell1/robot1/joint_states"}, State: episode.Closed}
	if err := st.PutEpisode(ep); err != nil {
		t.Fatal(err)
	}

	ts := startServer(t, Options{ErrNotFound: storage.ErrNotFound}, nil, st)
	base := ts.url + "/whep/episodes/" + ep.ID + "/"

	// Bad requests first.
	pc, err := peerAPI(t).NewPeerConnection(webrtcConfig)
	if err != nil {
		t.Fatal(err)
	}
	offer := recvOffer(t, pc)
	for _, c := range []struct {
		url  string
		code int
	}{
		{ts.url + "/whep/episodes/nope/" + d.Stream, http.StatusNotFound},
		{base + "cell1/other", http.StatusNotFound},
		{base + d.Stream + "?offset=banana", http.StatusBadRequest},
		{base + d.Stream + "?offset=-1s", http.StatusBadRequest},
		{base + d.Stream + "?offset=1h", http.StatusBadRequest},
	} {
		if code, body, _ := post(t, c.url, offer); code != c.code {
			t.Errorf("POST %s = %d (%s), want %d", c.url, code, body, c.code)
		}
	}
	_ = pc.Close()

	// Offset 1.5 s (frame 45, mid-GOP): the keyframe before it is frame 30.
	began := time.Now()
	_, v, _ := newViewer(t, base+d.Stream+"?offset=1500ms")
	waitFor(t, 20*time.Second, "the replay session to end", func() bool { return len(ts.Stats().Sessions) == 0 })
	// Paced by T: 90 frames at 30 fps cannot be sent in less than 89/30 s.
	if took := time.Since(began); took < 89*time.Second/30 {
		t.Fatalf("replay of 3 s of video took only %v: not paced", took)
	}
	got, tss, gaps := v.snapshot()
	if gaps != 0 {
		t.Fatalf("%d RTP gaps on loopback", gaps)
	}
	if len(got) != 90 {
		t.Fatalf("viewer got %d frames, want 90 (frames 30-119)", len(got))
	}
	for k := range got {
		if want := expectedAU(t, aus, 30+k); string(got[k]) != string(want) {
			t.Fatalf("frame %d is not clip frame %d (NAL types %v)", k, 30+k, nalTypes(got[k]))
		}
		if k > 0 {
			if dt := tss[k] - tss[k-1]; dt < 2999 || dt > 3001 {
				t.Fatalf("RTP timestamp step %d at frame %d, want 3000 (1/30 s)", dt, k)
			}
		}
	}
	if err := startsDecodable(got[0]); err != nil {
		t.Fatal(err)
	}
	decodeCheck(t, got)
}

// WHEP replay of a camera with 4 s GOPs (an ffmpeg-encoded clip, baseline
// profile as browsers need) from an offset in the middle of a GOP: the
// viewer's first frame is the keyframe before the offset, with its SPS and
// PPS, and everything after decodes.
func TestWHEPReplayLongGOP(t *testing.T) {
	cl := videotest.Encode(t, videotest.Options{Codec: video.H264, GOP: 120, Secs: 8})
	st := openStore(t)
	const frame = int64(time.Second) / 30
	t0 := time.Now().Add(-time.Hour).UnixNano()
	d := liveDesc
	d.Params, d.Since = cl.Params, t0
	if _, err := st.PutDescriptor(d); err != nil {
		t.Fatal(err)
	}
	samples := make([]sample.Sample, len(cl.AUs))
	for i := range cl.AUs {
		samples[i] = clipSample(cl.AUs, i, t0+int64(i)*frame) // parameter sets stripped
		samples[i].Seq = uint64(i + 1)
	}
	durable := make(chan error, 1)
	if err := st.Append(samples, func(err error) { durable <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-durable; err != nil {
		t.Fatal(err)
	}
	ep := episode.Episode{ID: "0193a1b2-0000-7000-8000-000000000042", Cell: "cell1", Start: t0, Stop: samples[len(samples)-1].T,
		Streams: []string{d.Stream}, State: episode.Closed}
	if err := st.PutEpisode(ep); err != nil {
		t.Fatal(err)
	}
	keys := cl.Keyframes()
	if len(keys) != 2 || keys[1] != 120 {
		t.Fatalf("clip keyframes at %v, want 0 and 120", keys)
	}
	ts := startServer(t, Options{ErrNotFound: storage.ErrNotFound}, nil, st)
	// Offset 6 s is half way into the second GOP, which starts at 4 s.
	_, v, _ := newViewer(t, ts.url+"/whep/episodes/"+ep.ID+"/"+d.Stream+"?offset=6s")
	waitFor(t, 30*time.Second, "the replay session to end", func() bool { return len(ts.Stats().Sessions) == 0 })
	got, _, gaps := v.snapshot()
	if gaps != 0 {
		t.Fatalf("%d RTP gaps on loopback", gaps)
	}
	if want := len(cl.AUs) - 120; len(got) != want {
		t.Fatalf("viewer got %d frames, want %d (frames 120-%d)", len(got), want, len(cl.AUs)-1)
	}
	if err := startsDecodable(got[0]); err != nil {
		t.Fatal(err)
	}
	for k := range got {
		want := video.AnnexB(video.H264.WithParams(stripNAL(cl.AUs[120+k], 7, 8), cl.Params, false))
		if string(got[k]) != string(want) {
			t.Fatalf("frame %d is not clip frame %d (NAL types %v)", k, 120+k, nalTypes(got[k]))
		}
	}
	decodeCheck(t, got)
}
