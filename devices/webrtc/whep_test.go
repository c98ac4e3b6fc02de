package webrtc

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

var liveDesc = sample.Descriptor{Stream: "cell1/cam-top", Version: 1, Kind: sample.KindVideo, Codec: sample.CodecH264,
	Device: "cam-top", Clock: sample.ClockDevice}

// clipSample is frame i of the clip as a pipeline sample: Annex-B, with
// the parameter sets stripped (as from a camera that sends them out of
// band), so the viewer only decodes if the server puts them back.
func clipSample(aus [][][]byte, i int, t int64) sample.Sample {
	au := aus[i%len(aus)]
	s := sample.Sample{Stream: liveDesc.Stream, T: t, RecvT: t, Payload: video.AnnexB(stripNAL(au, 7, 8))}
	if isKey(au) {
		s.Flags |= sample.Keyframe
	}
	return s
}

// expectedAU is what a viewer should receive for frame i: the frame with
// SPS and PPS in front of an IDR.
func expectedAU(t *testing.T, aus [][][]byte, i int) []byte {
	au := stripNAL(aus[i%len(aus)], 7, 8)
	return video.AnnexB(video.H264.WithParams(au, clipParams(t), false))
}

// decodeCheck decodes Annex-B access units with ffmpeg (an independent
// decoder) and checks that every frame decodes without error.
func decodeCheck(t *testing.T, aus [][]byte) {
	t.Helper()
	if testing.Short() {
		t.Log("skipping the ffmpeg decode check in -short mode")
		return
	}
	ffprobe, err := exec.LookPath("ffprobe")
	if err != nil {
		t.Fatal("ffprobe (from ffmpeg) is required to check that the viewer's H.264 decodes: apt-get install ffmpeg")
	}
	f := filepath.Join(t.TempDir(), "viewer.h264")
	var all []byte
	for _, au := range aus {
		all = append(all, au...)
	}
	if err := os.WriteFile(f, all, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ffprobe, "-v", "error", "-f", "h264", "-count_frames", "-select_streams", "v:0",
		"-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", f)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("ffprobe: %v: %s", err, stderr.String())
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || n != len(aus) {
		t.Fatalf("ffprobe decoded %q frames, want %d", out, len(aus))
	}
}

