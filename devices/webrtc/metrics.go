package webrtc

import (
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// counter is a lock-free event counter.
type counter = atomic.Uint64

// Session kinds, as used in metrics, Stats and logs.
const (
	kindWHIP   = "whip"
	kindWHEP   = "whep"
	kindReplay = "replay"
)

// metrics are the server's Prometheus collectors. They exist (and count)
// even when no Registerer is given, so the code never checks for nil.
type metrics struct {
	sessions    *prometheus.GaugeVec   // kind
	viewers     *prometheus.GaugeVec   // stream
	viewerDrops *prometheus.CounterVec // stream
	sentBytes   *prometheus.CounterVec // kind (whep, replay)
	recvBytes   *prometheus.CounterVec // stream
	whipFrames  *prometheus.CounterVec // stream
	whipLost    *prometheus.CounterVec // stream
	whipDropped *prometheus.CounterVec // stream
}

func newMetrics() *metrics {
	return &metrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "episoded_webrtc_sessions",
			Help: "Open WebRTC sessions by kind: whip (ingest), whep (live preview), replay (WHEP replay of an episode).",
		}, []string{"kind"}),
		viewers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "episoded_webrtc_viewers",
			Help: "Live WHEP viewers per stream.",
		}, []string{"stream"}),
		viewerDrops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_webrtc_viewer_dropped_frames_total",
			Help: "Frames not sent to live viewers because a viewer's queue was full (and the frames after it until the next keyframe), summed over the stream's viewers; per-viewer counts are in /v1/status.",
		}, []string{"stream"}),
		sentBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_webrtc_sent_bytes_total",
			Help: "Video payload bytes sent to WHEP viewers (before RTP/SRTP overhead), by kind.",
		}, []string{"kind"}),
		recvBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_webrtc_received_bytes_total",
			Help: "RTP payload bytes received from WHIP publishers, per stream.",
		}, []string{"stream"}),
		whipFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_webrtc_whip_frames_total",
			Help: "Access units from WHIP publishers written to the sink, per stream.",
		}, []string{"stream"}),
		whipLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_webrtc_whip_lost_packets_total",
			Help: "RTP packets lost upstream of WHIP ingest (sequence gaps), per stream.",
		}, []string{"stream"}),
		whipDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_webrtc_whip_dropped_frames_total",
			Help: "WHIP frames discarded by the gateway (incomplete, undecodable until the next keyframe, queue full or refused by the sink), per stream.",
		}, []string{"stream"}),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	cs := []prometheus.Collector{m.sessions, m.viewers, m.viewerDrops, m.sentBytes, m.recvBytes,
		m.whipFrames, m.whipLost, m.whipDropped}
	for i, c := range cs {
		if err := r.Register(c); err != nil {
			for _, done := range cs[:i] {
				r.Unregister(done)
			}
			return fmt.Errorf("register webrtc metrics: %w", err)
		}
	}
	return nil
}
