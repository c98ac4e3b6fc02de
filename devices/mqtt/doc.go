// Package mqtt records robot telemetry (joint states, tool poses, I/O,
// alarms) and lidar frames from MQTT brokers, with no message lost across
// broker restarts and daemon crashes. It uses
// github.com/eclipse/paho.mqtt.golang (MQTT 3.1.1).
//
// # Lifecycle
//
// A Client is one client connection to one broker. NewClient checks
// options and starts nothing. AddDevice and AddTrigger
// are called before Run. Run(ctx, sink) blocks until ctx is cancelled; it
// reconnects forever through devices.Supervise (one paho client per
// connection attempt, paho's own auto-reconnect is off). Several devices
// and triggers share the one connection per broker.
//
// Goroutines while running: paho's (socket reader, which also takes QoS 0
// and 1 PUBLISH packets off the stream for the Client, see below; comms,
// router, writer, keepalive), one worker
// that routes, decodes and writes to the sink in arrival order, one acker
// that sends acknowledgements (writing them to the socket itself unless a
// flush is under way), and the connection's write flusher (conn.go). The acker writes the PUBACKs of the current session's QoS 1
// messages straight to the connection, a batch per write, bypassing
// paho's per-message Ack (a packet object and two goroutine hand-offs
// each); paho keeps no state for them, since its store is a no-op.
//
// # No loss: QoS 1, persistent session, acknowledge when durable
//
//   - Every filter is subscribed at QoS 1 with CleanSession=false and a
//     stable client id, so the broker queues messages while the daemon is
//     away. Subscriptions are (re)made in paho's OnConnect handler on every
//     connection; they carry no callback. Every message is taken exactly
//     once, from the connection (QoS 0 and 1) or by paho's default publish
//     handler (QoS 2), including messages the broker resends before the
//     subscription completes.
//   - Acknowledgements are manual (SetAutoAckDisabled). A message is acked
//     only after the sink's done callback reports its sample durable
//     (devices.Sink.Write). A crash therefore loses nothing the broker has
//     not been told is safe: unacknowledged messages are resent by the
//     broker on the next connection (MQTT 3.1.1 §4.4), with the DUP flag.
//   - Duplicates are possible and are the price of no loss: a sample that
//     became durable but whose PUBACK did not reach the broker (crash,
//     connection loss) is stored again when redelivered. They are counted
//     (Stats.Redelivered counts DUP messages). When a reconnect finds the
//     session present, messages of the old connection still queued here are
//     dropped instead of stored, because the broker resends them.
//   - Retained messages (re-sent by the broker on every resubscribe) are
//     acknowledged and skipped: they are old state, not new samples.
//   - Messages matching no device or trigger (for example a filter removed
//     from the config but still in the persistent session) are acknowledged,
//     counted as unmatched and dropped. To get rid of stale subscriptions,
//     change the client id.
//   - A topic matching several devices (or a device and a trigger) is
//     delivered to each and acknowledged once all are done. Note that
//     mosquitto sends one copy per matching subscription of a client
//     (allow_duplicate_messages is true by default), so overlapping filters
//     produce duplicate samples; avoid them.
//
// Broker side: the no-loss argument assumes the broker keeps the session's
// unacknowledged messages across the reconnect. mosquitto does (tested by
// TestDaemonCrash). The embedded mochi-mqtt broker of `demo` and
// `simulate` lost about one message per daemon restart to a race in its
// session takeover; internal/sim's package doc gives the root cause and
// the fix, and TestEmbeddedBrokerDaemonCrash proves 0 lost over 50
// SIGKILLs. mochi also resends a session's in-flight messages in no
// particular order within a second, so samples of a stream can arrive out
// of device-time order after a restart; the store keeps them.
//
// # Backpressure, the queue and its full-rule
//
// QoS 0 and 1 PUBLISH packets never go through paho: the connection paho
// reads from (conn.go, bufferedConn.Read) parses them off the stream and
// hands them to the Client on paho's socket-reader goroutine; every other
// packet (CONNACK, SUBACK, UNSUBACK, PINGRESP, QoS 2 flows) is passed
// through to paho unchanged. paho chained socket reader, comms, router and
// handler by unbuffered channels, three goroutine hand-offs and several
// allocations per message, most of the daemon's CPU per message at
// saturation. Order is kept: one goroutine reads the socket and enqueues.
// If that goroutine blocked, the socket would go unread, so PINGRESPs
// would go unread and the connection would time out. It therefore never
// blocks: it puts the message on the Client's bounded queue (QueueSize)
// and returns.
//
// Backpressure is applied by withholding acknowledgements. A broker is
// supposed to send at most its in-flight window of unacknowledged QoS 1
// messages to a client (mosquitto: max_inflight_messages, default 20, 0 =
// unlimited; MQTT 5's Receive Maximum is not available in paho v1, which
// speaks 3.1.1) and queue the rest on its side (mosquitto:
// max_queued_messages, default 1000, after which it DROPS messages for the
// offline/slow client; set it to 0 or large).
//
// The broker's window does NOT bound what the daemon holds. In the MQTT
// benchmark mosquitto 2.0.11 was seen sending 15,000 messages at once
// after a burst of acknowledgements, and the daemon then held up
// to 35,000 unacknowledged messages; a broker may also simply ignore its
// window. What bounds memory is MaxPendingBytes (config
// brokers[].max_pending_bytes, default 64 MiB): every message received
// and not yet acknowledged (in the queue, in the sink waiting for its
// commit, or waiting to be acked) is counted as twice its payload (the
// received packet and the store's encoded copy, kept until the commit)
// plus 512 B, and a message that would take the count past the limit is
// not taken (one message is always taken when nothing is held, so a
// single payload larger than the limit still gets through).
// Stats.PendingBytes and the episoded_mqtt_pending_bytes gauge show the
// count; Stats.PendingBytesMax its high-water mark.
// TestMaxPendingBytesHoldsAgainstAFlood proves the bound with a server
// that ignores its window: the count never exceeds the limit, and no
// message beyond it is acknowledged until the sink has drained.
// QueueSize (20,000 messages) separately bounds the messages waiting for
// the worker. The store's own MaxPending (storage.Options, 256 MiB, not a
// config key) bounds what all devices together queue for a commit; for
// small MQTT messages it is no bound worth the name (256 MiB is about a
// million 200 B messages), hence MaxPendingBytes.
//
// Full-rule: if a message finds the queue full or would exceed
// MaxPendingBytes, it is not acknowledged and is counted as overflow. The
// broker then stops taking messages (they are refused, not
// acknowledged), still stores what is queued (accepted, in order, before
// the refused message), waits up to DrainTimeout for
// the samples already in the sink to become durable and acknowledged,
// confirms with an UNSUBSCRIBE round trip (of a filter never subscribed)
// that the broker has applied every PUBACK — closing a socket with unread
// inbound data sends a TCP RST, on which the broker discards PUBACKs it has
// not read — and reconnects. The broker redelivers everything unacknowledged, in order, so
// nothing is lost and each cycle stores at least what was queued. The same
// happens when the sink refuses a sample or reports it failed to become
// durable, except that what is still queued is then dropped (redelivered
// after the failed one), as it is on shutdown.
//
// Sizing: throughput ≤ window / (time to durable), and also ≤
// MaxPendingBytes / (2 × payload + 512 B) / (time to durable). With storage
// syncing every 100 ms, 50,000 msg/s needs a window of at least 5,000:
// set mosquitto max_inflight_messages to a few thousand (below QueueSize,
// default 20000). With the mosquitto default of 20 a client
// that acks on durability gets about 200 msg/s. The default 64 MiB holds
// about 70,000 messages of 200 B or 30 lidar frames of 1 MiB: raise it
// only for large frames at a high rate, and set the broker's window so
// that window × (2 × payload + 512 B) stays below it, so that the
// full-rule (which costs a reconnect) does not fire in normal operation.
//
// QoS: messages are subscribed at QoS 1, but a publisher that sends at QoS 0
// gets QoS 0 delivery (the broker downgrades); such messages have no ack and
// can be lost in a crash. Publish telemetry at QoS 1.
//
// A sample the sink keeps refusing (for example a full store under the
// reject-new policy) is redelivered after each reconnect, with backoff; the
// broker holds the backlog meanwhile.
//
// # Shutdown
//
// On cancel, Run stops taking messages, waits up to DrainTimeout for the
// samples already handed to the sink to become durable (the sink must keep
// running meanwhile: stop devices before storage), acknowledges them,
// confirms the acknowledgements with the same round trip, disconnects and
// returns. Messages not yet handed to the sink are
// left to the broker.
//
// # Payloads
//
// Each device has a Format:
//
//   - json: the payload must be valid JSON. With TimeField (a dotted path
//     such as "header.stamp"; numeric elements index arrays) the value is
//     read as a number in TimeUnit s, ms, us or ns (decimals are scaled
//     exactly, without float64 rounding), as an RFC 3339 string when
//     TimeUnit is rfc3339, or as a ROS stamp object {sec|secs,
//     nanosec|nsec|nsecs}. The sample gets SrcT (ns) and the descriptor
//     Clock device.
//   - cbor: the same, on well-formed CBOR, decoded with limits on nesting
//     (32), array length and map pairs (65536 each); tags 0 and 1 (RFC 3339
//     and epoch time) are read as times.
//   - raw: opaque bytes.
//   - pointcloud: one lidar scan frame per message, see below.
//
// Without a time field, SrcT is 0 and the descriptor says Clock arrival
// with the configured Latency; the ingest pipeline stamps RecvT − Latency.
//
// Bad input is kept: a payload that is not valid JSON or CBOR, lacks the
// time field or has one of the wrong type is stored as it arrived, flagged
// sample.DecodeError with SrcT 0, counted (decode_errors) and logged at
// most once per 10 s per device. A payload over MaxPayload (default 16
// MiB) is rejected: counted (oversize), logged, and acknowledged — were it
// not acknowledged the broker would resend it on every connection forever,
// and it could never be stored anyway.
//
// # Point clouds (lidar)
//
// A frame is a header of Layout.HeaderSize bytes followed by k points of
// Layout.Stride bytes (k ≥ 0). TimeOffset ≥ 0 is the byte offset in the
// header of a little-endian int64 capture time in ns since the Unix epoch
// (it must fit in the header); -1 stamps frames on arrival. Each point has
// Layout.Fields, each a name, a byte offset inside the point and a
// little-endian type: uint8, int8, uint16, int16, uint32, int32, float32 or
// float64 — the numeric types of foxglove.PointCloud, so export can write
// it directly. Typical layouts:
//
//   - x, y, z float32 at 0, 4, 8 and intensity float32 at 12, stride 16;
//   - Ouster/Velodyne style x, y, z, intensity float32 plus ring uint16
//     and a per-point time offset uint32 or float32, stride 24 or 32;
//   - x, y, z float64 at 0, 8, 16, stride 24.
//
// The layout goes into the stream descriptor (Kind pointcloud, Codec raw,
// Descriptor.Layout). The frame is stored whole. A frame whose length is
// not HeaderSize + k*Stride, or whose header time is not positive, is kept
// with sample.DecodeError.
//
// # Streams
//
// The stream name comes from the device's template: {topic} is the full
// topic, {1}, {2}, ... its levels counted from 1 (a missing level expands
// to nothing). A stream is described to the sink before its first sample.
// Its descriptor's Source is the topic when the template contains {topic},
// else the topic filter that matched.
//
// Limit: a device creates at most MaxStreams streams per run (default 256;
// config max_streams). Without it a {topic} device on a wildcard filter
// lets any publisher make the daemon hold state, status rows and metric
// series for every topic it invents (20,000 topics in a second took RSS
// from 52 MB to 1.5 GB). A message that would create one stream more is
// refused before it is decoded: counted (episoded_mqtt_rejected_total
// {reason="max_streams"}), logged at most once per 10 s, and acknowledged,
// since the broker would otherwise redeliver it forever. Streams already
// created keep recording. TestTopicFlood (cmd/episoded) floods the built
// daemon with 20,000 topics through mosquitto and checks its peak RSS.
//
// # Triggers
//
// AddTrigger subscribes a per-cell trigger topic and calls fn(payload,
// recvT) from the worker goroutine, never paho's; the message is
// acknowledged after fn returns.
//
// # Metrics and status
//
// Prometheus metrics episoded_mqtt_* carry a broker label (and a device
// label where per device): messages, bytes, decode errors, oversize, write
// errors, rejected (by reason), streams, acks pending, queue length, overflow, refused, unmatched,
// retained skipped, redelivered, trigger messages, reconnects and connected.
// Status returns the connection state for /v1/status. No password reaches a
// log line, an error or a status field; URLs are redacted.
package mqtt