// Two viewers of a live stream get decodable H.264 starting with a
// keyframe; the first gets the cached keyframe while nothing new is being
// published, within 1 s of connecting.
func TestWHEPLive(t *testing.T) {
	hub := NewHub(testLogger())
	ts := startServer(t, Options{}, hub, nil)
	aus := clipAUs(t)
	d := liveDesc
	d.Params = clipParams(t)

	// Frames 0-9 (keyframe 0), then the publisher pauses.
	now := time.Now().UnixNano()
	for i := 0; i < 10; i++ {
		hub.Publish(d, clipSample(aus, i, now+int64(i)*int64(time.Second)/30))
	}

	pc1, v1, loc1 := newViewer(t, ts.url+"/whep/"+d.Stream)
	connected := waitConnected(t, pc1)
	select {
	case <-v1.ch:
	case <-time.After(10 * time.Second):
		t.Fatal("viewer 1 got no frame within 10 s of connecting while the publisher paused")
	}
	if wait := time.Since(connected); wait > time.Second {
		t.Errorf("viewer 1 saw its first frame %v after connecting, want < 1 s", wait)
	}
	got1, _, _ := v1.snapshot()
	if !bytes.Equal(got1[0], expectedAU(t, aus, 0)) {
		t.Fatalf("viewer 1's first frame is not the cached keyframe with SPS/PPS (NAL types %v)", nalTypes(got1[0]))
	}

	// Resume at 30 fps, in a loop over the clip.
	stop := make(chan struct{})
	stopped := make(chan struct{})
	var published atomic.Int64
	go func() {
		defer close(stopped)
		tick := time.NewTicker(time.Second / 30)
		defer tick.Stop()
		for i := 10; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			hub.Publish(d, clipSample(aus, i, time.Now().UnixNano()))
			published.Store(int64(i))
		}
	}()
	defer func() { close(stop); <-stopped }()

	pc2, v2, _ := newViewer(t, ts.url+"/whep/"+d.Stream)
	waitConnected(t, pc2)
	waitFor(t, 15*time.Second, "40 frames at each viewer", func() bool {
		a, _, _ := v1.snapshot()
		b, _, _ := v2.snapshot()
		return len(a) >= 40 && len(b) >= 40
	})
	if n := hub.viewers(d.Stream); n != 2 {
		t.Fatalf("hub has %d viewers, want 2", n)
	}

	for vi, v := range []*auReceiver{v1, v2} {
		got, tss, gaps := v.snapshot()
		if gaps != 0 {
			t.Fatalf("viewer %d: %d RTP gaps on loopback", vi+1, gaps)
		}
		if err := startsDecodable(got[0]); err != nil {
			t.Fatalf("viewer %d: first frame: %v", vi+1, err)
		}
		// After the first keyframe, frames follow the clip in order from
		// a keyframe on.
		start := -1
		for i := range aus {
			if bytes.Equal(got[1], expectedAU(t, aus, i)) {
				start = i
				break
			}
		}
		if start < 0 || !isKey(aus[start]) {
			t.Fatalf("viewer %d: second frame is not a keyframe of the clip (NAL types %v)", vi+1, nalTypes(got[1]))
		}
		for k := 1; k < len(got); k++ {
			if !bytes.Equal(got[k], expectedAU(t, aus, start+k-1)) {
				t.Fatalf("viewer %d: frame %d is not clip frame %d", vi+1, k, (start+k-1)%len(aus))
			}
			if int32(tss[k]-tss[k-1]) <= 0 {
				t.Fatalf("viewer %d: RTP timestamps not increasing at frame %d", vi+1, k)
			}
		}
		decodeCheck(t, got)
	}

	// DELETE ends viewer 1's session only.
	if code, body, _ := do(t, http.MethodDelete, ts.url+loc1, "", ""); code != http.StatusOK {
		t.Fatalf("DELETE = %d: %s", code, body)
	}
	if n := hub.viewers(d.Stream); n != 1 {
		t.Fatalf("after DELETE the hub has %d viewers, want 1", n)
	}
	st := ts.Stats()
	if len(st.Sessions) != 1 || st.Sessions[0].Kind != kindWHEP || st.Sessions[0].SentFrames == 0 {
		t.Fatalf("sessions after DELETE: %+v", st.Sessions)
	}
}

// A viewer that never reads does not block Publish: its frames are
// dropped and counted, and a reading viewer is unaffected.
func TestHubStuckViewer(t *testing.T) {
	hub := NewHub(nil)
	d := liveDesc
	aus := clipAUs(t)
	hub.Publish(d, clipSample(aus, 0, 1))
	const queue = 8
	var onDrop atomic.Uint64
	stuck, ok := hub.subscribe(d.Stream, queue, func() { onDrop.Add(1) })
	if !ok {
		t.Fatal("subscribe failed after a publish")
	}
	fast, _ := hub.subscribe(d.Stream, queue, nil)
	var got atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for it := range fast.ch {
			if len(it.s.Payload) == 0 {
				return
			}
			got.Add(1)
		}
	}()
	const n = 30000 // 1000 groups of 30
	for i := 1; i <= n; i++ {
		hub.Publish(d, clipSample(aus, i, int64(i+1)))
	}
	// The stuck queue holds the cached keyframe, then (after the start-up
	// skip of frames 1-29) frames 30-36; every later frame is dropped.
	want := uint64(n - 29 - (queue - 1))
	if stuck.dropped.Load() != want || onDrop.Load() != want {
		t.Fatalf("stuck viewer dropped %d (callback %d), want %d", stuck.dropped.Load(), onDrop.Load(), want)
	}
	if len(stuck.ch) != queue {
		t.Fatalf("stuck queue holds %d, want %d", len(stuck.ch), queue)
	}
	hub.Publish(d, sample.Sample{Stream: d.Stream, Flags: sample.Keyframe, Payload: nil}) // ignored: empty
	hub.unsubscribe(d.Stream, fast)
	close(fast.ch)
	<-done
	if got.Load()+fast.dropped.Load() == 0 {
		t.Fatal("reading viewer got nothing")
	}
	if got.Load() == 0 {
		t.Fatal("reading viewer received no frames")
	}
	if hub.viewers(d.Stream) != 1 {
		t.Fatalf("viewers = %d, want 1", hub.viewers(d.Stream))
	}
}
