package export_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foxglove/mcap/go/mcap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/ingest"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/export"
	"github.com/episoded/episoded/sync/internal/synctest"
)

// Tests of video as cameras really send it: ffmpeg-encoded clips with
// B-frames (H.264 main profile -bf 2, H.265 bframes=3) and GOPs of 1 s and
// 4 s, served over RTSP on loopback by a gortsplib server in the order the
// encoder produced them (decode order) with their presentation times as
// RTP timestamps and in RTCP sender reports, recorded by devices/rtsp
// through ingest into a real store, and exported. The export is checked
// by ffmpeg (decodes every frame from the first, without errors) and by
// the official MCAP reader (@mcap/core).

// ffmpegOrFail returns ffmpeg's and ffprobe's paths (skipped under -short).
func ffmpegOrFail(t *testing.T) (string, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs ffmpeg and real-time RTSP streaming; skipped under -short")
	}
	ff, err := exec.LookPath("ffmpeg")
	if err != nil {
		t.Fatalf("ffmpeg not found (apt-get install -y --no-install-recommends ffmpeg): %v", err)
	}
	fp, err := exec.LookPath("ffprobe")
	if err != nil {
		t.Fatalf("ffprobe not found (comes with ffmpeg): %v", err)
	}
	return ff, fp
}

// encodedClip is an ffmpeg-encoded clip: access units in decode order, the
// presentation time of each (ms from the first) and its parameter sets.
type encodedClip struct {
	codec  *video.Codec
	aus    [][][]byte
	pts    []int64 // ms
	params [][]byte
	gop    int
}

// encodeClip encodes secs seconds of testsrc2 at 30 fps with B-frames and
// a fixed GOP of gop frames.
func encodeClip(t *testing.T, c *video.Codec, gop, secs int) *encodedClip {
	t.Helper()
	ff, fp := ffmpegOrFail(t)
	dir := t.TempDir()
	mkv := filepath.Join(dir, "clip.mkv")
	args := []string{"-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
		"-i", fmt.Sprintf("testsrc2=size=320x240:rate=30:duration=%d", secs), "-pix_fmt", "yuv420p"}
	raw, bsf, rawFmt := filepath.Join(dir, "clip.h264"), "h264_mp4toannexb", "h264"
	if c == video.H265 {
		args = append(args, "-c:v", "libx265", "-x265-params",
			fmt.Sprintf("bframes=3:keyint=%d:min-keyint=%d:scenecut=0:log-level=error", gop, gop))
		raw, bsf, rawFmt = filepath.Join(dir, "clip.h265"), "hevc_mp4toannexb", "hevc"
	} else {
		args = append(args, "-c:v", "libx264", "-profile:v", "main", "-bf", "2",
			"-g", strconv.Itoa(gop), "-keyint_min", strconv.Itoa(gop), "-sc_threshold", "0")
	}
	run := func(name string, args ...string) []byte {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("%s %v: %v\n%s", name, args, err, stderr)
		}
		return out
	}
	run(ff, append(args, mkv)...)
	run(ff, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", mkv, "-c", "copy", "-bsf:v", bsf, "-f", rawFmt, raw)
	probe := run(fp, "-v", "error", "-select_streams", "v", "-show_entries", "packet=pts", "-of", "csv=p=0", mkv)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	aus, err := assets.AccessUnits(b, c == video.H265)
	if err != nil {
		t.Fatal(err)
	}
	cl := &encodedClip{codec: c, aus: aus, gop: gop}
	sc := bufio.NewScanner(bytes.NewReader(probe))
	for sc.Scan() {
		v, err := strconv.ParseInt(strings.TrimSpace(strings.Split(sc.Text(), ",")[0]), 10, 64)
		if err != nil {
			t.Fatalf("ffprobe line %q: %v", sc.Text(), err)
		}
		cl.pts = append(cl.pts, v)
	}
	if len(cl.pts) != len(aus) || len(aus) != 30*secs {
		t.Fatalf("clip: %d access units, %d presentation times, want %d", len(aus), len(cl.pts), 30*secs)
	}
	cl.params = make([][]byte, c.NParams)
	for _, n := range aus[0] {
		if i := c.ParamSlot(n); i >= 0 {
			cl.params[i] = n
		}
	}
	reordered := 0
	for i := 1; i < len(cl.pts); i++ {
		if cl.pts[i] < cl.pts[i-1] {
			reordered++
		}
	}
	if reordered == 0 {
		t.Fatal("clip has no B-frames")
	}
	return cl
}

