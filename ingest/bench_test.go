package ingest

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/episoded/episoded/sample"
)

// feed generates an endless 200 Hz device-clock stream with exponential
// delay jitter (mean 5ms), offset and drift, cheaply enough not to dominate
// what is measured.
type feed struct {
	delays [4096]int64
	i      int
	g      int64
}

func newFeed() *feed {
	f := &feed{g: t0}
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range f.delays {
		f.delays[i] = int64(min(rng.ExpFloat64()*5e6, 50e6))
	}
	return f
}

func (f *feed) next(x *sample.Sample) {
	f.g += int64(5 * time.Millisecond)
	f.i++
	x.SrcT = f.g + 1_234_567_890 + (f.g-t0)/10_000 // +100 ppm
	x.RecvT = f.g + f.delays[f.i&4095]
	x.Seq, x.T = 0, 0
}

// baseline measures, in the same run, the cheapest per-sample hand-off the
// daemon pays anyway: generating the sample and passing a pointer through a
// buffered channel. Benchmarks report their cost as a multiple of it.
func baseline(n int) float64 {
	f := newFeed()
	ch := make(chan *sample.Sample, 1)
	var x sample.Sample
	start := time.Now()
	for range n {
		f.next(&x)
		ch <- &x
		<-ch
	}
	return float64(time.Since(start).Nanoseconds()) / float64(n)
}

// report adds the ratio to the baseline and the share of one core the
// measured path would take at 100k samples/s.
func report(b *testing.B, ns float64) {
	b.ReportMetric(ns, "ns/sample")
	b.ReportMetric(ns/baseline(max(b.N, 1000)), "x_chan_handoff")
	b.ReportMetric(ns*100_000/1e9, "cores@100k/s")
}

func BenchmarkStreamProcess(b *testing.B) {
	b.Run("device", func(b *testing.B) {
		d := sample.Descriptor{Stream: "c1/joints", Kind: sample.KindTelemetry, Clock: sample.ClockDevice}
		s, _ := NewStream(d, 0, ClockOptions{})
		f := newFeed()
		var x sample.Sample
		x.Payload = make([]byte, 64)
		for range 20000 { // converge first
			f.next(&x)
			s.Process(&x)
		}
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			f.next(&x)
			s.Process(&x)
		}
		ns := float64(time.Since(start).Nanoseconds()) / float64(b.N)
		b.StopTimer()
		report(b, ns)
	})
	b.Run("arrival", func(b *testing.B) {
		d := sample.Descriptor{Stream: "c1/joints", Kind: sample.KindTelemetry, Clock: sample.ClockArrival, Latency: 1e6}
		s, _ := NewStream(d, 0, ClockOptions{})
		f := newFeed()
		var x sample.Sample
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			f.next(&x)
			s.Process(&x)
		}
		ns := float64(time.Since(start).Nanoseconds()) / float64(b.N)
		b.StopTimer()
		report(b, ns)
	})
}

// BenchmarkEpisodePath is the whole per-sample ingest path: stream
// alignment, the cell's idle tracking and the live quality report.
func BenchmarkEpisodePath(b *testing.B) {
	d := sample.Descriptor{Stream: "c1/joints", Kind: sample.KindTelemetry, Clock: sample.ClockDevice}
	s, _ := NewStream(d, 0, ClockOptions{})
	c, _ := NewCell(CellOptions{ID: "c1", IdleTimeout: time.Minute})
	if _, err := c.Start(t0, StartRequest{}); err != nil {
		b.Fatal(err)
	}
	r, _ := NewReport(d, ReportOptions{})
	f := newFeed()
	var x sample.Sample
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		f.next(&x)
		s.Process(&x)
		c.Observe(x.RecvT)
		r.Add(&x)
	}
	ns := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	b.StopTimer()
	report(b, ns)
}

func BenchmarkReportAdd(b *testing.B) {
	for _, mode := range []sample.ClockMode{sample.ClockArrival, sample.ClockDevice} {
		b.Run(string(mode), func(b *testing.B) {
			d := sample.Descriptor{Stream: "c1/joints", Kind: sample.KindTelemetry, Clock: mode}
			r, _ := NewReport(d, ReportOptions{})
			f := newFeed()
			xs := make([]sample.Sample, 4096)
			for i := range xs {
				f.next(&xs[i])
				xs[i].T = xs[i].RecvT
				xs[i].Payload = make([]byte, 64)
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				x := &xs[i&4095]
				if i&4095 == 0 && i > 0 {
					// keep time moving forward across the wrap
					for j := range xs {
						f.next(&xs[j])
						xs[j].T = xs[j].RecvT
					}
				}
				r.Add(x)
			}
			ns := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			b.StopTimer()
			report(b, ns)
		})
	}
}

func BenchmarkClockAlign(b *testing.B) {
	c, _ := NewClock(ClockOptions{})
	f := newFeed()
	var x sample.Sample
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		f.next(&x)
		c.Align(x.SrcT, x.RecvT)
	}
}
