package sim

import "github.com/prometheus/client_golang/prometheus"

// register adds one counter per stream and figure, read from the same
// atomics Stats reads.
func (s *Sim) register(r prometheus.Registerer) error {
	counter := func(name, help, stream string, v func(StreamStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "episoded_sim_" + name, Help: help,
			ConstLabels: prometheus.Labels{"stream": stream},
		}, func() float64 {
			st, _ := s.Stats(stream)
			return float64(v(st))
		})
	}
	var cs []prometheus.Collector
	for _, id := range s.Streams() {
		cs = append(cs, counter("sent_total", "Frames or messages the simulator sent.", id,
			func(st StreamStats) uint64 { return st.Sent }))
	}
	for _, c := range s.cams {
		cs = append(cs,
			counter("rtp_packets_dropped_total", "RTP packets the simulated camera dropped (loss).", c.stream,
				func(st StreamStats) uint64 { return st.PacketsDropped }),
			counter("frames_affected_total", "Frames with at least one dropped RTP packet.", c.stream,
				func(st StreamStats) uint64 { return st.FramesAffected }),
			counter("outage_frames_total", "Frames captured during an outage and not sent.", c.stream,
				func(st StreamStats) uint64 { return st.OutageFrames }))
	}
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
