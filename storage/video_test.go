package storage

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
)

// videoSamples are 30 fps frames at t0 + i/30 s, keyframes where key(i).
func videoSamples(stream string, t0 int64, n int, key func(int) bool) []sample.Sample {
	out := make([]sample.Sample, n)
	for i := range out {
		out[i] = sample.Sample{Stream: stream, Seq: uint64(i + 1), T: t0 + int64(i)*int64(time.Second)/30,
			PTSOffset: int64(i%3) * 1e6, Payload: []byte{0, 0, 0, 1, 0x41, byte(i)}}
		if key(i) {
			out[i].Flags = sample.Keyframe
			out[i].Payload[4] = 0x65
		}
	}
	return out
}

func TestVideoStart(t *testing.T) {
	s := openRunning(t, Options{Dir: t.TempDir(), TimelineRetention: 1e6 * time.Hour})
	const cam = "c/cam"
	t0 := int64(1_800_000_000) * 1e9
	frame := int64(time.Second) / 30
	// Keyframes every 30 frames, except that the stream starts mid-GOP
	// (frames 0-4 are P frames whose keyframe is not stored).
	ss := videoSamples(cam, t0, 100, func(i int) bool { return i >= 5 && (i-5)%30 == 0 })
	appendWait(t, s, ss)

	for _, tc := range []struct {
		name     string
		from, to int64
		want     sample.VideoStart
	}{
		{"mid-GOP: pre-roll to the keyframe before", t0 + 50*frame, t0 + 90*frame,
			sample.VideoStart{Stream: cam, Found: true, T: ss[35].T, Seq: 36}},
		{"on a keyframe", ss[65].T, t0 + 90*frame,
			sample.VideoStart{Stream: cam, Found: true, T: ss[65].T, Seq: 66}},
		{"keyframe gone: first one inside, the rest counted", t0 + 2*frame, t0 + 90*frame,
			sample.VideoStart{Stream: cam, Found: true, T: ss[5].T, Seq: 6, Skipped: 3}},
		{"no keyframe in the window", t0, ss[3].T,
			sample.VideoStart{Stream: cam, Skipped: 4}},
	} {
		got, err := s.VideoStart(cam, tc.from, tc.to)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}

	// MergeFrom: the video stream from its start, others from the window.
	other := []sample.Sample{{Stream: "c/imu", Seq: 1, T: t0 + 40*frame, Payload: []byte("a")},
		{Stream: "c/imu", Seq: 2, T: t0 + 55*frame, Payload: []byte("b")}}
	appendWait(t, s, other)
	from := t0 + 50*frame
	vs, _ := s.VideoStart(cam, from, ss[60].T)
	var got []uint64
	var pts []int64
	for x, err := range s.MergeFrom([]string{cam, "c/imu"}, map[string]sample.VideoStart{cam: vs}, from, ss[60].T) {
		if err != nil {
			t.Fatal(err)
		}
		if x.Stream == "c/imu" {
			if x.Seq != 2 {
				t.Errorf("imu sample %d before the window", x.Seq)
			}
			continue
		}
		got = append(got, x.Seq)
		pts = append(pts, x.PTSOffset)
	}
	if len(got) != 61-35 || got[0] != 36 {
		t.Fatalf("video seqs %v, want 36..61", got)
	}
	if pts[1] != ss[36].PTSOffset || pts[2] != ss[37].PTSOffset {
		t.Errorf("presentation offsets not stored: %v", pts[:3])
	}
}

