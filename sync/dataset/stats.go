package dataset

import (
	"math"
	"sort"
)

// statNames are the statistics LeRobot keeps per feature, in its order.
var statNames = []string{"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}

var quantiles = []float64{0.01, 0.10, 0.50, 0.90, 0.99}

// featStats holds one feature's statistics: one value per dimension (per
// channel for video), count as a single number.
type featStats struct {
	Min, Max, Mean, Std []float64
	Count               int64
	Q                   [5][]float64 // q01, q10, q50, q90, q99
}

// computeStats computes statistics over rows of dim values, as numpy does
// over axis 0 (population std, linear-interpolated quantiles).
func computeStats(rows [][]float64, dim int) featStats {
	s := featStats{Count: int64(len(rows))}
	col := make([]float64, len(rows))
	for d := 0; d < dim; d++ {
		var sum float64
		for i, r := range rows {
			col[i] = r[d]
			sum += r[d]
		}
		n := float64(len(rows))
		mean := sum / n
		var ss float64
		for _, v := range col {
			ss += (v - mean) * (v - mean)
		}
		sort.Float64s(col)
		s.Min = append(s.Min, col[0])
		s.Max = append(s.Max, col[len(col)-1])
		s.Mean = append(s.Mean, mean)
		s.Std = append(s.Std, math.Sqrt(ss/n))
		for qi, q := range quantiles {
			s.Q[qi] = append(s.Q[qi], quantileSorted(col, q))
		}
	}
	return s
}

func quantileSorted(v []float64, q float64) float64 {
	if len(v) == 1 {
		return v[0]
	}
	pos := q * float64(len(v)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(v)-1)
	return v[lo] + (pos-float64(lo))*(v[hi]-v[lo])
}

// histStats computes statistics from per-channel 256-bin histograms of
// 8-bit samples, scaled to [0, 1]; count is the number of frames.
func histStats(h [][256]int64, frames int64) featStats {
	s := featStats{Count: frames}
	for _, hc := range h {
		var n, sum, sq float64
		lo, hi := -1, 0
		for v, c := range hc {
			if c == 0 {
				continue
			}
			if lo < 0 {
				lo = v
			}
			hi = v
			x := float64(v) / 255
			n += float64(c)
			sum += x * float64(c)
			sq += x * x * float64(c)
		}
		mean := sum / n
		s.Min = append(s.Min, float64(max(lo, 0))/255)
		s.Max = append(s.Max, float64(hi)/255)
		s.Mean = append(s.Mean, mean)
		s.Std = append(s.Std, math.Sqrt(max(sq/n-mean*mean, 0)))
		for qi, q := range quantiles {
			// the value at rank q·(n−1), linearly interpolated
			pos := q * (n - 1)
			s.Q[qi] = append(s.Q[qi], histRank(&hc, pos)/255)
		}
	}
	return s
}

func histRank(h *[256]int64, pos float64) float64 {
	at := func(r int64) float64 {
		var cum int64
		for v, c := range h {
			cum += c
			if r < cum {
				return float64(v)
			}
		}
		return 255
	}
	lo := int64(math.Floor(pos))
	return at(lo) + (pos-float64(lo))*(at(lo+1)-at(lo))
}

// aggregate combines per-episode statistics as LeRobot's aggregate_stats
// does: min of mins, max of maxes, count-weighted means, the pooled
// variance, and count-weighted quantiles.
func aggregate(all []featStats) featStats {
	if len(all) == 0 {
		return featStats{}
	}
	dim := len(all[0].Mean)
	out := featStats{}
	var total int64
	for _, s := range all {
		total += s.Count
	}
	out.Count = total
	for d := 0; d < dim; d++ {
		mn, mx, mean := math.Inf(1), math.Inf(-1), 0.0
		for _, s := range all {
			mn, mx = math.Min(mn, s.Min[d]), math.Max(mx, s.Max[d])
			mean += s.Mean[d] * float64(s.Count)
		}
		mean /= float64(total)
		var v float64
		for _, s := range all {
			dm := s.Mean[d] - mean
			v += float64(s.Count) * (s.Std[d]*s.Std[d] + dm*dm)
		}
		out.Min = append(out.Min, mn)
		out.Max = append(out.Max, mx)
		out.Mean = append(out.Mean, mean)
		out.Std = append(out.Std, math.Sqrt(v/float64(total)))
		for qi := range quantiles {
			var q float64
			for _, s := range all {
				q += s.Q[qi][d] * float64(s.Count)
			}
			out.Q[qi] = append(out.Q[qi], q/float64(total))
		}
	}
	return out
}

// values returns the statistic named n as a flat list.
func (s featStats) values(n string) []float64 {
	switch n {
	case "min":
		return s.Min
	case "max":
		return s.Max
	case "mean":
		return s.Mean
	case "std":
		return s.Std
	case "count":
		return []float64{float64(s.Count)}
	case "q01":
		return s.Q[0]
	case "q10":
		return s.Q[1]
	case "q50":
		return s.Q[2]
	case "q90":
		return s.Q[3]
	case "q99":
		return s.Q[4]
	}
	return nil
}

func (s *featStats) set(n string, v []float64) {
	switch n {
	case "min":
		s.Min = v
	case "max":
		s.Max = v
	case "mean":
		s.Mean = v
	case "std":
		s.Std = v
	case "count":
		if len(v) > 0 {
			s.Count = int64(v[0])
		}
	case "q01":
		s.Q[0] = v
	case "q10":
		s.Q[1] = v
	case "q50":
		s.Q[2] = v
	case "q90":
		s.Q[3] = v
	case "q99":
		s.Q[4] = v
	}
}

// jsonStats renders statistics for stats.json; video (3 channels) nests
// each value as [[v]] (shape (3,1,1)).
func (s featStats) json(video bool) map[string]any {
	out := map[string]any{}
	for _, n := range statNames {
		v := s.values(n)
		if n == "count" {
			out[n] = []int64{s.Count}
			continue
		}
		if video {
			nested := make([][][]float64, len(v))
			for i, x := range v {
				nested[i] = [][]float64{{x}}
			}
			out[n] = nested
			continue
		}
		out[n] = v
	}
	return out
}

// sampleIndices picks the frames LeRobot samples for image statistics:
// about len^0.75 of them, between 100 and 10000, evenly spaced.
func sampleIndices(n int) []int {
	num := n
	if n >= 100 {
		num = max(100, min(int(math.Pow(float64(n), 0.75)), 10000))
	}
	out := make([]int, 0, num)
	seen := map[int]bool{}
	for i := 0; i < num; i++ {
		var x int
		if num > 1 {
			x = int(math.Round(float64(i) * float64(n-1) / float64(num-1)))
		}
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// addYUV adds one yuv420p picture (w×h), converted to RGB (BT.601 limited
// range) and downsampled as LeRobot does (stride w/150 or h/150 for
// pictures of 300 px or more), to per-channel histograms.
func addYUV(h [][256]int64, yuv []byte, w, hgt int) {
	stride := 1
	if max(w, hgt) >= 300 {
		if w > hgt {
			stride = w / 150
		} else {
			stride = hgt / 150
		}
	}
	uOff := w * hgt
	vOff := uOff + (w/2)*(hgt/2)
	clamp := func(x float64) int {
		return int(math.Max(0, math.Min(255, math.Round(x))))
	}
	for y := 0; y < hgt; y += stride {
		for x := 0; x < w; x += stride {
			Y := float64(yuv[y*w+x]) - 16
			ci := (y/2)*(w/2) + x/2
			U := float64(yuv[uOff+ci]) - 128
			V := float64(yuv[vOff+ci]) - 128
			h[0][clamp(1.164*Y+1.596*V)]++
			h[1][clamp(1.164*Y-0.392*U-0.813*V)]++
			h[2][clamp(1.164*Y+2.017*U)]++
		}
	}
}
