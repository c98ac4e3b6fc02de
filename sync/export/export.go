// Package export writes an episode as one MCAP file that robotics teams can
// open at once in Foxglove or any MCAP reader.
//
// Layout of the file (github.com/foxglove/mcap/go/mcap):
//
//   - Header with the fixed library string "episoded" (no version or clock
//     in it), then one Metadata record named "episode" whose values are
//     JSON: "manifest" (the episode's identity, window and streams) and
//     "quality" (the per-stream quality report), and "verdict" (ok or
//     degraded, with reasons) when the episode has one; then the attachments
//     (calibration, URDF) named by the caller, stamped with the episode
//     start time, in the order given.
//   - Chunked, zstd-compressed (one encoder goroutine, fixed chunk size),
//     indexed data with CRCs, messages in log-time order as storage merges
//     them: (T, stream, seq). log_time is the aligned time T, publish_time
//     the device time SrcT where known (else T), sequence the stream seq.
//     For video T is the decode time, so log-time order is decode order
//     (the order the camera sent the frames), and the CompressedVideo
//     timestamp is the presentation time T + PTSOffset: the capture time on
//     the gateway clock, within the stream's stated alignment bound.
//   - Video starts on a keyframe: each video stream is read from the last
//     keyframe at or before the window start (sample.VideoStart; pre-roll
//     from the stored timeline), or, if that keyframe is gone, from the
//     first keyframe inside the window, with the frames left out counted
//     in the stream's quality report (video_left_out). The manifest states
//     per stream where its video starts (video_start_ns).
//   - Channels, one per stream, ids in sorted stream order:
//     video -> foxglove.CompressedVideo (protobuf), Annex-B, one access unit
//     per message, parameter sets in front of every keyframe (in-band ones,
//     else the descriptor's version in force at T; video.Codec.WithParams);
//     lidar with a known layout ->
//     foxglove.PointCloud (protobuf, payload without its header);
//     JSON telemetry -> message encoding "json" on the original topic
//     (Descriptor.Source); CBOR telemetry is converted to JSON.
//   - Samples that cannot be represented (DecodeError flag, raw codec, no
//     layout, an access unit that does not parse, invalid JSON/CBOR) go to
//     a schema-less channel "<topic>/raw" with message encoding
//     "application/octet-stream", created the first time it is needed.
//
// Export is deterministic: the same episode always gives the same bytes.
// Nothing in the file depends on the wall clock, on map order, on the
// episode's upload state or on GOMAXPROCS. This is what lets sync/upload
// re-create a staged file after a restart and resume a multipart upload.
//
// Write reads everything through the small Source interface (storage's
// *Store implements it) and streams to an io.Writer; memory use is bounded
// by the chunk size plus one message.
package export

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/foxglove/mcap/go/mcap"
	"github.com/klauspost/compress/zstd"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// Source is what Write reads; *storage.Store implements it.
type Source interface {
	Episode(id string) (episode.Episode, error)
	Descriptors(stream string) ([]sample.Descriptor, error)
	Merge(streams []string, from, to int64) iter.Seq2[sample.Sample, error]
	VideoStart(stream string, from, to int64) (sample.VideoStart, error)
	MergeFrom(streams []string, starts map[string]sample.VideoStart, from, to int64) func(yield func(sample.Sample, error) bool)
}

// ErrRecording is returned for an episode that is still recording: its
// window and report are not final, so it cannot be exported yet.
var ErrRecording = errors.New("export: episode is still recording")

// Library is the fixed MCAP header library string.
const Library = "episoded"

// Profile is the MCAP header profile: empty, since channels mix encodings.
const Profile = ""

// DefaultChunkSize is the uncompressed chunk size.
const DefaultChunkSize = 4 << 20

// Options tune one export.
type Options struct {
	// Attachments are files (calibration, URDF) added as MCAP attachments,
	// named by their base name, in the given order. A missing file is an
	// error.
	Attachments []string
	// ChunkSize is the uncompressed chunk size; default DefaultChunkSize.
	// It is part of the output's identity: change it and the bytes change.
	ChunkSize int64
	// Progress, if set, is called from Write's goroutine every few
	// megabytes and once at the end.
	Progress func(Progress)
}

// Progress reports how far an export is. The totals come from the
// episode's quality report and are 0 if it has none.
type Progress struct {
	Messages, TotalMessages uint64
	// Bytes and TotalBytes count sample payload bytes read from storage.
	Bytes, TotalBytes uint64
	// Written is the number of bytes of MCAP output so far.
	Written int64
}

