package mqtt

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/devices"
)

// Stats is a snapshot of a broker's counters.
type Stats struct {
	Broker    string
	State     devices.State
	Connected bool
	// Queued is the number of messages received and not yet handed to the
	// sink; AcksPending the number received and not yet acknowledged.
	Queued      int
	AcksPending int64
	// PendingBytes is the memory those unacknowledged messages are
	// counted for (twice the payload plus 512 B each);
	// PendingBytesMax its high-water mark since NewClient. Both stay at or
	// under ClientOptions.MaxPendingBytes (or one message, if larger).
	PendingBytes, PendingBytesMax int64
	Reconnects                    uint64
	// Overflow counts messages that found the queue full or would have
	// exceeded MaxPendingBytes; Refused those
	// that arrived while draining for a reconnect or shutdown. Neither is
	// acknowledged, so the broker redelivers them on the next connection.
	Overflow, Refused uint64
	// Unmatched counts messages no device or trigger wanted (acknowledged
	// and dropped); Retained counts retained messages re-sent by the broker
	// on subscribe (acknowledged and skipped); Redelivered counts messages
	// carrying the DUP flag.
	Unmatched, Retained, Redelivered uint64
	// Triggers counts trigger messages handed to their callbacks.
	Triggers uint64
	Devices  map[string]DeviceStats
}

// DeviceStats are one device's counters.
type DeviceStats struct {
	// Messages and Bytes count every message routed to the device,
	// including rejected and undecodable ones.
	Messages, Bytes uint64
	// DecodeErrors counts samples kept with sample.DecodeError.
	DecodeErrors uint64
	// Oversize counts payloads over MaxPayload (rejected and acknowledged).
	Oversize uint64
	// WriteErrors counts samples the sink refused or failed to make
	// durable (not acknowledged; redelivered after a reconnect).
	WriteErrors uint64
	// AcksPending counts samples handed to the sink and not yet durable.
	AcksPending int64
	// Streams is the number of streams the device created in this run;
	// RejectedMaxStreams counts messages refused because they would have
	// created more than MaxStreams (acknowledged and dropped).
	Streams            int
	RejectedMaxStreams uint64
}

type deviceCounters struct {
	messages, bytes, decodeErrors, oversize, writeErrors atomic.Uint64
	rejectedMaxStreams                                   atomic.Uint64
	pending                                              atomic.Int64
	streams                                              atomic.Int64
}

type clientCounters struct {
	overflow, refused, unmatched, retained, redelivered, triggers atomic.Uint64
}

// Stats returns a snapshot of the broker's counters.
func (b *Client) Stats() Stats {
	st := b.tracker.Status()
	s := Stats{
		Broker:          b.o.ID,
		State:           st.State,
		Connected:       b.connected.Load(),
		Queued:          len(b.queue),
		AcksPending:     b.pending.Load(),
		PendingBytes:    b.pendingBytes.Load(),
		PendingBytesMax: b.pendingBytesMax.Load(),
		Reconnects:      st.Reconnects,
		Overflow:        b.stats.overflow.Load(),
		Refused:         b.stats.refused.Load(),
		Unmatched:       b.stats.unmatched.Load(),
		Retained:        b.stats.retained.Load(),
		Redelivered:     b.stats.redelivered.Load(),
		Triggers:        b.stats.triggers.Load(),
		Devices:         map[string]DeviceStats{},
	}
	for _, d := range b.devs {
		c := &d.stats
		s.Devices[d.o.Device] = DeviceStats{
			Messages:     c.messages.Load(),
			Bytes:        c.bytes.Load(),
			DecodeErrors: c.decodeErrors.Load(),
			Oversize:     c.oversize.Load(),
			WriteErrors:  c.writeErrors.Load(),
			AcksPending:  c.pending.Load(),

			Streams:            int(c.streams.Load()),
			RejectedMaxStreams: c.rejectedMaxStreams.Load(),
		}
	}
	return s
}

// collector exports a broker's counters to Prometheus. Descriptors carry
// the broker id as a constant label, so several brokers register side by
// side on one registry.
type collector struct {
	b *Client

	messages, bytes, decodeErrors, oversize, writeErrors, devPending *prometheus.Desc
	rejected, streams                                                *prometheus.Desc
	connected, reconnects, queued, pending, overflow, refused        *prometheus.Desc
	pendingBytes                                                     *prometheus.Desc
	unmatched, retained, redelivered, triggers                       *prometheus.Desc
}

