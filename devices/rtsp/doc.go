// Package rtsp records RTSP cameras (H.264 and H.265) as sample streams.
//
// A Camera is created with New (which validates and starts nothing) and runs
// with Run(ctx, sink), which blocks until ctx is cancelled. Each connection
// is one session under devices.Supervise: any error, a 401, an SDP without
// H.264/H.265, or ReadTimeout without an RTP packet ends the session, and
// a fresh gortsplib client with fresh depacketizers reconnects after
// exponential backoff with jitter. Status and Stats report the state.
//
// # Samples
//
// One access unit becomes one sample. The payload is Annex-B: every NAL unit
// of the access unit, in order, each preceded by a 4-byte start code
// (00 00 00 01), including any in-band parameter sets and SEI; the RTP
// framing (STAP-A, FU-A, AP, FU) is removed. Keyframe is set for IDR (H.264)
// or IRAP (H.265) access units. Parameter sets (SPS/PPS, and VPS for H.265)
// are taken from the SDP and from the stream; the descriptor is sent with
// sink.Describe before the first sample of every session and again whenever
// a parameter set changes (one slot per kind: the last SPS, PPS, VPS seen).
//
// # Time
//
// RecvT is the arrival time of the packet that completed the access unit.
// With clock "rtcp", SrcT is the access unit's RTP timestamp (its
// presentation time) mapped through the latest RTCP sender report, as ns
// since the Unix epoch; before the first sender report SrcT is 0 and the pipeline stamps
// RecvT - Latency, switching when SrcT becomes non-zero. With clock
// "arrival" SrcT is always 0. The descriptor carries Clock and Latency.
// Sender reports are decoded by this package, per RFC 3550 (the NTP
// fraction is in 1/2^32 s, internal/video.NTPToUnixNano): gortsplib
// v4.16.2's PacketNTP reads the fraction as nanoseconds, which is wrong by
// up to 3.3 s against real cameras and ffmpeg, so it is not used. A report
// applies only to the SSRC it names.
//
// Decode order: samples are written in the order the camera sent them
// (decode order). PTSOffset is the access unit's presentation time minus
// its decode time, from mediacommon's DTS extractor (0 without B-frames);
// ingest feeds the clock the decode time SrcT - PTSOffset, stamps T as the
// aligned decode time (never decreasing), and T + PTSOffset is the
// presentation time.
//
// # Loss and the queue
//
// gortsplib's reader goroutine only depacketizes and never blocks: access
// units go through a bounded queue (QueueSize) to the Camera's own writer
// goroutine, the only caller of the sink. Full-rule: when the queue is full
// the access unit is dropped and counted, and every following unit is
// dropped until the next keyframe.
//
// # The read path
//
// The connection is read through a 72 KiB buffer (conn.go). Over TCP on a
// plain rtsp:// connection, with H.264 in a one-format media, RTP packets
// of the video channel are parsed in place from that buffer, on the same
// reader goroutine, and handed to the assembler without gortsplib (which
// allocates and copies every packet twice); gortsplib still gets every
// other message (RTCP, RTSP responses and requests) and one RTP packet in
// every 500 ms, so its session timeout and keep-alives work as before. The
// connection follows message boundaries from its first byte and, on any
// byte sequence it does not recognise, passes everything to gortsplib from
// then on. UDP, rtsps:// and H.265 go through gortsplib's callbacks.
// RTCP receiver reports: gortsplib v4.16.2 sends them only over UDP, where
// it sees every packet; over a tapped TCP session it sends none (and the
// connection drops any it would write on the tapped media's RTCP channel,
// which would describe only the packets gortsplib saw).
//
// The assembler (RTP to access units, its loss rule and the DTS
// extraction) is internal/video.Assembler, shared with devices/webrtc.
//
// Invariants: no partial access unit is ever stored. An RTP sequence gap or
// a depacketization error discards the unfinished unit and resumes at the
// next packet that starts an access unit. The first sample stored after
// connecting, after any loss and after any drop is a keyframe; everything
// discarded before it is counted in that sample's Lost (RTP packets) and
// Dropped (frames), with Discontinuity set. A reconnect is one gap: the
// first sample of the new session has Discontinuity. When a stream carries
// its parameter sets in band, a keyframe that arrives right after a gap
// without them is taken to have lost its first packets and is dropped too.
//
// Credentials (inline in the URL, or Username/Password) never reach logs,
// errors, Status or descriptors: URLs are redacted and library error text is
// scrubbed of the password.
package rtsp
