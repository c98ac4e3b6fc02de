package ingest

import (
	"errors"
	"iter"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/episoded/episoded/sample"
)

// jittered makes a stream at hz with ±jit of timing jitter, dropping the
// samples inside [dropFrom, dropTo).
func jittered(rng *rand.Rand, name string, hz float64, dur time.Duration, jit int64, dropFrom, dropTo int64) []sample.Sample {
	period := float64(time.Second) / hz
	var out []sample.Sample
	for k := 0; float64(k)*period < float64(dur); k++ {
		tm := t0 + int64(float64(k)*period) + rng.Int64N(2*jit+1) - jit
		if tm >= dropFrom && tm < dropTo {
			continue
		}
		out = append(out, sample.Sample{Stream: name, Seq: uint64(k + 1), T: tm, Payload: []byte{byte(k)}})
	}
	return out
}

func merged(streams ...[]sample.Sample) []sample.Sample {
	var all []sample.Sample
	for _, s := range streams {
		all = append(all, s...)
	}
	slices.SortStableFunc(all, func(a, b sample.Sample) int {
		switch {
		case a.T < b.T:
			return -1
		case a.T > b.T:
			return 1
		}
		return 0
	})
	return all
}

func seqOf(all []sample.Sample, err error) iter.Seq2[sample.Sample, error] {
	return func(yield func(sample.Sample, error) bool) {
		for _, s := range all {
			if !yield(s, nil) {
				return
			}
		}
		if err != nil {
			yield(sample.Sample{}, err)
		}
	}
}

// nearest is the brute-force reference: the sample of stream nearest to ft
// within tol, earliest on a tie.
func nearest(all []sample.Sample, stream string, ft, tol int64) (sample.Sample, bool) {
	var best sample.Sample
	bd := int64(-1)
	for _, s := range all {
		if s.Stream != stream {
			continue
		}
		d := s.T - ft
		if d < 0 {
			d = -d
		}
		if d <= tol && (bd < 0 || d < bd) {
			best, bd = s, d
		}
	}
	return best, bd >= 0
}

func TestViewNearestAndMisses(t *testing.T) {
	ms := int64(time.Millisecond)
	for seed := uint64(1); seed <= 3; seed++ {
		rng := rand.New(rand.NewPCG(seed, 5))
		dur := 20 * time.Second
		cam := jittered(rng, "c1/cam", 30, dur, 4*ms, 0, 0)
		// The lidar drops out for 2s: frames there must miss it.
		lidar := jittered(rng, "c1/lidar", 10, dur, 10*ms, t0+int64(8*time.Second), t0+int64(10*time.Second))
		joints := jittered(rng, "c1/joints", 500, dur, 300*1000, 0, 0)
		other := jittered(rng, "c1/ignored", 100, dur, 0, 0, 0)
		all := merged(cam, lidar, joints, other)
		streams := []string{"c1/cam", "c1/lidar", "c1/joints"}
		o := ViewOptions{Streams: streams, From: t0 + int64(time.Second), To: t0 + int64(19*time.Second), RateHz: 15, Tolerance: 40 * ms}
		v, err := NewView(o)
		if err != nil {
			t.Fatal(err)
		}
		frames := 0
		var misses [3]int
		for f, err := range v.Frames(seqOf(all, nil)) {
			if err != nil {
				t.Fatal(err)
			}
			wantT := o.From + int64(float64(frames)*1e9/15+0.5)
			if f.Index != frames || f.T != wantT {
				t.Fatalf("frame %d: index %d T %v, want T %v", frames, f.Index, rel(f.T), rel(wantT))
			}
			n := 0
			for i, name := range streams {
				want, ok := nearest(all, name, f.T, o.Tolerance)
				if f.Hit[i] != ok {
					t.Fatalf("frame %d stream %s: hit %v, want %v", f.Index, name, f.Hit[i], ok)
				}
				if !ok {
					n++
					misses[i]++
					continue
				}
				if got := f.Samples[i]; got.Stream != name || got.Seq != want.Seq || got.T != want.T {
					t.Fatalf("frame %d (%v) stream %s: picked seq %d at %v, nearest is seq %d at %v", f.Index, rel(f.T), name, got.Seq, rel(got.T), want.Seq, rel(want.T))
				}
			}
			if f.Misses != n {
				t.Fatalf("frame %d: misses %d, want %d", f.Index, f.Misses, n)
			}
			frames++
		}
		if frames != 18*15+1 {
			t.Fatalf("%d frames, want %d", frames, 18*15+1)
		}
		st := v.Stats()
		// The lidar gap (2s at 15 Hz, less the tolerance at both edges)
		// must show as misses; the others never miss at this tolerance.
		if misses[1] < 20 || misses[0] != 0 || misses[2] != 0 {
			t.Fatalf("misses %v", misses)
		}
		for i := range streams {
			if st.Misses[i] != uint64(misses[i]) || st.Hits[i] != uint64(frames-misses[i]) {
				t.Fatalf("stats %+v, misses %v", st, misses)
			}
		}
		t.Logf("seed %d: %d frames, misses per stream %v", seed, frames, misses)
	}
}