func newCollector(b *Client) *collector {
	cl := prometheus.Labels{"broker": b.o.ID}
	dev := []string{"device"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("episoded_mqtt_"+name, help, labels, cl)
	}
	return &collector{
		b:            b,
		messages:     d("messages_total", "MQTT messages routed to a device.", dev),
		bytes:        d("bytes_total", "MQTT payload bytes routed to a device.", dev),
		decodeErrors: d("decode_errors_total", "Payloads kept as raw samples flagged decode_error.", dev),
		oversize:     d("oversize_total", "Payloads over max_payload, rejected and acknowledged.", dev),
		writeErrors:  d("write_errors_total", "Samples the sink refused or failed to make durable; redelivered after a reconnect.", dev),
		devPending:   d("device_acks_pending", "Samples handed to the sink and not yet durable.", dev),
		rejected: d("rejected_total", "Messages refused, acknowledged and dropped, by reason (max_streams: the message would have created more than the device's max_streams streams).",
			[]string{"device", "reason"}),
		streams:      d("device_streams", "Streams the device created in this run (at most its max_streams).", dev),
		connected:    d("connected", "1 while the broker connection is up and subscribed.", nil),
		reconnects:   d("reconnects_total", "Broker sessions that ended and were retried.", nil),
		queued:       d("queue_length", "Messages received and not yet handed to the sink.", nil),
		pending:      d("acks_pending", "Messages received and not yet acknowledged to the broker.", nil),
		pendingBytes: d("pending_bytes", "Memory of the messages received and not yet acknowledged (twice the payload plus 512 B each), bounded by max_pending_bytes.", nil),
		overflow:     d("queue_overflow_total", "Messages that found the queue full or max_pending_bytes reached (not acknowledged; redelivered after a reconnect).", nil),
		refused:      d("refused_total", "Messages refused while draining for a reconnect or shutdown (redelivered).", nil),
		unmatched:    d("unmatched_total", "Messages no device or trigger subscribed to (acknowledged and dropped).", nil),
		retained:     d("retained_skipped_total", "Retained messages re-sent on subscribe (acknowledged and skipped).", nil),
		redelivered:  d("redelivered_total", "Messages carrying the DUP flag (redelivered by the broker).", nil),
		triggers:     d("trigger_messages_total", "Trigger messages handed to their callbacks.", nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.messages, c.bytes, c.decodeErrors, c.oversize, c.writeErrors, c.devPending, c.rejected, c.streams,
		c.connected, c.reconnects, c.queued, c.pending, c.pendingBytes, c.overflow, c.refused, c.unmatched, c.retained, c.redelivered, c.triggers} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for id, ds := range s.Devices {
		counter(c.messages, ds.Messages, id)
		counter(c.bytes, ds.Bytes, id)
		counter(c.decodeErrors, ds.DecodeErrors, id)
		counter(c.oversize, ds.Oversize, id)
		counter(c.writeErrors, ds.WriteErrors, id)
		gauge(c.devPending, float64(ds.AcksPending), id)
		counter(c.rejected, ds.RejectedMaxStreams, id, "max_streams")
		gauge(c.streams, float64(ds.Streams), id)
	}
	conn := 0.0
	if s.Connected {
		conn = 1
	}
	gauge(c.connected, conn)
	counter(c.reconnects, s.Reconnects)
	gauge(c.queued, float64(s.Queued))
	gauge(c.pending, float64(s.AcksPending))
	gauge(c.pendingBytes, float64(s.PendingBytes))
	counter(c.overflow, s.Overflow)
	counter(c.refused, s.Refused)
	counter(c.unmatched, s.Unmatched)
	counter(c.retained, s.Retained)
	counter(c.redelivered, s.Redelivered)
	counter(c.triggers, s.Triggers)
}

// rateLog lets one log line per key through per interval and counts the
// rest, so that a flood of bad payloads costs counters, not log volume.
type rateLog struct {
	every time.Duration
	mu    struct {
		sync.Mutex
		last       map[string]time.Time
		suppressed map[string]int
	}
}

func newRateLog(every time.Duration) *rateLog {
	r := &rateLog{every: every}
	r.mu.last = map[string]time.Time{}
	r.mu.suppressed = map[string]int{}
	return r
}

// allow reports whether a line for key may be logged now, and how many were
// suppressed since the last one.
func (r *rateLog) allow(key string) (bool, int) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if last, ok := r.mu.last[key]; ok && now.Sub(last) < r.every {
		r.mu.suppressed[key]++
		return false, 0
	}
	if len(r.mu.last) > 1024 { // keys are device/kind pairs; bound anyway
		clear(r.mu.last)
		clear(r.mu.suppressed)
	}
	n := r.mu.suppressed[key]
	delete(r.mu.suppressed, key)
	r.mu.last[key] = now
	return true, n
}