// recSink is the daemon's pipeline in miniature: ingest numbers and stamps
// each sample (decode order, presentation offset), storage stores it.
type recSink struct {
	st *storage.Store
	mu struct {
		sync.Mutex
		proc    *ingest.Stream
		samples []sample.Sample // without payloads
		bounds  []int64         // the error bound stated for each when stamped
	}
}

func (s *recSink) Describe(d sample.Descriptor) error {
	d.Since = time.Now().UnixNano()
	stored, err := s.st.PutDescriptor(d)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.proc != nil {
		return s.mu.proc.SetDescriptor(stored, d.Since)
	}
	s.mu.proc, err = ingest.NewStream(stored, 0, ingest.ClockOptions{ErrorFloor: 500 * time.Microsecond})
	return err
}

func (s *recSink) Write(x sample.Sample, done func(error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.proc.Process(&x)
	if err := s.st.Append([]sample.Sample{x}, done); err != nil {
		s.mu.proc.Unprocess(&x)
		return err
	}
	x.Payload = nil
	s.mu.samples = append(s.mu.samples, x)
	s.mu.bounds = append(s.mu.bounds, s.mu.proc.ClockStatus().ErrorBoundNs)
	return nil
}

func (s *recSink) recorded() ([]sample.Sample, []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sample.Sample(nil), s.mu.samples...), append([]int64(nil), s.mu.bounds...)
}

const camStream = "cell1/cam"

// recording is a clip recorded through RTSP: the stored samples in the
// order written, and each frame's true capture time on the gateway clock.
type recording struct {
	st      *storage.Store
	clip    *encodedClip
	samples []sample.Sample
	bounds  []int64
	capture []int64
}

