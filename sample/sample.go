// Package sample defines the unit of data that flows through episoded: a
// Sample (one access unit, message or frame) on a stream, and the stream's
// Descriptor.
//
// It is a leaf package of plain data types, shared by devices, ingest,
// storage and sync. Every timestamp is int64 nanoseconds since the Unix
// epoch; never time.Time, whose CBOR encoding drops sub-second precision.
package sample

import "slices"

// Flags mark properties of one sample.
type Flags uint8

const (
	// Keyframe marks a video access unit that decodes on its own (IDR/IRAP).
	Keyframe Flags = 1 << iota
	// Discontinuity marks a sample before which data was lost: packets,
	// frames dropped on a full queue, or a reconnect.
	Discontinuity
	// DecodeError marks a payload that could not be decoded as its declared
	// format. The bytes are kept as they arrived.
	DecodeError
	// Refused marks the first sample stored after storage refused samples of
	// the same stream (full or overloaded); set by the pipeline, so that a
	// gap ending at this sample is accounted to storage.
	Refused
	// ArrivalTime marks a sample of a device-clock stream whose T is its
	// arrival time (minus the configured latency) rather than its device
	// time mapped through the stream's clock estimate: its device time was
	// held back (a wild value, a step not yet confirmed, no offset agreed
	// yet), missing, or the stream's clock is on arrival fallback. Its error
	// bound is the arrival bound.
	ArrivalTime
)

// Has reports whether all bits of g are set in f.
func (f Flags) Has(g Flags) bool { return f&g == g }

// Sample is one access unit, message or frame on one stream.
type Sample struct {
	// Stream is the stream id, such as "cell1/cam-top".
	Stream string
	// Seq is assigned at ingest per stream, starting at 1, gapless.
	Seq uint64
	// T is the aligned time on the gateway clock (ns since the Unix epoch).
	// For video it is the decode time: it never decreases along a stream,
	// so that storage, export and replay keep the order the camera sent
	// the frames in (decode order, which differs from presentation order
	// when a stream has B-frames).
	T int64
	// PTSOffset is, for video, the presentation time minus T (ns): the
	// frame's capture time on the gateway clock is T + PTSOffset. 0 for
	// streams without B-frames and for non-video samples. Devices set it to
	// the stream's own PTS - DTS; ingest leaves it as it is and stamps T
	// from the decode time (see ingest.Stream.Process).
	PTSOffset int64
	// SrcT is the device's own timestamp mapped to ns since the Unix epoch,
	// or 0 if the device gives none (yet). For video it is the presentation
	// (capture) time on the device clock.
	SrcT int64
	// RecvT is the arrival time on the gateway clock.
	RecvT int64
	// Flags: keyframe, discontinuity, decode error.
	Flags Flags
	// Lost counts units lost upstream immediately before this sample (RTP
	// packets for video, messages where the source numbers them); 0 if none
	// or unknown. Set together with Discontinuity, so that gap accounting
	// can be done from stored data alone.
	Lost uint32
	// Dropped counts samples the gateway discarded immediately before this
	// one: a full queue, or frames that could not be decoded until the next
	// keyframe. Set together with Discontinuity.
	Dropped uint32
	// Payload holds the bytes of the sample. The receiver of a Sample owns
	// it; producers must not reuse the slice.
	Payload []byte
}

// PTS returns the presentation time: T + PTSOffset.
func (s *Sample) PTS() int64 { return s.T + s.PTSOffset }

// Kind is what a stream carries.
type Kind string

// Stream kinds.
const (
	KindVideo      Kind = "video"
	KindPointCloud Kind = "pointcloud"
	KindTelemetry  Kind = "telemetry"
	KindEvent      Kind = "event"
)

// Codec is the encoding of a stream's payloads.
type Codec string

// Codecs and payload formats.
const (
	CodecH264 Codec = "h264"
	CodecH265 Codec = "h265"
	CodecJSON Codec = "json"
	CodecCBOR Codec = "cbor"
	CodecRaw  Codec = "raw"
)

// ClockMode says where a stream's device time comes from.
type ClockMode string

// Clock modes.
const (
	// ClockDevice: SrcT carries the device clock (RTCP sender reports, or a
	// payload time field) and is mapped onto the gateway clock by an
	// estimator.
	ClockDevice ClockMode = "device"
	// ClockArrival: the sample is stamped RecvT minus the configured latency.
	ClockArrival ClockMode = "arrival"
)

// Descriptor describes one stream. It is stored once and versioned when it
// changes (for example new SPS/PPS).
type Descriptor struct {
	Stream string
	// Version is assigned by storage: 1 for the first descriptor of a
	// stream, incremented each time a different descriptor is stored.
	Version uint32
	Kind    Kind
	Codec   Codec
	// Params holds codec parameter sets in decoding order:
	// H.264 SPS, PPS; H.265 VPS, SPS, PPS.
	Params [][]byte
	// Device is the configured device id.
	Device string
	// Source is the redacted source URL or the MQTT topic.
	Source string
	// Clock is the clock mode and Latency (ns) the configured latency used
	// for arrival stamping.
	Clock   ClockMode
	Latency int64
	// Layout describes point-cloud payloads; nil for other kinds.
	Layout *PointLayout
	// Since is the aligned time from which this version applies; set by the
	// pipeline.
	Since int64
}

// Equal reports whether d and o describe the same stream identically,
// ignoring Version and Since.
func (d Descriptor) Equal(o Descriptor) bool {
	if d.Stream != o.Stream || d.Kind != o.Kind || d.Codec != o.Codec || d.Device != o.Device ||
		d.Source != o.Source || d.Clock != o.Clock || d.Latency != o.Latency {
		return false
	}
	if !slices.EqualFunc(d.Params, o.Params, func(a, b []byte) bool { return string(a) == string(b) }) {
		return false
	}
	switch {
	case d.Layout == nil && o.Layout == nil:
		return true
	case d.Layout == nil || o.Layout == nil:
		return false
	}
	return d.Layout.Equal(*o.Layout)
}

// PointLayout describes the binary layout of a point-cloud frame: an
// optional fixed-size header, then points of Stride bytes each.
type PointLayout struct {
	// HeaderSize is the number of bytes before the first point.
	HeaderSize int
	// Stride is the size of one point in bytes.
	Stride int
	// Fields are the named fields inside one point.
	Fields []PointField
}

// Equal reports whether two layouts are identical.
func (l PointLayout) Equal(o PointLayout) bool {
	return l.HeaderSize == o.HeaderSize && l.Stride == o.Stride && slices.Equal(l.Fields, o.Fields)
}

// PointField is one field within a point.
type PointField struct {
	Name   string
	Offset int
	// Type is one of uint8, int8, uint16, int16, uint32, int32, float32,
	// float64 (little-endian).
	Type string
}