func TestViewTightTolerance(t *testing.T) {
	// With a tolerance below the 30 Hz jitter, some frames miss the camera;
	// the brute-force reference must agree on every one.
	rng := rand.New(rand.NewPCG(9, 9))
	cam := jittered(rng, "cam", 30, 5*time.Second, int64(8*time.Millisecond), 0, 0)
	o := ViewOptions{Streams: []string{"cam"}, From: t0, To: t0 + int64(5*time.Second), RateHz: 30, Tolerance: int64(3 * time.Millisecond)}
	v, _ := NewView(o)
	hits, miss := 0, 0
	for f, err := range v.Frames(seqOf(cam, nil)) {
		if err != nil {
			t.Fatal(err)
		}
		want, ok := nearest(cam, "cam", f.T, o.Tolerance)
		if f.Hit[0] != ok || (ok && f.Samples[0].Seq != want.Seq) {
			t.Fatalf("frame %d: hit %v seq %d, want %v %d", f.Index, f.Hit[0], f.Samples[0].Seq, ok, want.Seq)
		}
		if ok {
			hits++
		} else {
			miss++
		}
	}
	if hits == 0 || miss == 0 {
		t.Fatalf("hits %d misses %d: the test needs both", hits, miss)
	}
}

func TestViewErrors(t *testing.T) {
	o := ViewOptions{Streams: []string{"a"}, From: 0, To: 100, RateHz: 10, Tolerance: 5}
	for _, bad := range []ViewOptions{
		{Streams: nil, RateHz: 1},
		{Streams: []string{"a", "a"}, RateHz: 1},
		{Streams: []string{"a"}, RateHz: 0},
		{Streams: []string{"a"}, RateHz: 1, From: 10, To: 5},
		{Streams: []string{"a"}, RateHz: 1, Tolerance: -1},
	} {
		if _, err := NewView(bad); err == nil {
			t.Errorf("options %+v accepted", bad)
		}
	}
	boom := errors.New("boom")
	v, _ := NewView(o)
	var got error
	for _, err := range v.Frames(seqOf([]sample.Sample{{Stream: "a", T: 0}}, boom)) {
		if err != nil {
			got = err
		}
	}
	if !errors.Is(got, boom) {
		t.Fatalf("input error not passed on: %v", got)
	}
	v, _ = NewView(ViewOptions{Streams: []string{"a"}, From: 0, To: 1e9, RateHz: 10, Tolerance: 5})
	got = nil
	for _, err := range v.Frames(seqOf([]sample.Sample{{Stream: "a", T: 10}, {Stream: "a", T: 5}}, nil)) {
		if err != nil {
			got = err
		}
	}
	if got == nil {
		t.Fatal("out-of-order input accepted")
	}
	// Stopping early stops the input too.
	v, _ = NewView(ViewOptions{Streams: []string{"a"}, From: 0, To: 1e9, RateHz: 1000, Tolerance: 0})
	pulled := 0
	in := func(yield func(sample.Sample, error) bool) {
		for i := int64(0); i < 1e6; i++ {
			pulled++
			if !yield(sample.Sample{Stream: "a", T: i * 1e6}, nil) {
				return
			}
		}
	}
	n := 0
	for range v.Frames(in) {
		n++
		if n == 3 {
			break
		}
	}
	if pulled > 10 {
		t.Fatalf("pulled %d samples for 3 frames", pulled)
	}
}
