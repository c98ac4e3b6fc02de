package export_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	"github.com/episoded/episoded/internal/video/videotest"
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

// recSink is the daemon's pipeline in miniature: ingest numbers and stamps
// each sample (decode order, presentation offset), storage stores it.
type recSink struct {
	st *storage.Store
	mu struct {
		sync.Mutex
		proc    *ingest.Stream
		samples []sample.Sample // without payloads
		bounds  []int64         // the error bound stated for each when stamped
		conv    []bool          // whether the clock estimate had converged then
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
	cs := s.mu.proc.ClockStatus()
	s.mu.bounds = append(s.mu.bounds, cs.ErrorBoundNs)
	s.mu.conv = append(s.mu.conv, cs.Converged)
	return nil
}

func (s *recSink) recorded() ([]sample.Sample, []int64, []bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sample.Sample(nil), s.mu.samples...), append([]int64(nil), s.mu.bounds...), append([]bool(nil), s.mu.conv...)
}

const camStream = "cell1/cam"

// recording is a clip recorded through RTSP: the stored samples in the
// order written, and each frame's true capture time on the gateway clock.
type recording struct {
	st      *storage.Store
	clip    *videotest.Clip
	samples []sample.Sample
	bounds  []int64
	conv    []bool
	capture []int64
}

// record serves the clip over RTSP in decode order, paced like a live
// camera (each frame sent once every frame it depends on is encoded, after
// its capture), with a device clock 2 s off the gateway's, and records it.
func record(t *testing.T, cl *videotest.Clip) *recording {
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
	out, err := srv.AddStream("cam", sample.Descriptor{Kind: sample.KindVideo, Codec: cl.Codec.Name, Params: cl.Params})
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
	n := len(cl.AUs)
	sorted := append([]int64(nil), cl.PTS...)
	slices.Sort(sorted)
	var shift, delay int64
	for k := range n {
		shift = max(shift, sorted[k]-cl.PTS[k])
	}
	for k := range n {
		delay = max(delay, cl.PTS[k]-(sorted[k]-shift))
	}
	const devOffset = int64(2 * time.Second)
	t0 := time.Now().Add(100 * time.Millisecond).UnixNano()
	capture := make([]int64, n)
	for k, au := range cl.AUs {
		capture[k] = t0 + cl.PTS[k]*1e6
		sendAt := t0 + (sorted[k]-shift+delay)*1e6
		if d := time.Until(time.Unix(0, sendAt)); d > 0 {
			time.Sleep(d) // pacing: a live encoder's send schedule
		}
		if err := out.WriteAccessUnit(time.Duration(cl.PTS[k])*time.Millisecond, capture[k]+devOffset, video.AnnexB(au)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for got, _, _ := sink.recorded(); len(got) < n; got, _, _ = sink.recorded() {
		if time.Now().After(deadline) {
			t.Fatalf("recorded %d of %d frames (camera stats %+v)", len(got), n, cam.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	rec := &recording{st: st, clip: cl, capture: capture}
	rec.samples, rec.bounds, rec.conv = sink.recorded()
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

// readVideoOf reads topic's video messages with the indexed reader, in
// log-time order, and the manifest.
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
	return out, readManifest(t, data)
}

// readManifest reads the manifest from an export's metadata.
func readManifest(t *testing.T, data []byte) export.Manifest {
	t.Helper()
	rd, err := mcap.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
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
	return m
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
	ff, _ := videotest.FFmpeg(t)
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
	n, errs := ffmpegDecode(t, r.clip.Codec, stream)
	if errs != "" || n != want {
		t.Fatalf("ffmpeg decoded %d frames of %d, errors:\n%s", n, want, errs)
	}
	return frames, m
}

func TestVideoBFramesRecordedAndExported(t *testing.T) {
	for _, tc := range []struct {
		codec              *video.Codec
		gop, secs, bframes int
	}{
		{video.H264, 30, 8, 2},   // -profile:v main -bf 2
		{video.H265, 30, 8, 3},   // -x265-params bframes=3, open GOPs (CRA)
		{video.H264, 120, 10, 2}, // 4 s GOP
	} {
		t.Run(fmt.Sprintf("%s-gop%ds", tc.codec.Name, tc.gop/30), func(t *testing.T) {
			cl := videotest.Encode(t, videotest.Options{Codec: tc.codec, GOP: tc.gop, Secs: tc.secs, BFrames: tc.bframes, OpenGOP: true})
			r := record(t, cl)
			n := len(cl.AUs)
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
			// A sanity cap, so that a huge bound cannot make the check
			// below vacuous; on a loaded machine the report's bound (from
			// the arrival jitter) has been seen from 2 to 100 ms.
			if bound <= 0 || bound > int64(250*time.Millisecond) {
				t.Fatalf("stated bound %v", time.Duration(bound))
			}
			// Every presentation time is within the bound stated for it:
			// a frame with device time within the larger of the report's
			// bound and the bound stated when it was stamped (the report's
			// bound covers the converged estimate; the first frames, and
			// frames held back, carry wider bounds of their own), and a
			// frame stamped by arrival (before the first RTCP sender
			// report, sent right after the first access unit) within its
			// own bound as stamped.
			var worst int64
			arrival := 0
			for k, f := range frames {
				if f.seq != uint32(r.samples[k].Seq) {
					t.Fatalf("message %d is seq %d, want %d", k, f.seq, r.samples[k].Seq)
				}
				if f.logT != r.samples[k].T || f.pres != r.samples[k].PTS() {
					t.Fatalf("message %d: log time %d presentation %d, stored T %d PTS %d", k, f.logT, f.pres, r.samples[k].T, r.samples[k].PTS())
				}
				err := f.pres - r.capture[k]
				worst = max(worst, err, -err)
				b := max(bound, r.bounds[k])
				if r.samples[k].SrcT == 0 {
					arrival++
					b = r.bounds[k]
				}
				if err > b || -err > b {
					t.Errorf("frame %d (device time %v, converged %v, flags %v): presentation time %v off the sender's capture time, stated bound %v (as stamped %v)",
						k, r.samples[k].SrcT != 0, r.conv[k], r.samples[k].Flags, time.Duration(err), time.Duration(bound), time.Duration(r.bounds[k]))
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
			for g := 1; g*cl.GOP+cl.GOP/2 < n-10; g++ {
				at := g*cl.GOP + cl.GOP/2
				start := r.samples[at].T
				key := at
				for !r.samples[key].Flags.Has(sample.Keyframe) {
					key--
				}
				if key < g*cl.GOP-5 {
					t.Fatalf("no keyframe near frame %d", g*cl.GOP)
				}
				id := fmt.Sprintf("ep-gop%d", g)
				r.episodeOver(t, id, start, last)
				// An H.265 CRA's leading (RASL) pictures reference the
				// GOP before: a decoder starting at it cannot show them.
				rasl := 0
				if cl.Codec == video.H265 {
				leading:
					for _, au := range cl.AUs[key+1:] {
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
	m := readManifest(t, data).Streams[0]
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
	frames, _ := readVideoOf(t, data, cam)
	var stream []byte
	for _, f := range frames {
		stream = append(stream, f.data...)
	}
	n, errs := ffmpegDecode(t, video.H264, stream)
	if errs != "" || uint64(n) != uint64(len(ss))-leftOut {
		t.Errorf("ffmpeg decoded %d frames, errors: %s", n, errs)
	}
}
