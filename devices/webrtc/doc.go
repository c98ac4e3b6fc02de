// Package webrtc is episoded's WebRTC adapter: WHIP ingest (a WebRTC
// publisher becomes a recorded camera stream), WHEP live preview of any
// live H.264 stream, and WHEP replay of a stored episode. It uses pion and
// never transcodes.
//
// Lifecycle: NewServer validates options and registers metrics but binds
// nothing. Run(ctx, sink) builds the ICE configuration (and binds the
// optional shared UDP port), serves sessions until ctx is cancelled, then
// closes every session and waits for it. Before Run, and after it
// returns, every POST answers 503. The HTTP routes are mounted by the
// daemon (Mount lists them); bearer-token auth is the API server's job.
//
// ICE is LAN-only: host candidates (no STUN, no TURN), UDP over IPv4, no
// mDNS, on the configured interfaces (default: all but loopback),
// optionally all multiplexed on one UDP port. Answers are sent only after
// candidate gathering completes (no trickle ICE; PATCH is not served). A
// session whose peer has not connected 30 s after the answer is ended, as
// is one whose connection fails (ICE: 5 s to disconnected, 10 s more to
// failed).
//
// WHIP ingest: only streams added with AddWHIPStream are accepted, one
// publisher each (a second gets 409 until the first session ends or is
// DELETEd; a publisher that vanishes without DELETE holds the stream until
// ICE fails, about 15 s). Publishing needs the API's bearer token when one
// is configured (enforced by internal/api, like every mutating request);
// without a token, anyone who can reach the API port may publish to a
// configured WHIP stream, so keep the default loopback bind or set one. RTP (H.264, RFC 6184) is assembled into access units by
// gortsplib's decoder, stored Annex-B with a Keyframe flag; SPS/PPS seen
// in-band go into the Descriptor, which is re-described whenever they
// change. The first sample after connect or after any loss is a keyframe;
// a PLI asks the publisher for one while frames are being discarded. SrcT
// is the RTP timestamp mapped through the latest RTCP sender report (0
// until the first report). Sequence gaps set Discontinuity and Lost;
// frames discarded until the next keyframe are counted in Dropped. The RTP
// reader never blocks: it hands units to the session's writer goroutine
// (the only caller of the Sink) through a bounded queue, and when that is
// full the unit and everything up to the next keyframe is dropped and
// counted. After a sequence gap the reader NACKs the missing packet and
// holds the following ones for up to ReorderWait (150 ms), so a
// retransmission or a reordered packet is put back in place; only then is
// the gap counted as loss.
//
// WHEP preview: the Hub is the live tap. The pipeline calls Publish for
// every video sample; it never blocks. Each viewer has a bounded queue;
// when it is full that viewer drops frames until the next keyframe, and
// the drops are counted per viewer (Stats) and per stream (metrics). The
// last keyframe of each stream is cached: a new viewer gets it at once,
// then the live stream from the next keyframe. Parameter sets from the
// Descriptor are put in front of every IDR that lacks them. RTP
// timestamps follow the samples' presentation times (T + PTSOffset). H.265 streams answer 415.
//
// WHEP replay reads an episode from an episodeSource (storage.Store) in
// chunks of ReplayChunk, starts at the last keyframe at or before the
// offset (pre-roll; the first one after it if that one is gone, see
// storage VideoStart), sends every keyframe with its parameter sets,
// paces by T in real time, and closes the session after the end.
package webrtc