// Eviction of uncovered timeline keeps the keyframe a covered window's
// video starts at: deleting one episode does not take away the pre-roll
// of another that starts mid-GOP.
func TestEvictionKeepsKeyframe(t *testing.T) {
	s := openRunning(t, Options{Dir: t.TempDir(), TimelineRetention: 1e6 * time.Hour})
	const cam = "c/cam"
	if _, err := s.PutDescriptor(sample.Descriptor{Stream: cam, Kind: sample.KindVideo, Codec: sample.CodecH264, Clock: sample.ClockArrival}); err != nil {
		t.Fatal(err)
	}
	t0 := int64(1_800_000_000) * 1e9
	frame := int64(time.Second) / 30
	ss := videoSamples(cam, t0, 120, func(i int) bool { return i%60 == 0 }) // 2 s GOPs
	appendWait(t, s, ss)
	all := episode.Episode{ID: "a", Cell: "c", Start: t0, Stop: ss[119].T, Streams: []string{cam}, State: episode.Closed}
	mid := episode.Episode{ID: "b", Cell: "c", Start: ss[90].T, Stop: ss[100].T, Streams: []string{cam}, State: episode.Closed}
	for _, e := range []episode.Episode{all, mid} {
		if err := s.PutEpisode(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteEpisode("a"); err != nil {
		t.Fatal(err)
	}
	vs, err := s.VideoStart(cam, mid.Start, mid.Stop)
	if err != nil {
		t.Fatal(err)
	}
	if !vs.Found || vs.Seq != 61 || vs.Skipped != 0 {
		t.Fatalf("after eviction the mid-GOP episode starts at %+v, want its keyframe seq 61", vs)
	}
	n := 0
	for _, err := range s.Range(cam, 0, t0+200*frame) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 101-60 {
		t.Fatalf("%d samples left, want frames 60..100 (keyframe, pre-roll and window)", n)
	}
}

// MergeFromShared yields the same samples as MergeFrom; payloads from
// segment files share one buffer per stream, so a reader that copies each
// payload on receipt gets every byte right while the buffer is reused.
func TestMergeFromShared(t *testing.T) {
	s := openRunning(t, Options{Dir: t.TempDir(), SegmentThreshold: 64})
	t0 := int64(1_800_000_000) * 1e9
	var in []sample.Sample
	for i := range 60 {
		for j, st := range []string{"c/a", "c/b"} {
			p := make([]byte, 100+(i*37+j*11)%400) // above the threshold: in segment files
			for k := range p {
				p[k] = byte(i*7 + j + k)
			}
			in = append(in, sample.Sample{Stream: st, Seq: uint64(i + 1), T: t0 + int64(i)*1e7 + int64(j), Payload: p})
		}
		in = append(in, sample.Sample{Stream: "c/small", Seq: uint64(i + 1), T: t0 + int64(i)*1e7 + 5, Payload: []byte{byte(i)}})
	}
	appendWait(t, s, in)
	streams := []string{"c/a", "c/b", "c/small"}
	var want, got []sample.Sample
	for x, err := range s.MergeFrom(streams, nil, t0, t0+1e9) {
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, x)
	}
	bufs := map[string]map[*byte]bool{}
	for x, err := range s.MergeFromShared(streams, nil, t0, t0+1e9) {
		if err != nil {
			t.Fatal(err)
		}
		if bufs[x.Stream] == nil {
			bufs[x.Stream] = map[*byte]bool{}
		}
		bufs[x.Stream][&x.Payload[0]] = true
		x.Payload = slices.Clone(x.Payload)
		got = append(got, x)
	}
	if len(want) != len(in) || !reflect.DeepEqual(got, want) {
		t.Fatalf("MergeFromShared yielded %d samples unlike MergeFrom's %d", len(got), len(want))
	}
	// The buffer is reused: a new one only for a payload larger than any
	// before it in its stream.
	for _, st := range []string{"c/a", "c/b"} {
		maxes, largest := 0, 0
		for _, x := range in {
			if x.Stream == st && len(x.Payload) > largest {
				maxes, largest = maxes+1, len(x.Payload)
			}
		}
		if n := len(bufs[st]); n != maxes {
			t.Errorf("%s: payloads in %d distinct buffers, want %d (one per new largest payload)", st, n, maxes)
		}
	}
}