// Stats summarises a finished export.
type Stats struct {
	Messages uint64
	// Streams counts exported samples per stream (both its channels).
	Streams map[string]uint64
	// Raw counts samples that went to a "/raw" channel.
	Raw uint64
	// PayloadBytes is the total of sample payload bytes read.
	PayloadBytes uint64
	// Size is the number of bytes written.
	Size int64
	// Channels counts messages per MCAP topic.
	Channels map[string]uint64
}

// Manifest is the "manifest" value of the episode metadata record: the
// episode's identity and window, without anything that changes after it
// closed (state, reason, updated), so that the export stays deterministic.
type Manifest struct {
	Format     string            `json:"format"`
	ID         string            `json:"id"`
	Cell       string            `json:"cell"`
	Task       string            `json:"task,omitempty"`
	Operator   string            `json:"operator,omitempty"`
	Robot      string            `json:"robot,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Priority   bool              `json:"priority,omitempty"`
	Trigger    string            `json:"trigger,omitempty"`
	StopReason string            `json:"stop_reason,omitempty"`
	Start      int64             `json:"start_ns"`
	Stop       int64             `json:"stop_ns"`
	Preroll    int64             `json:"preroll_ns"`
	Postroll   int64             `json:"postroll_ns"`
	From       int64             `json:"from_ns"`
	To         int64             `json:"to_ns"`
	Previous   string            `json:"previous,omitempty"`
	Next       string            `json:"next,omitempty"`
	Created    int64             `json:"created_ns"`
	Streams    []StreamInfo      `json:"streams"`
}

// StreamInfo describes one stream of the manifest and its MCAP channel.
type StreamInfo struct {
	Stream   string `json:"stream"`
	Kind     string `json:"kind,omitempty"`
	Codec    string `json:"codec,omitempty"`
	Device   string `json:"device,omitempty"`
	Source   string `json:"source,omitempty"`
	Clock    string `json:"clock,omitempty"`
	Topic    string `json:"topic"`
	Encoding string `json:"message_encoding"`
	Schema   string `json:"schema,omitempty"`
	Versions int    `json:"descriptor_versions"`
	// VideoStart (video) is the aligned decode time of the stream's first
	// exported frame, a keyframe: before the window start when pre-roll
	// reaches back to the keyframe, after it when that keyframe was gone.
	// Absent if the window holds no keyframe of the stream.
	VideoStart *int64 `json:"video_start_ns,omitempty"`
	// VideoLeftOut counts frames inside the window that are not exported
	// because the keyframe they depend on was no longer stored.
	VideoLeftOut uint64 `json:"video_left_out,omitempty"`
}

// ManifestFormat identifies the manifest layout.
const ManifestFormat = "episoded.episode/v1"

const (
	schemaVideo = 1
	schemaCloud = 2

	encRaw = "application/octet-stream"
)

type chanKind int

const (
	kindRaw chanKind = iota
	kindVideo
	kindCloud
	kindJSON
	kindCBOR
)

type streamState struct {
	name    string
	descs   []sample.Descriptor
	di      int
	topic   string
	kind    chanKind
	mainID  uint16
	rawID   uint16 // 0 until first needed
	prefix  map[uint32][]byte
	samples uint64
	// start drops what a decoder starting at the first keyframe cannot
	// decode (H.265 RASL pictures after a starting CRA).
	start video.StartFilter
}

func (s *streamState) desc(t int64) *sample.Descriptor {
	if len(s.descs) == 0 {
		return nil
	}
	for s.di+1 < len(s.descs) && s.descs[s.di+1].Since <= t {
		s.di++
	}
	return &s.descs[s.di]
}

func kindOf(d *sample.Descriptor) (chanKind, string, uint16) {
	if d == nil {
		return kindRaw, "", 0
	}
	switch {
	case d.Kind == sample.KindVideo && (d.Codec == sample.CodecH264 || d.Codec == sample.CodecH265):
		return kindVideo, SchemaCompressedVideo, schemaVideo
	case d.Kind == sample.KindPointCloud && d.Layout != nil && d.Layout.Stride > 0:
		return kindCloud, SchemaPointCloud, schemaCloud
	case d.Codec == sample.CodecJSON:
		return kindJSON, "", 0
	case d.Codec == sample.CodecCBOR:
		return kindCBOR, "", 0
	}
	return kindRaw, "", 0
}

// Plan returns the manifest an export of e would carry, reading the
// stream descriptors from src.
func Plan(src Source, e episode.Episode) (Manifest, error) {
	m, _, err := plan(src, e)
	return m, err
}

func streamsOf(e episode.Episode) []string {
	names := slices.Clone(e.Streams)
	if len(names) == 0 {
		for _, q := range e.Quality {
			names = append(names, q.Stream)
		}
	}
	sort.Strings(names)
	return slices.Compact(names)
}

func plan(src Source, e episode.Episode) (Manifest, []*streamState, error) {
	m, states, _, err := planStarts(src, e)
	return m, states, err
}

// planStarts is plan, also returning where each video stream starts.
func planStarts(src Source, e episode.Episode) (Manifest, []*streamState, map[string]sample.VideoStart, error) {
	starts := map[string]sample.VideoStart{}
	from, to := e.Window(0)
	m := Manifest{
		Format: ManifestFormat, ID: e.ID, Cell: e.Cell, Task: e.Task, Operator: e.Operator, Robot: e.Robot,
		Labels: e.Labels, Priority: e.Priority, Trigger: e.Trigger, StopReason: e.StopReason,
		Start: e.Start, Stop: e.Stop, Preroll: e.Preroll, Postroll: e.Postroll, From: from, To: to,
		Previous: e.Previous, Next: e.Next, Created: e.Created,
	}
	var states []*streamState
	for i, name := range streamsOf(e) {
		descs, err := src.Descriptors(name)
		if err != nil && !isNotFound(err) {
			return m, nil, nil, fmt.Errorf("read descriptors of %s: %w", name, err)
		}
		st := &streamState{name: name, descs: descs, topic: name, mainID: uint16(i + 1), prefix: map[uint32][]byte{}}
		var last *sample.Descriptor
		if len(descs) > 0 {
			last = &descs[len(descs)-1]
		}
		kind, schema, _ := kindOf(last)
		st.kind = kind
		info := StreamInfo{Stream: name, Versions: len(descs), Schema: schema}
		if last != nil {
			info.Kind, info.Codec, info.Device, info.Source, info.Clock =
				string(last.Kind), string(last.Codec), last.Device, last.Source, string(last.Clock)
			if (kind == kindJSON || kind == kindCBOR) && last.Source != "" {
				st.topic = last.Source
			}
		}
		if kind == kindVideo {
			vs, err := src.VideoStart(name, from, to)
			if err != nil {
				return m, nil, nil, fmt.Errorf("find the first keyframe of %s: %w", name, err)
			}
			if vs.Found && last.Codec == sample.CodecH265 {
				// Leading pictures of a starting CRA are left out too.
				f := video.StartFilter{C: video.H265}
				for x, err := range src.MergeFrom([]string{name}, map[string]sample.VideoStart{name: vs}, from, to) {
					if err != nil {
						continue
					}
					nalus, ok := video.SplitAU(x.Payload)
					if !ok {
						continue
					}
					if !f.Skip(nalus) {
						if x.Seq != vs.Seq {
							break
						}
						continue
					}
					if x.T >= from {
						vs.Skipped++
					}
				}
			}
			starts[name] = vs
			if vs.Found {
				info.VideoStart = &vs.T
			}
			info.VideoLeftOut = vs.Skipped
		}
		switch kind {
		case kindVideo, kindCloud:
			info.Encoding = "protobuf"
		case kindJSON, kindCBOR:
			info.Encoding = "json"
		default:
			st.topic = name + "/raw"
			info.Encoding = encRaw
		}
		info.Topic = st.topic
		m.Streams = append(m.Streams, info)
		states = append(states, st)
	}
	return m, states, starts, nil
}

func isNotFound(err error) bool { return errors.Is(err, storage.ErrNotFound) }

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Write exports episode id from src to w as MCAP. See the package doc for
// the layout. On error, w holds a partial file.
func Write(ctx context.Context, w io.Writer, src Source, id string, o Options) (Stats, error) {
	st := Stats{Streams: map[string]uint64{}, Channels: map[string]uint64{}}
	e, err := src.Episode(id)
	if err != nil {
		return st, fmt.Errorf("export %s: read episode: %w", id, err)
	}
	if !e.State.Finished() || e.Stop == 0 {
		return st, fmt.Errorf("export %s: %w", id, ErrRecording)
	}
	manifest, streams, starts, err := planStarts(src, e)
	if err != nil {
		return st, fmt.Errorf("export %s: %w", id, err)
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = DefaultChunkSize
	}
	var prog Progress
	names := make([]string, len(streams))
	byName := make(map[string]*streamState, len(streams))
	for i, s := range streams {
		names[i] = s.name
		byName[s.name] = s
	}
	for _, q := range e.Quality {
		if byName[q.Stream] != nil {
			prog.TotalMessages += q.Samples
			prog.TotalBytes += q.Bytes
		}
	}

	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		return st, fmt.Errorf("export %s: zstd: %w", id, err)
	}
	defer enc.Close()
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<20)
	mw, err := mcap.NewWriter(bw, &mcap.WriterOptions{
		IncludeCRC:      true,
		Chunked:         true,
		ChunkSize:       o.ChunkSize,
		Compressor:      mcap.NewCustomCompressor(mcap.CompressionZSTD, enc),
		OverrideLibrary: true,
	})
	if err != nil {
		return st, fmt.Errorf("export %s: new writer: %w", id, err)
	}
	fail := func(op string, err error) (Stats, error) {
		return st, fmt.Errorf("export %s: %s: %w", id, op, err)
	}
	if err := mw.WriteHeader(&mcap.Header{Profile: Profile, Library: Library}); err != nil {
		return fail("write header", err)
	}
	mj, err := json.Marshal(manifest)
	if err != nil {
		return fail("encode manifest", err)
	}
	quality := slices.Clone(e.Quality)
	if quality == nil {
		quality = []episode.StreamReport{}
	}
	for i := range quality {
		if vs, ok := starts[quality[i].Stream]; ok {
			quality[i].VideoLeftOut = vs.Skipped
		}
	}
	qj, err := json.Marshal(quality)
	if err != nil {
		return fail("encode quality", err)
	}
	meta := map[string]string{"manifest": string(mj), "quality": string(qj)}
	if e.Verdict != nil {
		vj, err := json.Marshal(e.Verdict)
		if err != nil {
			return fail("encode verdict", err)
		}
		meta["verdict"] = string(vj)
	}
	if err := mw.WriteMetadata(&mcap.Metadata{Name: "episode", Metadata: meta}); err != nil {
		return fail("write metadata", err)
	}
	for _, path := range o.Attachments {
		data, err := os.ReadFile(path)
		if err != nil {
			return fail("read attachment", err)
		}
		if err := mw.WriteAttachment(&mcap.Attachment{
			LogTime: uint64(max(e.Start, 0)), CreateTime: uint64(max(e.Start, 0)),
			Name: filepath.Base(path), MediaType: mediaType(path),
			DataSize: uint64(len(data)), Data: bytes.NewReader(data),
		}); err != nil {
			return fail("write attachment", err)
		}
	}

	// Schemas and main channels, in sorted stream order.
	var haveVideo, haveCloud bool
	for _, s := range streams {
		haveVideo = haveVideo || s.kind == kindVideo
		haveCloud = haveCloud || s.kind == kindCloud
	}
	if haveVideo {
		if err := mw.WriteSchema(&mcap.Schema{ID: schemaVideo, Name: SchemaCompressedVideo, Encoding: "protobuf", Data: CompressedVideoSchema()}); err != nil {
			return fail("write schema", err)
		}
	}
	if haveCloud {
		if err := mw.WriteSchema(&mcap.Schema{ID: schemaCloud, Name: SchemaPointCloud, Encoding: "protobuf", Data: PointCloudSchema()}); err != nil {
			return fail("write schema", err)
		}
	}
	nextID := uint16(len(streams) + 1)
	for i, s := range streams {
		ch := &mcap.Channel{ID: s.mainID, Topic: s.topic, Metadata: map[string]string{"stream": s.name}}
		switch s.kind {
		case kindVideo:
			ch.SchemaID, ch.MessageEncoding = schemaVideo, "protobuf"
		case kindCloud:
			ch.SchemaID, ch.MessageEncoding = schemaCloud, "protobuf"
		case kindJSON, kindCBOR:
			ch.MessageEncoding = "json"
		default:
			ch.MessageEncoding = encRaw
			s.rawID = s.mainID
		}
		if d := manifest.Streams[i]; d.Device != "" {
			ch.Metadata["device"] = d.Device
		}
		if err := mw.WriteChannel(ch); err != nil {
			return fail("write channel", err)
		}
	}
	rawChannel := func(s *streamState) (uint16, error) {
		if s.rawID != 0 {
			return s.rawID, nil
		}
		s.rawID = nextID
		nextID++
		topic := s.topic + "/raw"
		return s.rawID, mw.WriteChannel(&mcap.Channel{ID: s.rawID, Topic: topic, MessageEncoding: encRaw,
			Metadata: map[string]string{"stream": s.name}})
	}
	topics := map[uint16]string{}
	for _, s := range streams {
		topics[s.mainID] = s.topic
	}

	from, to := e.Window(0)
	var buf, pbuf []byte
	msg := &mcap.Message{}
	lastReport := int64(0)
	for smp, err := range src.MergeFrom(names, starts, from, to) {
		if err != nil {
			return fail("read samples", err)
		}
		s := byName[smp.Stream]
		if s == nil {
			continue
		}
		if prog.Messages%256 == 0 {
			if err := ctx.Err(); err != nil {
				return fail("cancelled", err)
			}
		}
		d := s.desc(smp.T)
		data, chID, raw := []byte(nil), s.mainID, false
		kind, _, _ := kindOf(d)
		if smp.Flags.Has(sample.DecodeError) || kind != s.kind {
			raw = true
		} else {
			switch s.kind {
			case kindVideo:
				if s.start.C == nil {
					s.start.C = video.CodecOf(d.Codec)
				}
				if nalus, ok := video.SplitAU(smp.Payload); ok && s.start.Skip(nalus) {
					continue // counted in the manifest's video_left_out
				}
				var au []byte
				var ok bool
				au, ok = annexB(buf[:0], d.Codec, d.Params, smp.Payload, smp.Flags.Has(sample.Keyframe))
				if ok {
					buf = au
					pbuf = appendCompressedVideo(pbuf[:0], smp.PTS(), s.name, au, string(d.Codec))
					data = pbuf
				} else {
					raw = true
				}
			case kindCloud:
				l := d.Layout
				body := smp.Payload
				if len(body) < l.HeaderSize || (len(body)-l.HeaderSize)%l.Stride != 0 {
					raw = true
					break
				}
				pfx, ok := s.prefix[d.Version]
				if !ok {
					pfx = pointCloudPrefix(l)
					s.prefix[d.Version] = pfx
				}
				pbuf = appendPointCloud(pbuf[:0], smp.T, s.name, pfx, body[l.HeaderSize:])
				data = pbuf
			case kindJSON:
				if json.Valid(smp.Payload) {
					data = smp.Payload
				} else {
					raw = true
				}
			case kindCBOR:
				if j, err := cborToJSON(smp.Payload); err == nil {
					data = j
				} else {
					raw = true
				}
			default:
				raw = true
			}
		}
		if raw {
			id, err := rawChannel(s)
			if err != nil {
				return fail("write channel", err)
			}
			chID, data = id, smp.Payload
			topics[id] = s.topic + "/raw"
			if s.kind == kindRaw {
				topics[id] = s.topic
			}
			st.Raw++
		}
		pub := smp.SrcT
		if pub == 0 {
			pub = smp.T
		}
		msg.ChannelID, msg.Sequence, msg.LogTime, msg.PublishTime, msg.Data =
			chID, uint32(smp.Seq), uint64(max(smp.T, 0)), uint64(max(pub, 0)), data
		if err := mw.WriteMessage(msg); err != nil {
			return fail("write message", err)
		}
		s.samples++
		st.Streams[s.name]++
		st.Channels[topics[chID]]++
		st.Messages++
		st.PayloadBytes += uint64(len(smp.Payload))
		prog.Messages++
		prog.Bytes += uint64(len(smp.Payload))
		if o.Progress != nil && cw.n-lastReport >= 4<<20 {
			lastReport = cw.n
			prog.Written = cw.n
			o.Progress(prog)
		}
	}
	if err := mw.Close(); err != nil {
		return fail("close writer", err)
	}
	if err := bw.Flush(); err != nil {
		return fail("flush", err)
	}
	st.Size = cw.n
	if o.Progress != nil {
		prog.Written = cw.n
		o.Progress(prog)
	}
	return st, nil
}

func mediaType(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".urdf", ".xml", ".xacro", ".sdf":
		return "application/xml"
	case ".json":
		return "application/json"
	case ".yaml", ".yml":
		return "application/yaml"
	case ".txt", ".ini", ".cfg":
		return "text/plain"
	}
	return "application/octet-stream"
}
