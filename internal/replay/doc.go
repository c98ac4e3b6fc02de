// Package replay plays stored episodes back out: telemetry, lidar and
// events to an MQTT broker on their original topics, cameras as RTSP
// streams, with the original relative timing scaled by a rate.
//
// # Where samples come from
//
// The daemon holds the store's Pebble lock, so `episoded replay` reads a
// running daemon's episodes over HTTP: SamplesHandler serves
// GET /v1/episodes/{id}/samples as a stream of frames, each a 4-byte
// big-endian length and one CBOR item (fxamacker/cbor/v2): first a Header
// (the episode record, the selected absolute range and every selected
// stream with all its descriptor versions), then every sample in (T,
// stream, seq) order with its exact payload, Seq, T, SrcT, RecvT, flags and
// loss counts, then an end frame with counts. A stream without its end
// frame is truncated (ErrTruncated), never mistaken for a complete one.
// Without a daemon, Open reads the same from a store opened directly
// (StoreOpener). Both paths go through Open, so they select identically:
// a glob (internal/glob: * matches across /) on stream ids and offsets from the start of the
// episode window. A recording episode is refused (ErrRecording): its
// window and data are not final.
//
// # Playing
//
// New checks options and starts nothing; Run plays one replay and blocks
// until it has played (once, or forever with Loop) or ctx is cancelled,
// which is a normal stop. It has two parts. The read-ahead (readahead.go)
// is one goroutine that reads samples ahead of the schedule into a bounded
// channel (ReadAhead samples, ReadAheadBytes of payload); full-rule: the
// reader waits, nothing is dropped, and a slow source shows up as timing
// error. The schedule (schedule.go) runs on Run's own goroutine and sends:
// sample k is due at start + (T_k − From + pass·(To − From)) / Rate,
// waited for with the time package (a timer, then nanosleep for the last
// 1.5 ms); tests run it in a testing/synctest bubble to check the schedule
// exactly. Loop passes reopen the source, so memory stays bounded for any
// episode size.
//
//   - MQTT: QoS 1, not retained, payload bytes unchanged, on the
//     descriptor's Source topic (or the stream id when Source is a filter
//     with wildcards: templated streams), under TopicPrefix/ if set.
//     Publishing is pipelined; acknowledgements are counted per stream and
//     waited for (AckTimeout) before Run returns. A lost connection ends
//     the replay with an error.
//   - RTSP: one stream per camera (devices/rtsp Server, rtsp://ADDR/<stream
//     id>), SDP parameter sets from the descriptor in force at the start.
//     Each camera's video starts at a keyframe: the last one at or before
//     the selected start (pre-roll from the stored timeline), or the first
//     one after it if that one is gone (storage VideoStart). Units are sent
//     in decode order, paced by T (the decode time); RTP timestamps are
//     presentation times (T + PTSOffset, media time, so unscaled by Rate)
//     and RTCP sender reports map them to the original presentation time.
//     Every keyframe that lacks in-band parameter sets gets those of the
//     descriptor version in force prepended (counted), so a reader can
//     start at any keyframe. A unit that cannot be sent is counted as
//     failed and the replay goes on.
//
// # The command
//
// Play is `episoded replay` (cmd/episoded parses the flags and prints the
// summary): it opens the source (a store directory with OpenStore, or the
// daemon's API at SamplesPath), reads the first pass's header before
// anything connects or listens, starts only the sinks the selected streams
// need (an MQTT publisher, an RTSP server), and runs a Player.
//
// # Summary
//
// Run returns a Summary: per stream what was sent, acknowledged, failed or
// skipped (unreadable in the store); and, per sink and overall, p50, p99
// and max of actual minus intended send time, where actual is when the
// sink's write call returned. Timing uses a bounded histogram (1 µs
// resolution below 10 ms), so long looping replays use constant memory.
package replay
