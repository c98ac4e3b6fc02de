package lifecycle

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/ingest"
)

// streamCollector exports every stream's sample counter and clock figures,
// read at scrape time under each stream's own lock (nothing is done per
// sample). Labels are the stream id (and its kind, or an event kind or a
// clock source from small fixed sets), so the series grow only with the
// number of streams, which devices' max_streams bounds. Units are
// Prometheus base units: seconds, and ratios for the drift.
type streamCollector struct {
	p *Sink

	samples, bytes, held, reordered  *prometheus.Desc
	offset, drift, bound, jitter     *prometheus.Desc
	converged, source, events, jumps *prometheus.Desc
	outliers                         *prometheus.Desc
}

func newStreamCollector(p *Sink) *streamCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append([]string{"stream"}, labels...), nil)
	}
	return &streamCollector{
		p:         p,
		samples:   d("episoded_stream_samples_total", "Samples ingested per stream (every kind).", "kind"),
		bytes:     d("episoded_stream_bytes_total", "Payload bytes ingested per stream.", "kind"),
		held:      d("episoded_stream_clock_held_samples_total", "Samples whose device time the clock held back (wild, or a step not yet confirmed) and stamped from arrival."),
		reordered: d("episoded_stream_reordered_samples_total", "Samples whose aligned time was raised to their predecessor's so that a stream's time never goes back."),
		offset:    d("episoded_stream_clock_offset_seconds", "Aligned gateway time minus device time at the last sample (minus the latency on arrival time)."),
		drift:     d("episoded_stream_clock_drift_ratio", "Device clock rate error relative to the gateway clock (1e-6 is 1 ppm; positive: device fast)."),
		bound:     d("episoded_stream_clock_error_bound_seconds", "Bound on the alignment error of the stream's last sample."),
		jitter:    d("episoded_stream_clock_jitter_seconds", "Mean delay above the clock's lower envelope."),
		converged: d("episoded_stream_clock_converged", "1 when the device clock estimate has converged."),
		source:    d("episoded_stream_clock_source", "1 for the stream's current clock source (device or arrival), 0 for the other.", "source"),
		events:    d("episoded_stream_clock_events_total", "Clock events per stream by kind (jump, device_time, arrival_time, mode, clock_untrusted, clock_trusted).", "kind"),
		jumps:     d("episoded_stream_clock_jumps_total", "Steps of the device clock detected (including while on arrival fallback)."),
		outliers:  d("episoded_stream_clock_outliers_total", "Device timestamps held back and never confirmed (wild values)."),
	}
}

func (c *streamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.samples, c.bytes, c.held, c.reordered, c.offset, c.drift, c.bound, c.jitter,
		c.converged, c.source, c.events, c.jumps, c.outliers} {
		ch <- d
	}
}

func (c *streamCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.p.Status() {
		counter := func(d *prometheus.Desc, v uint64, l ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{s.Stream}, l...)...)
		}
		gauge := func(d *prometheus.Desc, v float64, l ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{s.Stream}, l...)...)
		}
		kind := string(s.Kind)
		counter(c.samples, s.Counters.Samples, kind)
		counter(c.bytes, s.Counters.Bytes, kind)
		counter(c.held, s.Counters.ClockHeld)
		counter(c.reordered, s.Counters.Reordered)
		gauge(c.offset, float64(s.Clock.OffsetNs)/1e9)
		gauge(c.drift, s.Clock.DriftPPM/1e6)
		gauge(c.bound, float64(s.Clock.ErrorBoundNs)/1e9)
		gauge(c.jitter, float64(s.Clock.JitterNs)/1e9)
		gauge(c.converged, b2f(s.Clock.Converged))
		gauge(c.source, b2f(s.Clock.Source == ingest.SourceDevice), ingest.SourceDevice)
		gauge(c.source, b2f(s.Clock.Source == ingest.SourceArrival), ingest.SourceArrival)
		for k, n := range s.Clock.Events {
			counter(c.events, n, k)
		}
		counter(c.jumps, s.Clock.Jumps)
		counter(c.outliers, s.Clock.Outliers)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
