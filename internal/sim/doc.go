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
//     assets.H264AccessUnits() (120 access units, an IDR every 30) with
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
// is full the library drops for that client; the simulator does not block
// or slow down.
package sim
