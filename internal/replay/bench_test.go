package replay

import (
	"context"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
)

// BenchmarkReplayTiming measures the timing error of a rate-1 replay to a
// real mosquitto (200 Hz JSON + 20 Hz CBOR + 10 Hz 16 KB lidar frames, 3 s
// per iteration): p99 of actual minus intended send time ("p99-ms"), and
// the same for a baseline measured in the same run: a bare loop that
// sleeps until the same schedule with the same sleepUntil and sends nothing
// ("baseline-p99-ms"), i.e. what the machine's timers and scheduler allow.
// "ratio" is p99 over baseline p99; "sub-p99-ms" is the p99 of arrival at
// an independent subscriber minus intended send time.
func BenchmarkReplayTiming(b *testing.B) {
	url := startMosquitto(b)
	st := openStore(b)
	t0 := time.Now().Add(-time.Hour).UnixNano()
	te := buildEpisode(b, st, epID, t0, 3*time.Second, episode.Closed)
	want := mqttWanted(te, "")
	var base, send, arrive histogram
	for b.Loop() {
		// Baseline: the same schedule, nothing sent.
		start := time.Now()
		for _, m := range want {
			intended := start.Add(time.Duration(m.at.UnixNano() - t0))
			if err := sleepUntil(context.Background(), intended); err != nil {
				b.Fatal(err)
			}
			base.add(time.Since(intended))
		}

		sub := subscribe(b, url, "#")
		pub := connectPublisher(b, url)
		p, err := New(Options{MQTT: pub})
		if err != nil {
			b.Fatal(err)
		}
		sum, err := p.Run(context.Background(), StoreOpener(st, epID, Selection{}))
		if err != nil {
			b.Fatal(err)
		}
		got := sub.waitAfter(b, pub, 10*time.Second)
		if len(got) != len(want) {
			b.Fatalf("subscriber got %d of %d", len(got), len(want))
		}
		for i, m := range got {
			arrive.add(m.at.Sub(sum.Started.Add(time.Duration(want[i].at.UnixNano() - t0))))
		}
		tm := sum.Overall()
		b.Logf("replay p50 %.3f ms p99 %.3f ms max %.3f ms", tm.P50, tm.P99, tm.Max)
		send.merge(sum.all)
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	p99 := ms(send.quantile(0.99))
	bp99 := ms(base.quantile(0.99))
	b.ReportMetric(ms(send.quantile(0.5)), "p50-ms")
	b.ReportMetric(ms(base.quantile(0.5)), "baseline-p50-ms")
	b.ReportMetric(p99, "p99-ms")
	b.ReportMetric(bp99, "baseline-p99-ms")
	if bp99 > 0 {
		b.ReportMetric(p99/bp99, "ratio")
	}
	b.ReportMetric(ms(arrive.quantile(0.99)), "sub-p99-ms")
}
