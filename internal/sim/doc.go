// Package sim is a simulated factory cell: RTSP cameras looping the clip
// in package assets, and an embedded MQTT broker (mochi-mqtt) carrying a
// six-axis robot's joint states, a gripper's state, lidar point clouds and
// episode triggers. `episoded simulate` serves it for any client to record;
// `episoded demo` and end-to-end tests record it and compare what they
// stored against its ground truth.
//
// # What it serves
//
//   - rtsp://ADDR/cam1 ... /camN: H.264 (packetization mode 1) at 30 fps
//     over RTSP/TCP (interleaved; UDP is not offered), looping
//     assets.H264AccessUnits() (120 access units, an IDR every 30; or
//     Options.Clip) with
//     continuous RTP timestamps (+3000 per frame at 90 kHz, across loops
//     and outages) and sequence numbers. The server's own sender reports
//     are disabled; each camera sends RFC 3550 sender reports mapping RTP
//     time to its own (offset+drift) clock every SRPeriod, and after each of
//     the first three frames that follow a PLAY, so a new client gets
//     absolute time at once.
//   - MQTT topics (QoS 1 by default, not retained):
//     cell1/robot1/joint_states (JSON, 200 Hz), cell1/gripper/state (CBOR,
//     50 Hz), cell1/lidar/points (10 Hz, 16-byte header then 16-byte
//     points: ~100 KB), cell1/episode/trigger (JSON start/stop cycle).
//
// # Clocks and ground truth
//
// True time is the wall clock of this process, which a recorder on the
// same machine uses as its gateway clock. Every device has its own Clock:
// d(t) = t + offset + floor((t − t0)·ppb/1e9), all int64 ns, with t0 the
// start of Run (see Clock). A device samples on its own clock: sample k of
// a stream is captured when the device reads D_k = D_0 + k·period (video:
// D_0 + k·1e9/30 exactly, floored to the ns), that is at true time
// inv(D_k), and D_0 = d(t0). The sample carries D_k (in the payload for
// MQTT; for video via the RTP timestamp and the sender reports' mapping),
// and is sent after a random delay (Options.Jitter), never before an
// earlier sample of the same device.
//
// Truth(stream, deviceT) returns the true capture time of the sample a
// recorder sees with SrcT = deviceT. Truth is computed, not stored, so it
// costs no memory however long the simulator runs. Stats counts what was
// sent, dropped or withheld per stream, and Losses lists the RTP packets a
// camera dropped.
//
// # Lifecycle
//
// New validates options and starts nothing. Run binds both listeners,
// closes Ready, serves, and blocks until its context is cancelled; then it
// stops the devices first and the servers after. A Sim runs once.
//
// Nothing here queues: each device is one goroutine that sleeps until its
// next sample is due and hands it to the library (gortsplib's per-client
// write queue, mochi's per-client outbound buffer). When a client's queue
// is full the library drops for that client (RTSP: counted in
// QueueDrops); the simulator does not block or slow down.
//
// # The embedded broker under SIGKILL
//
// Issue 13 measured that, under 294 SIGKILLs of the recording daemon, this
// broker lost 40 of 150,217 QoS 1 messages it had accepted from the
// simulated devices (mosquitto lost none). "Accepted" here means that the
// inline client's Publish returned nil: the simulated devices publish
// through mochi's inline client, in this process, so there is no PUBACK;
// mochi treats the message as delivered to the broker, and hands it to
// each QoS 1 subscriber's session (its in-flight map) before Publish
// returns. The broker lost them, not the
// daemon: TestEmbeddedBrokerDaemonCrash (devices/mqtt) records, through a
// mochi hook, what the broker did with every message, and each missing
// one had been sent once to the killed connection, never acknowledged,
// never dropped by a counted path and never resent.
//
// Root cause, a race in mochi-mqtt v2.7.9's session takeover
// (server.go attachClient and inheritClientSession): when the daemon
// reconnects with its persistent session, mochi copies the old
// connection's in-flight messages into the new client, clears the old
// client's, and only then registers the new client under the client id
// (Clients.Add). A publish that runs in between looks the subscriber up
// by id, gets the old, dead connection, and adds the message to its
// in-flight map after the copy was taken: the message is then held by an
// object nobody refers to and is never delivered. The window grows with
// the backlog being copied, so it is hit about once per restart under
// load. In `demo` the broker shares the daemon's process, so a SIGKILL
// ends the broker and the simulated devices with it (like a power cut
// of the whole cell); the race matters for `simulate` and any setup where
// the broker outlives the recorder.
//
// Fix, without patching the library: Broker.Publish (the inline client,
// which every simulated device and the trigger use) holds a read lock,
// and a hook takes the write lock from OnSessionEstablish (before the
// copy) until the new client's CONNACK is encoded (after Clients.Add).
// Publishes wait out the takeover, which usually takes well under a
// millisecond. Should mochi never encode the CONNACK (the new connection
// closed first), the gate opens once the new client is registered under
// the id, checked every 5 s. It must not open on the clock alone: the
// gate used to open after a fixed 5 s, and a takeover slower than that
// (a loaded machine: race detector, two busy loops beside make test,
// thousands of in-flight messages to copy and clear) then let the
// publishers' burst, held back for those 5 s, into the old connection:
// acknowledged to the publisher, never delivered. That is the signature
// of the 1,119 messages TestEmbeddedBrokerDaemonCrash lost under a CPU
// hog (each sent once to one connection, never resent, acknowledged or
// dropped); TestPublishDuringSlowTakeover reproduces the mechanism
// deterministically. Messages that external clients publish
// into the embedded broker are not gated (mochi offers no hook that
// brackets their fan-out reliably); for real devices use mosquitto.
//
// Limits: the broker keeps up to 65,535 unacknowledged QoS 1 messages per
// session (the whole packet-id space; mochi's default of 8,192 is only
// 30 s of this cell while the recorder is down) and a client outbound
// queue of 65,536 (mochi drops a QoS 1 message that finds it full). Both
// drops are counted in mochi's $SYS info (InflightDropped,
// MessagesDropped), which the kill-loop test checks are 0. Persistence
// (mochi's bolt, badger or pebble storage hooks) is not used: the broker
// lives as long as the simulated devices, whose samples would be lost
// with their process anyway, and those hooks would add a second
// key-value store (and for pebble a second, incompatible major version)
// to the module.
package sim