// record serves the clip over RTSP in decode order, paced like a live
// camera (each frame sent once every frame it depends on is encoded, after
// its capture), with a device clock 2 s off the gateway's, and records it.
func record(t *testing.T, cl *encodedClip) *recording {
	t.Helper()
	st := synctest.OpenStore(t)
	srv, err := rtsp.NewServer(rtsp.ServerOptions{Addr: "127.0.0.1:0", SRPeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	out, err := srv.AddStream("cam", sample.Descriptor{Kind: sample.KindVideo, Codec: cl.codec.Name, Params: cl.params})
	if err != nil {
		t.Fatal(err)
	}
	sink := &recSink{st: st}
	cam, err := rtsp.New(rtsp.Options{Device: "cam", Stream: camStream, URL: srv.URL("cam"),
		Backoff: devices.BackoffPolicy{Min: 100 * time.Millisecond, Max: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	camDone := make(chan error, 1)
	go func() { camDone <- cam.Run(ctx, sink) }()
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { cancel(); <-camDone }) }
	defer stop()
	select {
	case <-out.Played():
	case <-time.After(30 * time.Second):
		t.Fatal("the camera never started playing")
	}

	// Decode times: the k-th smallest presentation time, shifted so that
	// no frame is decoded after it is presented; a live encoder sends a
	// frame at its decode time plus the reorder delay.
	n := len(cl.aus)
	sorted := append([]int64(nil), cl.pts...)
	slices.Sort(sorted)
	var shift, delay int64
	for k := range n {
		shift = max(shift, sorted[k]-cl.pts[k])
	}
	for k := range n {
		delay = max(delay, cl.pts[k]-(sorted[k]-shift))
	}
	const devOffset = int64(2 * time.Second)
	t0 := time.Now().Add(100 * time.Millisecond).UnixNano()
	capture := make([]int64, n)
	for k, au := range cl.aus {
		capture[k] = t0 + cl.pts[k]*1e6
		sendAt := t0 + (sorted[k]-shift+delay)*1e6
		if d := time.Until(time.Unix(0, sendAt)); d > 0 {
			time.Sleep(d)
		}
		if err := out.WriteAccessUnit(time.Duration(cl.pts[k])*time.Millisecond, capture[k]+devOffset, video.AnnexB(au)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for got, _ := sink.recorded(); len(got) < n; got, _ = sink.recorded() {
		if time.Now().After(deadline) {
			t.Fatalf("recorded %d of %d frames (camera stats %+v)", len(got), n, cam.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	rec := &recording{st: st, clip: cl, capture: capture}
	rec.samples, rec.bounds = sink.recorded()
	// Wait until the last sample is durable (readable).
	last := rec.samples[len(rec.samples)-1]
	for {
		if s, err := st.LastSample(camStream); err == nil && s.Seq == last.Seq {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("samples not committed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return rec
}

// episodeOver stores a closed episode over [start, stop] with its quality
// report built from the stored samples as the daemon does (ingest.Report).
func (r *recording) episodeOver(t *testing.T, id string, start, stop int64) episode.Episode {
	t.Helper()
	ds, err := r.st.Descriptors(camStream)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ingest.NewReport(ds[len(ds)-1], ingest.ReportOptions{Clock: ingest.ClockOptions{ErrorFloor: 500 * time.Microsecond}})
	if err != nil {
		t.Fatal(err)
	}
	for x, err := range r.st.Range(camStream, 0, start-1) {
		if err == nil {
			rep.Warm(&x)
		}
	}
	for x, err := range r.st.Range(camStream, start, stop) {
		if err != nil {
			t.Fatal(err)
		}
		rep.Add(&x)
	}
	e := episode.Episode{ID: id, Cell: "cell1", Start: start, Stop: stop, Streams: []string{camStream},
		State: episode.Closed, Trigger: "api", Created: start, Updated: stop, Quality: []episode.StreamReport{rep.Result()}}
	if err := r.st.PutEpisode(e); err != nil {
		t.Fatal(err)
	}
	return e
}

// exportedFrame is one video message of an export.
type exportedFrame struct {
	logT, pres int64
	seq        uint32
	data       []byte
}

// readVideo reads the camera's video messages with the indexed reader, in
// log-time order, and the manifest.
func readVideo(t *testing.T, data []byte) ([]exportedFrame, export.Manifest) {
	t.Helper()
	return readVideoOf(t, data, camStream)
}

// readVideoOf reads topic's video messages ("" for none).
func readVideoOf(t *testing.T, data []byte, topic string) ([]exportedFrame, export.Manifest) {
	t.Helper()
	rd, err := mcap.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	it, err := rd.Messages(mcap.UsingIndex(true), mcap.InOrder(mcap.LogTimeOrder))
	if err != nil {
		t.Fatal(err)
	}
	var out []exportedFrame
	for {
		schema, ch, msg, err := it.NextInto(nil)
		if err != nil {
			break
		}
		if ch.Topic != topic || schema == nil {
			continue
		}
		pres, payload := videoMessage(t, schema, msg.Data)
		out = append(out, exportedFrame{logT: int64(msg.LogTime), pres: pres, seq: msg.Sequence, data: payload})
	}
	info, err := rd.Info()
	if err != nil {
		t.Fatal(err)
	}
	var m export.Manifest
	for _, idx := range info.MetadataIndexes {
		md, err := rd.GetMetadata(idx.Offset)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(md.Metadata["manifest"]), &m); err != nil {
			t.Fatal(err)
		}
	}
	return out, m
}

// videoMessage decodes a foxglove.CompressedVideo with the schema carried
// in the file: its timestamp (ns) and data.
func videoMessage(t *testing.T, schema *mcap.Schema, data []byte) (int64, []byte) {
	t.Helper()
	var fds descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(schema.Data, &fds); err != nil {
		t.Fatal(err)
	}
	files, err := protodesc.NewFiles(&fds)
	if err != nil {
		t.Fatal(err)
	}
	d, err := files.FindDescriptorByName(protoreflect.FullName(schema.Name))
	if err != nil {
		t.Fatal(err)
	}
	m := dynamicpb.NewMessage(d.(protoreflect.MessageDescriptor))
	if err := proto.Unmarshal(data, m); err != nil {
		t.Fatal(err)
	}
	f := m.Descriptor().Fields()
	ts := m.Get(f.ByName("timestamp")).Message()
	tf := ts.Descriptor().Fields()
	ns := ts.Get(tf.ByName("seconds")).Int()*1e9 + ts.Get(tf.ByName("nanos")).Int()
	return ns, m.Get(f.ByName("data")).Bytes()
}

// ffmpegDecode decodes an Annex-B stream and returns the number of frames
// and everything ffmpeg reported (empty: no error).
func ffmpegDecode(t *testing.T, c *video.Codec, stream []byte) (int, string) {
	t.Helper()
	ff, _ := ffmpegOrFail(t)
	f := filepath.Join(t.TempDir(), "video."+string(c.Name))
	if err := os.WriteFile(f, stream, 0o644); err != nil {
		t.Fatal(err)
	}
	fmtName := "h264"
	if c == video.H265 {
		fmtName = "hevc"
	}
	cmd := exec.Command(ff, "-hide_banner", "-nostdin", "-v", "error", "-f", fmtName, "-i", f, "-f", "framecrc", "-")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ffmpeg decode: %v\n%s", err, stderr.String())
	}
	frames := 0
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			frames++
		}
	}
	return frames, stderr.String()
}

// checkExport exports episode id and checks, with @mcap/core and ffmpeg,
// that the camera's video starts with a keyframe carrying its parameter
// sets, is in decode order in log time, and decodes without error into
// want frames. It returns the frames.
func checkExport(t *testing.T, r *recording, id string, want int) ([]exportedFrame, export.Manifest) {
	t.Helper()
	data, _ := exportBytes(t, r.st, id, export.Options{})
	rep := runNodeCheck(t, data)
	if len(rep.Errors) > 0 {
		t.Fatalf("@mcap/core: %v", rep.Errors)
	}
	v, ok := rep.Stream.Video[camStream]
	if !ok || v.First == nil || !v.First.Keyframe || !v.First.WithParams {
		t.Fatalf("@mcap/core: the video channel does not start with a keyframe carrying its parameter sets: %+v", v)
	}
	if v.Keyframes != v.KeyframesWithParams || v.NotAnnexB != 0 {
		t.Fatalf("@mcap/core: %d keyframes, %d with parameter sets, %d not Annex-B", v.Keyframes, v.KeyframesWithParams, v.NotAnnexB)
	}
	if n := rep.Indexed.SeqOutOfOrder[camStream]; n != 0 {
		t.Fatalf("@mcap/core indexed reader: %d messages out of decode order in log-time order", n)
	}
	if got := rep.Indexed.Counts[camStream]; got != uint64(want) {
		t.Fatalf("@mcap/core: %d video messages, want %d", got, want)
	}
	frames, m := readVideo(t, data)
	var stream []byte
	for _, f := range frames {
		stream = append(stream, f.data...)
	}
	n, errs := ffmpegDecode(t, r.clip.codec, stream)
	if errs != "" || n != want {
		t.Fatalf("ffmpeg decoded %d frames of %d, errors:\n%s", n, want, errs)
	}
	return frames, m
}

func TestVideoBFramesRecordedAndExported(t *testing.T) {
	for _, tc := range []struct {
		codec     *video.Codec
		gop, secs int
	}{
		{video.H264, 30, 8},
		{video.H265, 30, 8},
		{video.H264, 120, 10},
	} {
		t.Run(fmt.Sprintf("%s-gop%ds", tc.codec.Name, tc.gop/30), func(t *testing.T) {
			cl := encodeClip(t, tc.codec, tc.gop, tc.secs)
			r := record(t, cl)
			n := len(cl.aus)
			if len(r.samples) != n {
				t.Fatalf("recorded %d frames of %d", len(r.samples), n)
			}
			for k, s := range r.samples {
				if k > 0 && s.T < r.samples[k-1].T {
					t.Fatalf("frame %d stored with T before frame %d: decode order lost", k, k-1)
				}
			}

			// The whole recording: every frame, from the first.
			first, last := r.samples[0].T, r.samples[n-1].T
			e := r.episodeOver(t, "ep-all", first, last)
			frames, m := checkExport(t, r, "ep-all", n)
			bound := int64(e.Quality[0].AlignmentErrorBoundMs * 1e6)
			if bound <= 0 || bound > int64(50*time.Millisecond) {
				t.Fatalf("stated bound %v", time.Duration(bound))
			}
			// Every presentation time stamped from the device clock is
			// within the bound the report states. The frames before the
			// first RTCP sender report (the server sends one right after
			// the first access unit) have no device time: they are
			// stamped by arrival, which the clock engineer's arrival
			// fallback covers; here they are only counted.
			var worst int64
			arrival := 0
			for k, f := range frames {
				if f.seq != uint32(r.samples[k].Seq) {
					t.Fatalf("message %d is seq %d, want %d", k, f.seq, r.samples[k].Seq)
				}
				if f.logT != r.samples[k].T || f.pres != r.samples[k].PTS() {
					t.Fatalf("message %d: log time %d presentation %d, stored T %d PTS %d", k, f.logT, f.pres, r.samples[k].T, r.samples[k].PTS())
				}
				if r.samples[k].SrcT == 0 {
					arrival++
					continue
				}
				err := f.pres - r.capture[k]
				worst = max(worst, err, -err)
				if b := max(bound, r.bounds[k]); err > b || -err > b {
					t.Errorf("frame %d: presentation time %v off the sender's capture time, stated bound %v (as stamped %v)",
						k, time.Duration(err), time.Duration(bound), time.Duration(r.bounds[k]))
				}
			}
			t.Logf("%d frames, worst presentation error %v, stated bound %v; %d stamped by arrival before the first sender report",
				n, time.Duration(worst), time.Duration(bound), arrival)
			if arrival > 2 {
				t.Errorf("%d frames without device time", arrival)
			}
			if m.Streams[0].VideoStart == nil || *m.Streams[0].VideoStart != first {
				t.Errorf("manifest video start %v, want %d", m.Streams[0].VideoStart, first)
			}

			// Episodes starting mid-GOP start at the keyframe before
			// (pre-roll from the timeline), for each GOP.
			for g := 1; g*cl.gop+cl.gop/2 < n-10; g++ {
				at := g*cl.gop + cl.gop/2
				start := r.samples[at].T
				key := at
				for !r.samples[key].Flags.Has(sample.Keyframe) {
					key--
				}
				if key < g*cl.gop-5 {
					t.Fatalf("no keyframe near frame %d", g*cl.gop)
				}
				id := fmt.Sprintf("ep-gop%d", g)
				r.episodeOver(t, id, start, last)
				// An H.265 CRA's leading (RASL) pictures reference the
				// GOP before: a decoder starting at it cannot show them.
				rasl := 0
				if cl.codec == video.H265 {
				leading:
					for _, au := range cl.aus[key+1:] {
						for _, nal := range au {
							switch typ := (nal[0] >> 1) & 0x3f; {
							case typ == 8 || typ == 9:
								rasl++
								continue leading
							case typ < 32:
								break leading
							}
						}
					}
				}
				frames, m := checkExport(t, r, id, n-key-rasl)
				if frames[0].seq != uint32(r.samples[key].Seq) {
					t.Errorf("%s: first frame seq %d, want the keyframe %d", id, frames[0].seq, r.samples[key].Seq)
				}
				if vs := m.Streams[0].VideoStart; vs == nil || *vs != r.samples[key].T || *vs >= start {
					t.Errorf("%s: manifest video start %v, want the keyframe's %d before the start %d", id, vs, r.samples[key].T, start)
				}
			}
		})
	}
}

// A window whose keyframe is gone (here: the stream's stored timeline
// starts mid-GOP) starts at the first keyframe inside it; the frames left
// out are counted in the manifest and the quality report.
func TestVideoKeyframeGone(t *testing.T) {
	aus, err := assets.H264AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	var keys []int
	for i, au := range aus {
		if video.H264.IsKeyframe(au) {
			keys = append(keys, i)
		}
	}
	if len(keys) < 2 || keys[0] != 0 {
		t.Fatalf("clip keyframes at %v", keys)
	}
	st := synctest.OpenStore(t)
	const cam = "cell1/cam-gone"
	t0 := time.Now().Add(-time.Hour).UnixNano()
	frame := int64(time.Second) / 30
	params := [][]byte{aus[0][0], aus[0][1]}
	if _, err := st.PutDescriptor(sample.Descriptor{Stream: cam, Kind: sample.KindVideo, Codec: sample.CodecH264,
		Params: params, Clock: sample.ClockArrival, Since: t0}); err != nil {
		t.Fatal(err)
	}
	first := keys[1] / 2 // stored from the middle of the first GOP
	var ss []sample.Sample
	for i := first; i < len(aus); i++ {
		x := sample.Sample{Stream: cam, Seq: uint64(i + 1), T: t0 + int64(i)*frame, RecvT: t0 + int64(i)*frame, Payload: video.AnnexB(aus[i])}
		if video.H264.IsKeyframe(aus[i]) {
			x.Flags = sample.Keyframe
		}
		ss = append(ss, x)
	}
	done := make(chan error, 1)
	if err := st.Append(ss, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e := episode.Episode{ID: "ep-gone", Cell: "cell1", Start: ss[0].T, Stop: ss[len(ss)-1].T, Streams: []string{cam},
		State: episode.Closed, Quality: []episode.StreamReport{{Stream: cam, Kind: "video", Codec: "h264", Samples: uint64(len(ss))}}}
	if err := st.PutEpisode(e); err != nil {
		t.Fatal(err)
	}
	data, _ := exportBytes(t, st, e.ID, export.Options{})
	rep := runNodeCheck(t, data)
	if len(rep.Errors) > 0 {
		t.Fatal(rep.Errors)
	}
	v := rep.Stream.Video[cam]
	if v.First == nil || !v.First.Keyframe || !v.First.WithParams {
		t.Fatalf("first frame: %+v", v.First)
	}
	leftOut := uint64(keys[1] - first)
	if got := rep.Indexed.Counts[cam]; got != uint64(len(ss))-leftOut {
		t.Fatalf("%d messages, want %d", got, uint64(len(ss))-leftOut)
	}
	_, man := readVideoOf(t, data, "")
	m := man.Streams[0]
	if m.VideoLeftOut != leftOut || m.VideoStart == nil || *m.VideoStart != t0+int64(keys[1])*frame {
		t.Errorf("manifest: video start %v, left out %d; want the keyframe at %d and %d left out", m.VideoStart, m.VideoLeftOut, keys[1], leftOut)
	}
	rd, err := mcap.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	info, err := rd.Info()
	if err != nil {
		t.Fatal(err)
	}
	md, err := rd.GetMetadata(info.MetadataIndexes[0].Offset)
	if err != nil {
		t.Fatal(err)
	}
	var q []episode.StreamReport
	if err := json.Unmarshal([]byte(md.Metadata["quality"]), &q); err != nil {
		t.Fatal(err)
	}
	if len(q) != 1 || q[0].VideoLeftOut != leftOut {
		t.Errorf("quality report: %+v, want video_left_out %d", q, leftOut)
	}
	n, errs := ffmpegDecode(t, video.H264, videoStream(t, data))
	if errs != "" || uint64(n) != uint64(len(ss))-leftOut {
		t.Errorf("ffmpeg decoded %d frames, errors: %s", n, errs)
	}
}

// videoStream concatenates the camera video messages of an export.
func videoStream(t *testing.T, data []byte) []byte {
	t.Helper()
	rd, err := mcap.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	it, err := rd.Messages(mcap.UsingIndex(true), mcap.InOrder(mcap.LogTimeOrder))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for {
		schema, _, msg, err := it.NextInto(nil)
		if err != nil {
			break
		}
		if schema != nil && schema.Name == export.SchemaCompressedVideo {
			_, payload := videoMessage(t, schema, msg.Data)
			out = append(out, payload...)
		}
	}
	return out
}
