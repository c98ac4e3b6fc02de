package dataset

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// series is one mapped field's values over time.
type series struct {
	t    []int64
	v    [][]float64
	dim  int
	bad  int // messages without the field or of the wrong length
	tol  int64
	lin  bool
	name string // topic, for errors
}

// value returns the numbers at a dotted path: a number, a bool (0/1) or an
// array of them; ok is false if the path is missing or holds anything else.
func value(data any, path string) ([]float64, bool) {
	cur := data
	for _, p := range strings.Split(path, ".") {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[p]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	num := func(v any) (float64, bool) {
		switch x := v.(type) {
		case float64:
			return x, true
		case bool:
			if x {
				return 1, true
			}
			return 0, true
		}
		return 0, false
	}
	if a, ok := cur.([]any); ok {
		out := make([]float64, len(a))
		for i, e := range a {
			f, ok := num(e)
			if !ok {
				return nil, false
			}
			out[i] = f
		}
		return out, len(out) > 0
	}
	f, ok := num(cur)
	if !ok {
		return nil, false
	}
	return []float64{f}, true
}

// fieldNames returns the names of a field's values, dim of them.
func fieldNames(f Field, dim int) []string {
	if len(f.Names) > 0 {
		return f.Names
	}
	base := f.Path[strings.LastIndex(f.Path, ".")+1:]
	if dim == 1 {
		return []string{base}
	}
	out := make([]string, dim)
	for i := range out {
		out[i] = fmt.Sprintf("%s[%d]", base, i)
	}
	return out
}

// extract builds a field's series; dim is the expected number of values
// (0: take it from the first message, or from Names).
func extract(ep *Episode, f Field, dim int) *series {
	if dim == 0 && len(f.Names) > 0 {
		dim = len(f.Names)
	}
	s := &series{dim: dim, tol: int64(f.Tolerance), lin: f.Interpolate == "linear", name: f.Topic}
	for _, m := range ep.Telemetry[f.Topic] {
		v, ok := m.Vals[f.Path]
		if ok && s.dim == 0 {
			s.dim = len(v)
		}
		if !ok || len(v) != s.dim {
			s.bad++
			continue
		}
		s.t = append(s.t, m.T)
		s.v = append(s.v, v)
	}
	return s
}

// at returns the value at grid time g, the signed offset (sample time −
// g) of the sample used, and false if no sample is within tolerance.
// Linear interpolation between two samples within tolerance reports an
// offset of 0: the value is estimated at g.
func (s *series) at(g int64) ([]float64, int64, bool) {
	i := sort.Search(len(s.t), func(i int) bool { return s.t[i] >= g }) // first >= g
	var best = -1
	var bestD int64 = math.MaxInt64
	for _, j := range []int{i - 1, i} {
		if j >= 0 && j < len(s.t) {
			d := s.t[j] - g
			if abs64(d) < abs64(bestD) {
				best, bestD = j, d
			}
		}
	}
	if best < 0 || abs64(bestD) > s.tol {
		return nil, 0, false
	}
	if s.lin && i > 0 && i < len(s.t) && s.t[i] != g && g-s.t[i-1] <= s.tol && s.t[i]-g <= s.tol {
		a, b := s.v[i-1], s.v[i]
		w := float64(g-s.t[i-1]) / float64(s.t[i]-s.t[i-1])
		out := make([]float64, len(a))
		for k := range a {
			out[k] = a[k] + w*(b[k]-a[k])
		}
		return out, 0, true
	}
	return s.v[best], bestD, true
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// camSeries is one camera's frames in presentation order.
type camSeries struct {
	pts   []int64
	dec   []int // decode index of each presentation-order frame
	key   []bool
	tol   int64
	track *Track
}

func newCamSeries(tr *Track, tol int64) *camSeries {
	c := &camSeries{tol: tol, track: tr}
	idx := make([]int, len(tr.Frames))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return tr.Frames[idx[a]].PTS < tr.Frames[idx[b]].PTS })
	for _, d := range idx {
		c.pts = append(c.pts, tr.Frames[d].PTS)
		c.dec = append(c.dec, d)
		c.key = append(c.key, tr.Frames[d].Key)
	}
	return c
}

// at returns the presentation index of the frame nearest g within
// tolerance, its offset, and false if none.
func (c *camSeries) at(g int64) (int, int64, bool) {
	i := sort.Search(len(c.pts), func(i int) bool { return c.pts[i] >= g })
	best, bestD := -1, int64(math.MaxInt64)
	for _, j := range []int{i - 1, i} {
		if j >= 0 && j < len(c.pts) {
			d := c.pts[j] - g
			if abs64(d) < abs64(bestD) {
				best, bestD = j, d
			}
		}
	}
	if best < 0 || abs64(bestD) > c.tol {
		return -1, 0, false
	}
	return best, bestD, true
}

