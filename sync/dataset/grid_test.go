package dataset

import (
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func telEpisode(ts []int64, f func(t int64) float64) *Episode {
	ep := &Episode{Telemetry: map[string][]Message{}, Video: map[string]*Track{}}
	for _, t := range ts {
		ok := 0.0
		if t%2 == 0 {
			ok = 1
		}
		ep.Telemetry["a"] = append(ep.Telemetry["a"], Message{T: t, Vals: map[string][]float64{"p": {f(t), -f(t)}, "ok": {ok}}})
	}
	return ep
}

func mapping(t *testing.T, y string) *Mapping {
	t.Helper()
	m, err := ParseMapping([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestAlignInterpolation: rows on a 50 Hz grid from 30 Hz telemetry; linear
// interpolation recovers a linear signal exactly (offset 0), nearest
// reports the signed offset of the sample it used.
func TestAlignInterpolation(t *testing.T) {
	var ts []int64
	for i := 0; i < 31; i++ {
		ts = append(ts, 1_000_000_000+int64(i)*33_333_333)
	}
	lin := func(t int64) float64 { return float64(t-1_000_000_000) / 1e9 }
	for _, mode := range []string{"linear", "nearest"} {
		m := mapping(t, "fps: 50\ntolerance: 40ms\nstate:\n  - {topic: a, field: p, interpolate: "+mode+"}\naction: {next_state: true}\n")
		ep := telEpisode(ts, lin)
		lay := &layout{stateDims: []int{2}, offsetTopics: []string{"a"}}
		res, err := align(ep, m, lay)
		if err != nil || res.dropped || len(res.segments) != 1 {
			t.Fatalf("%s: %v %+v", mode, err, res)
		}
		sg := res.segments[0]
		if sg.n != 50 { // (1 s − 0) · 50 + 1 rows, the last at 0.98 s
			t.Errorf("%s: %d rows", mode, sg.n)
		}
		for k := 0; k < sg.n; k++ {
			g := float64(k) / 50
			v, off := float64(sg.state[k][0]), float64(sg.offsets[0][k])
			if mode == "linear" {
				if math.Abs(v-g) > 1e-6 || off != 0 {
					t.Fatalf("linear row %d: %v (want %v), offset %v", k, v, g, off)
				}
				continue
			}
			// nearest: the value is the sample's, its time is g + offset
			if math.Abs(v-(g+off/1000)) > 1e-6 || math.Abs(off) > 33.34/2 {
				t.Fatalf("nearest row %d: value %v, offset %v ms, grid %v", k, v, off, g)
			}
		}
		if got := sg.act[0][0]; got != sg.state[1][0] {
			t.Errorf("%s: action is not the next state: %v vs %v", mode, got, sg.state[1][0])
		}
	}
}

// TestAlignPolicies: a 200 ms silence in 100 Hz telemetry, tolerance 15 ms.
func TestAlignPolicies(t *testing.T) {
	var ts []int64
	for i := 0; i <= 100; i++ {
		if i > 40 && i < 60 {
			continue
		}
		ts = append(ts, int64(i)*10_000_000)
	}
	f := func(t int64) float64 { return float64(t) / 1e9 }
	base := "fps: 10\ntolerance: 15ms\nstate:\n  - {topic: a, field: p}\n  - {topic: a, field: ok}\naction: {next_state: true}\nmissing: "
	lay := &layout{stateDims: []int{2, 1}, offsetTopics: []string{"a"}}
	// Rows at 0, 0.1, ... 1.0 s: 0.5 s has no sample within 15 ms (0.4 and 0.6 are there).
	for _, tc := range []struct {
		policy                      string
		segs, rows, missing, filled int
		dropped                     bool
	}{
		{PolicyFillPrevious, 1, 11, 1, 1, false},
		{PolicySplit, 2, 10, 1, 0, false},
		{PolicyDropEpisode, 0, 0, 1, 0, true},
	} {
		res, err := align(telEpisode(ts, f), mapping(t, base+tc.policy+"\n"), lay)
		if err != nil {
			t.Fatal(err)
		}
		rows := 0
		for _, s := range res.segments {
			rows += s.n
		}
		if len(res.segments) != tc.segs || rows != tc.rows || res.missingRows != tc.missing || res.filledRows != tc.filled || res.dropped != tc.dropped {
			t.Errorf("%s: %d segments, %d rows, %d missing, %d filled, dropped %v (%s)", tc.policy, len(res.segments), rows, res.missingRows, res.filledRows, res.dropped, res.reason)
		}
		if tc.policy == PolicyFillPrevious {
			sg := res.segments[0]
			if sg.state[5][0] != sg.state[4][0] || sg.offsets[0][5] != sg.offsets[0][4]-100 {
				t.Errorf("filled row: state %v after %v, offset %v after %v", sg.state[5], sg.state[4], sg.offsets[0][5], sg.offsets[0][4])
			}
			if math.Abs(sg.coverage-10.0/11) > 1e-9 {
				t.Errorf("coverage %v", sg.coverage)
			}
		}
	}
}

func TestMappingErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"fps: 30\nstate: [{topic: a, field: p}]\naction: {next_state: true}\nbogus: 1\n", "field bogus not found"},
		{"fps: 0\nstate: [{topic: a, field: p}]\naction: {next_state: true}\n", "fps: must be 1..1000"},
		{"fps: 30\naction: {next_state: true}\n", "state: at least one field"},
		{"fps: 30\nstate: [{topic: a, field: p}]\n", "action: give fields or next_state"},
		{"fps: 30\nstate: [{topic: a, field: p, interpolate: cubic}]\naction: {next_state: true}\n", `interpolate "cubic"`},
		{"fps: 30\nstate: [{topic: a, field: p}]\naction: {next_state: true}\ncameras: [{stream: c, name: a.b}, {stream: d, name: x}, {stream: e, name: x}]\n", `name "a.b" must not contain`},
		{"fps: 30\nstate: [{topic: a, field: p}]\naction: {next_state: true}\ncameras: [{stream: d, name: x}, {stream: e, name: x}]\n", `name "x" used twice`},
		{"fps: 30\ntolerance: soon\nstate: [{topic: a, field: p}]\naction: {next_state: true}\n", "invalid duration"},
		{"fps: 30\nmissing: often\ncodec: vp9\nstate: [{topic: a, field: p}]\naction: {next_state: true}\n", `codec: "vp9"`},
	} {
		_, err := ParseMapping([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.yaml, err, tc.want)
		}
	}
	m := mapping(t, "fps: 25\nstate: [{topic: a, field: p}]\naction: {next_state: true}\n")
	if time.Duration(m.VideoTolerance) != 20*time.Millisecond || m.Missing != PolicyFillPrevious || m.Codec != "auto" || time.Duration(m.State[0].Tolerance) != 20*time.Millisecond {
		t.Errorf("defaults: %+v", m)
	}
}

func TestValue(t *testing.T) {
	var doc any
	if err := json.Unmarshal([]byte(`{"a":{"b":[1,2.5,true]},"c":false,"d":"x","e":[1,"y"],"f":[[1]]}`), &doc); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want []float64
		ok   bool
	}{
		{"a.b", []float64{1, 2.5, 1}, true},
		{"a.b.1", []float64{2.5}, true},
		{"c", []float64{0}, true},
		{"d", nil, false},
		{"e", nil, false},
		{"f", nil, false},
		{"a.x", nil, false},
		{"a.b.9", nil, false},
	} {
		got, ok := value(doc, tc.path)
		if ok != tc.ok || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v %v; want %v %v", tc.path, got, ok, tc.want, tc.ok)
		}
	}
}
