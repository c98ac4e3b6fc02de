package webrtc

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4/pkg/format/rtph264"
	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"

	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
)

// BenchmarkHubPublish measures Hub.Publish, which is on the recording
// path, with n viewers of which one never reads (its queue is full, so
// every frame to it is a counted drop). The baseline, measured in the
// same run with the same draining goroutines, is the bare minimum: one
// non-blocking channel send per viewer.
func BenchmarkHubPublish(b *testing.B) {
	aus := clipAUs(b)
	smps := make([]sample.Sample, len(aus))
	for i := range aus {
		smps[i] = clipSample(aus, i, int64(i))
	}
	d := liveDesc
	d.Params = clipParams(b)
	for _, n := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("viewers=%d", n), func(b *testing.B) {
			hub := NewHub(nil)
			hub.Publish(d, smps[0])
			var wg sync.WaitGroup
			var vs []*viewer
			for i := 0; i < n; i++ {
				v, _ := hub.subscribe(d.Stream, DefaultQueueSize, nil)
				vs = append(vs, v)
				if i == 0 {
					continue // stuck
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for it := range v.ch {
						if it.s.Payload == nil {
							return
						}
					}
				}()
			}
			// Baseline: the same fan-out as bare non-blocking sends.
			chans := make([]chan frameItem, n)
			for i := range chans {
				chans[i] = make(chan frameItem, DefaultQueueSize)
			}
			var bwg sync.WaitGroup
			for i := 1; i < n; i++ {
				bwg.Add(1)
				go func(ch chan frameItem) {
					defer bwg.Done()
					for it := range ch {
						if it.s.Payload == nil {
							return
						}
					}
				}(chans[i])
			}
			start := time.Now()
			for i := 0; i < b.N; i++ {
				it := frameItem{s: smps[i%len(smps)], desc: &d}
				for _, ch := range chans {
					select {
					case ch <- it:
					default:
					}
				}
			}
			base := time.Since(start)
			for _, ch := range chans {
				close(ch)
			}
			bwg.Wait()

			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				hub.Publish(d, smps[i%len(smps)])
			}
			b.StopTimer()
			pub := b.Elapsed()
			for _, v := range vs {
				hub.unsubscribe(d.Stream, v)
				close(v.ch)
			}
			wg.Wait()
			b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "baseline-ns/op")
			b.ReportMetric(float64(pub)/float64(base), "x-baseline")
			if vs[0].dropped.Load() == 0 && b.N > 2*DefaultQueueSize+60 {
				b.Fatal("stuck viewer counted no drops")
			}
		})
	}
}

// BenchmarkWHIPAssemble measures WHIP's RTP-to-access-unit path (the
// reorderer, assembly, keyframe and parameter-set tracking, Annex-B copy)
// on the clip packetized by pion. The baseline, in the same run, is gortsplib's
// bare rtph264.Decoder on the same packets.
func BenchmarkWHIPAssemble(b *testing.B) {
	aus := clipAUs(b)
	pz := rtp.NewPacketizer(1200, 96, 1, &codecs.H264Payloader{}, rtp.NewFixedSequencer(1), 90000)
	var pkts []*rtp.Packet
	var bytes int64
	for i, au := range aus {
		p := pz.Packetize(video.AnnexB(au), 3000)
		for _, pk := range p {
			pk.Timestamp = uint32(i * 3000)
			bytes += int64(len(pk.Payload))
		}
		pkts = append(pkts, p...)
	}
	seqs := uint16(len(pkts))

	// Baseline: the bare decoder over b.N clips.
	start := time.Now()
	var baseAUs int
	for i := 0; i < b.N; i++ {
		dec := &rtph264.Decoder{}
		if err := dec.Init(); err != nil {
			b.Fatal(err)
		}
		for _, pk := range pkts {
			if au, err := dec.Decode(pk); err == nil {
				baseAUs += len(au)
			}
		}
	}
	base := time.Since(start)

	var cnt video.Counters
	var units int
	asm := video.NewAssembler(video.H264, nil, nil, &cnt, func(u video.Unit) bool {
		_ = video.AnnexB(u.AU)
		units++
		return true
	})
	var filled counter
	ro := newReorderer(DefaultReorderWait, reorderMaxHeld, &filled)
	b.SetBytes(bytes)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off := uint16(i) * seqs
		for _, pk := range pkts {
			q := *pk
			q.SequenceNumber = pk.SequenceNumber + off
			q.Timestamp = pk.Timestamp + uint32(i*len(aus)*3000)
			ro.push(&q, time.Now(), asm.Push)
		}
	}
	b.StopTimer()
	if units < b.N*(len(aus)-1) || cnt.Lost.Load() != 0 {
		b.Fatalf("assembled %d units (lost %d) from %d clips", units, cnt.Lost.Load(), b.N)
	}
	b.ReportMetric(float64(b.N*len(aus))/b.Elapsed().Seconds(), "frames/s")
	b.ReportMetric(float64(b.Elapsed())/float64(base), "x-baseline")
	_ = baseAUs
}

// BenchmarkWHEPFirstFrame measures how long a new live viewer waits for
// its first frame, from the POST of its offer, against the baseline of
// the same session's ICE+DTLS connection time (the least any viewer
// waits). Nothing is published while the viewer connects: the frame it
// gets is the cached keyframe.
func BenchmarkWHEPFirstFrame(b *testing.B) {
	hub := NewHub(nil)
	ts := startServer(b, Options{}, hub, nil)
	aus := clipAUs(b)
	d := liveDesc
	d.Params = clipParams(b)
	for i := 0; i < 10; i++ {
		hub.Publish(d, clipSample(aus, i, int64(i)))
	}
	var connect, first time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		pc, v, _ := newViewer(b, ts.url+"/whep/"+d.Stream)
		connected := waitConnected(b, pc)
		select {
		case <-v.ch:
		case <-time.After(10 * time.Second):
			b.Fatal("no first frame")
		}
		first += time.Since(start)
		connect += connected.Sub(start)
		_ = pc.Close()
	}
	b.StopTimer()
	b.ReportMetric(float64(first.Milliseconds())/float64(b.N), "ms-first-frame")
	b.ReportMetric(float64(connect.Milliseconds())/float64(b.N), "ms-connect")
	b.ReportMetric(float64(first)/float64(connect), "x-baseline")
}