// segment is a run of rows that becomes one dataset episode.
type segment struct {
	start int64 // grid time of row 0
	n     int
	state [][]float32
	act   [][]float32
	// offsets[c][k]: ms offset of fidelity column c at row k.
	offsets [][]float32
	// frames[cam][k]: presentation index of the frame of row k.
	frames   [][]int
	repeated [][]bool
	// coverage is the share of the episode's rows that had every feature
	// within tolerance (before any policy).
	coverage float64
}

// gridResult is what aligning one source episode gives.
type gridResult struct {
	segments []segment
	cams     []*camSeries
	// Counters.
	rows, missingRows, filledRows, droppedRows int
	dropped                                    bool
	reason                                     string
}

// layout is the dataset's fixed feature layout, known after the first
// episode (or from an existing dataset).
type layout struct {
	stateDims, actDims []int // per field
	stateNames         []string
	actNames           []string
	// topics with a fidelity offset column, in order; cameras follow.
	offsetTopics []string
}

func gridTime(start int64, k, fps int) int64 {
	return start + int64(k)*1e9/int64(fps)
}

// align puts one episode on the mapping's grid.
func align(ep *Episode, m *Mapping, lay *layout) (*gridResult, error) {
	res := &gridResult{}
	var state, act []*series
	for i, f := range m.State {
		s := extract(ep, f, lay.stateDims[i])
		if len(s.t) == 0 {
			res.dropped, res.reason = true, fmt.Sprintf("no usable %s %s messages", f.Topic, f.Path)
			return res, nil
		}
		state = append(state, s)
	}
	for i, f := range m.Action.Fields {
		s := extract(ep, f, lay.actDims[i])
		if len(s.t) == 0 {
			res.dropped, res.reason = true, fmt.Sprintf("no usable %s %s messages", f.Topic, f.Path)
			return res, nil
		}
		act = append(act, s)
	}
	for _, c := range m.Cameras {
		tr := ep.Video[c.Stream]
		if tr == nil || len(tr.Frames) == 0 {
			res.dropped, res.reason = true, fmt.Sprintf("camera %s has no decodable frames", c.Stream)
			return res, nil
		}
		res.cams = append(res.cams, newCamSeries(tr, int64(m.VideoTolerance)))
	}
	// The grid covers the time every required stream covers.
	start, end := int64(math.MinInt64), int64(math.MaxInt64)
	for _, s := range append(append([]*series{}, state...), act...) {
		start, end = max(start, s.t[0]), min(end, s.t[len(s.t)-1])
	}
	for _, c := range res.cams {
		start, end = max(start, c.pts[0]), min(end, c.pts[len(c.pts)-1])
	}
	if end < start {
		res.dropped, res.reason = true, "the streams do not overlap in time"
		return res, nil
	}
	n := int((end-start)*int64(m.FPS)/1e9) + 1
	res.rows = n

	// Per-topic offsets come from the first field of each topic.
	firstOf := map[string]*series{}
	for _, s := range append(append([]*series{}, state...), act...) {
		if firstOf[s.name] == nil {
			firstOf[s.name] = s
		}
	}
	ncols := len(lay.offsetTopics) + len(res.cams)
	type row struct {
		state, act []float32
		off        []float32
		frame      []int
		ok         []bool // per column
		complete   bool
	}
	rows := make([]row, n)
	for k := range rows {
		g := gridTime(start, k, m.FPS)
		r := row{off: make([]float32, ncols), frame: make([]int, len(res.cams)), ok: make([]bool, ncols), complete: true}
		fill := func(ss []*series) []float32 {
			var out []float32
			for _, s := range ss {
				v, _, ok := s.at(g)
				if !ok {
					r.complete = false
					out = append(out, make([]float32, s.dim)...)
					continue
				}
				for _, x := range v {
					out = append(out, float32(x))
				}
			}
			return out
		}
		r.state, r.act = fill(state), fill(act)
		for ci, tp := range lay.offsetTopics {
			if _, d, ok := firstOf[tp].at(g); ok {
				r.off[ci], r.ok[ci] = float32(float64(d)/1e6), true
			}
		}
		for ci, c := range res.cams {
			p, d, ok := c.at(g)
			col := len(lay.offsetTopics) + ci
			r.frame[ci] = p
			if ok {
				r.off[col], r.ok[col] = float32(float64(d)/1e6), true
			} else {
				r.complete = false
			}
		}
		rows[k] = r
	}
	complete := 0
	for _, r := range rows {
		if r.complete {
			complete++
		}
	}
	res.missingRows = n - complete
	coverage := float64(complete) / float64(n)

	// Apply the policy: which runs of rows become segments, and how
	// missing values are filled.
	var runs [][2]int // [from, to)
	switch {
	case res.missingRows == 0:
		runs = [][2]int{{0, n}}
	case m.Missing == PolicyDropEpisode:
		res.dropped = true
		res.reason = fmt.Sprintf("%d of %d rows have no sample within tolerance (policy drop-episode)", res.missingRows, n)
		return res, nil
	case m.Missing == PolicySplit:
		for k := 0; k < n; {
			if !rows[k].complete {
				k++
				continue
			}
			j := k
			for j < n && rows[j].complete {
				j++
			}
			runs = append(runs, [2]int{k, j})
			k = j
		}
		res.droppedRows = res.missingRows
	default: // fill-previous; leading incomplete rows have nothing to fill from
		k0 := 0
		for k0 < n && !rows[k0].complete {
			k0++
		}
		res.droppedRows = k0
		if k0 < n {
			runs = [][2]int{{k0, n}}
		}
	}
	// Fill from the previous row, recomputing the offsets against the
	// sample actually used.
	prevG := func(k int) int64 { return gridTime(start, k, m.FPS) }
	for _, rr := range runs {
		for k := rr[0] + 1; k < rr[1]; k++ {
			if rows[k].complete {
				continue
			}
			res.filledRows++
			g := prevG(k)
			p := rows[k-1]
			cur := &rows[k]
			// Values: per field, keep what was found, else take the previous.
			fillVals := func(ss []*series, vals, prev []float32) {
				o := 0
				for _, s := range ss {
					if _, _, ok := s.at(g); !ok {
						copy(vals[o:o+s.dim], prev[o:o+s.dim])
					}
					o += s.dim
				}
			}
			fillVals(state, cur.state, p.state)
			fillVals(act, cur.act, p.act)
			for ci := range cur.off {
				if !cur.ok[ci] {
					// The sample used is the previous row's: its offset
					// grows by one grid step.
					cur.off[ci] = p.off[ci] - float32(float64(g-prevG(k-1))/1e6)
					cur.ok[ci] = true
				}
			}
			for ci := range res.cams {
				if cur.frame[ci] < 0 {
					cur.frame[ci] = p.frame[ci] // the previous frame, shown again
				}
			}
			cur.complete = true
		}
	}
	if len(runs) == 0 {
		res.dropped, res.reason = true, "no row has every feature within tolerance"
		return res, nil
	}
	for _, rr := range runs {
		sg := segment{start: gridTime(start, rr[0], m.FPS), n: rr[1] - rr[0], coverage: coverage,
			offsets: make([][]float32, ncols), frames: make([][]int, len(res.cams)), repeated: make([][]bool, len(res.cams))}
		for k := rr[0]; k < rr[1]; k++ {
			r := rows[k]
			sg.state = append(sg.state, r.state)
			for ci := range r.off {
				sg.offsets[ci] = append(sg.offsets[ci], r.off[ci])
			}
			for ci := range res.cams {
				sg.frames[ci] = append(sg.frames[ci], r.frame[ci])
				sg.repeated[ci] = append(sg.repeated[ci], k > rr[0] && rows[k-1].frame[ci] == r.frame[ci])
			}
			if m.Action.NextState {
				nk := min(k+1, rr[1]-1)
				sg.act = append(sg.act, rows[nk].state)
			} else {
				sg.act = append(sg.act, r.act)
			}
		}
		res.segments = append(res.segments, sg)
	}
	return res, nil
}

// remuxable reports whether a camera's frames for a segment map one to
// one onto its rows: consecutive presentation indices with no repeat, the
// first a keyframe, and the same frames forming a contiguous run in decode
// order (so the bitstream can be copied as is). It returns the decode
// range [from, to).
func (c *camSeries) remuxable(frames []int) (int, int, bool) {
	if len(frames) == 0 {
		return 0, 0, false
	}
	p0 := frames[0]
	for k, p := range frames {
		if p != p0+k {
			return 0, 0, false
		}
	}
	if !c.key[p0] {
		return 0, 0, false
	}
	lo, hi := math.MaxInt, -1
	for _, p := range frames {
		lo, hi = min(lo, c.dec[p]), max(hi, c.dec[p])
	}
	if hi-lo+1 != len(frames) || lo != c.dec[p0] {
		return 0, 0, false
	}
	return lo, hi + 1, true
}
