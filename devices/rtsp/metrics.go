package rtsp

import (
	"fmt"
	"math"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
)

// register adds the camera's metrics to r, labelled device and stream. They
// read the same counters as Stats, so the two always agree.
func (c *Camera) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	labels := prometheus.Labels{"device": c.o.Device, "stream": c.o.Stream}
	counter := func(name, help string, v func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "episoded_rtsp_" + name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v()) })
	}
	gauge := func(name, help string, l prometheus.Labels, v func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "episoded_rtsp_" + name, Help: help, ConstLabels: l,
		}, v)
	}
	cs := []prometheus.Collector{
		counter("frames_total", "Access units written to the sink.", c.cnt.frames.Load),
		counter("bytes_total", "Payload bytes written to the sink (Annex-B).", c.cnt.bytes.Load),
		counter("keyframes_total", "Keyframes written to the sink.", c.cnt.keyframes.Load),
		counter("dropped_frames_total", "Frames discarded by the gateway: queue full, sink refusal, or undecodable until the next keyframe.", c.cnt.asm.Dropped.Load),
		counter("lost_packets_total", "RTP packets lost upstream (sequence gaps).", c.cnt.asm.Lost.Load),
		counter("decode_errors_total", "RTP packets or access units that could not be decoded.", c.cnt.asm.DecodeErrors.Load),
		counter("reconnects_total", "Sessions that ended and were retried.", func() uint64 { return c.tracker.Status().Reconnects }),
		gauge("fps", "Frames written per second, over the last second.", labels, func() float64 { return math.Float64frombits(c.cnt.fpsBits.Load()) }),
		gauge("payload_bytes_per_second", "Payload bytes written per second, over the last second.", labels, func() float64 { return math.Float64frombits(c.cnt.bitrateBits.Load()) / 8 }),
	}
	for _, st := range []devices.State{devices.Connecting, devices.Streaming, devices.Backoff, devices.Stopped} {
		l := prometheus.Labels{"device": c.o.Device, "stream": c.o.Stream, "state": string(st)}
		cs = append(cs, gauge("state", "1 for the camera's current connection state, else 0.", l, func() float64 {
			if c.tracker.Status().State == st {
				return 1
			}
			return 0
		}))
	}
	for i, col := range cs {
		if err := r.Register(col); err != nil {
			for _, done := range cs[:i] {
				r.Unregister(done)
			}
			return fmt.Errorf("register rtsp metrics for device %s: %w", c.o.Device, err)
		}
	}
	c.reg, c.metrics = r, cs
	return nil
}

// Unregister removes the camera's metrics from the Registerer given to New,
// so that a camera with the same device and stream can be created again
// (for example after a configuration reload). It is safe to call more than
// once, and while Run is running.
func (c *Camera) Unregister() {
	if c.reg == nil {
		return
	}
	for _, col := range c.metrics {
		c.reg.Unregister(col)
	}
}
