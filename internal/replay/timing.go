package replay

import "time"

// histogram records durations with bounded memory: 1 µs buckets below
// 10 ms, 100 µs buckets below 1 s, 10 ms buckets below 100 s, and one
// overflow bucket; the exact maximum is kept. Negative values count as 0.
type histogram struct {
	n      uint64
	max    time.Duration
	sum    time.Duration
	counts []uint32
}

const (
	tier1Width, tier1End = time.Microsecond, 10 * time.Millisecond
	tier2Width, tier2End = 100 * time.Microsecond, time.Second
	tier3Width, tier3End = 10 * time.Millisecond, 100 * time.Second
	tier1N               = int(tier1End / tier1Width)
	tier2N               = int((tier2End - tier1End) / tier2Width)
	tier3N               = int((tier3End - tier2End) / tier3Width)
	histBuckets          = tier1N + tier2N + tier3N + 1
)

func bucketOf(d time.Duration) int {
	switch {
	case d < 0:
		return 0
	case d < tier1End:
		return int(d / tier1Width)
	case d < tier2End:
		return tier1N + int((d-tier1End)/tier2Width)
	case d < tier3End:
		return tier1N + tier2N + int((d-tier2End)/tier3Width)
	}
	return histBuckets - 1
}

// upperEdge is the exclusive upper bound of bucket i.
func upperEdge(i int) time.Duration {
	switch {
	case i < tier1N:
		return time.Duration(i+1) * tier1Width
	case i < tier1N+tier2N:
		return tier1End + time.Duration(i-tier1N+1)*tier2Width
	case i < tier1N+tier2N+tier3N:
		return tier2End + time.Duration(i-tier1N-tier2N+1)*tier3Width
	}
	return time.Duration(1<<63 - 1)
}

func (h *histogram) add(d time.Duration) {
	if h.counts == nil {
		h.counts = make([]uint32, histBuckets)
	}
	d = max(d, 0)
	h.n++
	h.sum += d
	h.max = max(h.max, d)
	h.counts[bucketOf(d)]++
}

func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = make([]uint32, histBuckets)
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
	for i, c := range o.counts {
		h.counts[i] += c
	}
}

// quantile returns an upper bound of the q-quantile (0 < q <= 1): the upper
// edge of the bucket holding it, capped at the maximum. Resolution is the
// bucket width (1 µs below 10 ms).
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.999999)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += uint64(c)
		if seen >= rank {
			return min(upperEdge(i), h.max)
		}
	}
	return h.max
}

// Timing is the distribution of (actual − intended) send times of one sink.
type Timing struct {
	// Sink is "mqtt", "rtsp" or "all".
	Sink string  `json:"sink"`
	N    uint64  `json:"n"`
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

func (h *histogram) timing(sink string) Timing {
	t := Timing{Sink: sink, N: h.n}
	if h.n == 0 {
		return t
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	t.P50, t.P99, t.Max = ms(h.quantile(0.50)), ms(h.quantile(0.99)), ms(h.max)
	t.Mean = ms(h.sum / time.Duration(h.n))
	return t
}
