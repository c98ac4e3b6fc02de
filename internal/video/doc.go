// Package video is the one home of episoded's H.264/H.265 handling, shared
// by the camera adapters (devices/rtsp, devices/webrtc), export
// (sync/export), replay (internal/replay) and the clips (assets):
//
//   - Annex-B framing: AnnexB, AppendAnnexB, SplitAnnexB, SplitAU;
//   - the codecs' NAL unit rules (Codec: keyframes, parameter sets, AUD,
//     whether an RTP payload starts an access unit);
//   - parameter sets in front of keyframes: WithParams, used by everything
//     that hands video to a decoder (export, WHEP, RTSP replay);
//   - RTP to access units with one loss rule: Assembler;
//   - decode order: DTS (presentation minus decode offset per access unit,
//     from mediacommon's DTS extractors);
//   - RTCP sender-report time: NTPToUnixNano, UnixNanoToNTP, SenderReport.
//
// It reads and frames bytes and never decodes pictures. Nothing here does
// I/O or reads a clock.
package video
