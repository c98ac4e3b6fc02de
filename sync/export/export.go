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
// *Store implements it) and streams to an io.Writer, buffered (1 MiB
// blocks: the caller need not buffer); memory use is bounded by the chunk
// size plus one message. The zstd encoder and the output buffer are kept
// between exports (one of each), and payloads are read into a buffer
// reused per stream where the Source allows it (storage's
// MergeFromShared): the daemon exports every episode it records.
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
	"strings"
	"sync"

	"github.com/foxglove/mcap/go/mcap"
	"github.com/klauspost/compress/zstd"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sample"
)

// Source is what Write reads; *storage.Store implements it.
type Source interface {
	Episode(id string) (episode.Episode, error)
	Descriptors(stream string) ([]sample.Descriptor, error)
	Merge(streams []string, from, to int64) iter.Seq2[sample.Sample, error]
	VideoStart(stream string, from, to int64) (sample.VideoStart, error)
	MergeFrom(streams []string, starts map[string]sample.VideoStart, from, to int64) func(yield func(sample.Sample, error) bool)
}

// sharedMerger is a Source whose MergeFromShared is MergeFrom with
// payloads valid only until the next sample (*storage.Store: a frame
// buffer reused per stream instead of one allocation per frame). Export
// is done with each sample before it takes the next: its data is copied
// into the chunk (mcap.Writer.WriteMessage) or into a reused conversion
// buffer first.
type sharedMerger interface {
	MergeFromShared(streams []string, starts map[string]sample.VideoStart, from, to int64) func(yield func(sample.Sample, error) bool)
}

// mergeFrom is src.MergeFromShared where src has it, else src.MergeFrom.
func mergeFrom(src Source, streams []string, starts map[string]sample.VideoStart, from, to int64) func(yield func(sample.Sample, error) bool) {
	if m, ok := src.(sharedMerger); ok {
		return m.MergeFromShared(streams, starts, from, to)
	}
	return src.MergeFrom(streams, starts, from, to)
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

// Write exports episode id from src to w as MCAP. See the package doc for
// the layout. On error, w holds a partial file.
//
// The steps, in the order the file is written: plan (the episode, its
// streams and where their video starts; nothing written yet), open (the
// MCAP writer and the header), the episode metadata, the attachments, the
// schemas and main channels, the messages in log-time order (creating a
// "/raw" channel the first time a stream needs one), and finish (summary
// and footer, flush).
func Write(ctx context.Context, w io.Writer, src Source, id string, o Options) (Stats, error) {
	x := &exporter{src: src, o: o, st: Stats{Streams: map[string]uint64{}, Channels: map[string]uint64{}}}
	if err := x.run(ctx, w, id); err != nil {
		return x.st, fmt.Errorf("export %s: %w", id, err)
	}
	return x.st, nil
}

// exporter is the state of one Write, used by one goroutine.
type exporter struct {
	src Source
	o   Options

	// From plan.
	e        episode.Episode
	manifest Manifest
	streams  []*streamState // sorted by name; main channel ids 1..n
	byName   map[string]*streamState
	starts   map[string]sample.VideoStart

	// From open.
	cw *countingWriter
	bw *bufio.Writer
	mw *mcap.Writer

	nextID uint16            // the next "/raw" channel id
	topics map[uint16]string // channel id -> topic, for Stats.Channels

	st         Stats
	prog       Progress
	lastReport int64 // cw.n at the last Progress call

	// Reused for every message.
	msg       mcap.Message
	buf, pbuf []byte
}

func (x *exporter) run(ctx context.Context, w io.Writer, id string) error {
	if err := x.plan(id); err != nil {
		return err
	}
	ws, err := getWriterState()
	if err != nil {
		return err
	}
	if err := x.open(w, ws); err != nil {
		return err
	}
	if err := x.writeMetadata(); err != nil {
		return err
	}
	if err := x.writeAttachments(); err != nil {
		return err
	}
	if err := x.writeSchemas(); err != nil {
		return err
	}
	if err := x.writeChannels(); err != nil {
		return err
	}
	if err := x.writeMessages(ctx); err != nil {
		return err
	}
	if err := x.finish(); err != nil {
		return err
	}
	// Only a writer that finished cleanly is kept for the next export:
	// after an error the encoder may be mid-frame.
	x.bw = nil
	putWriterState(ws)
	return nil
}

// exportWindow is the zstd window of an export's chunks: matches reach
// at most 1 MiB back. A chunk holds DefaultChunkSize (4 MiB) of messages,
// mostly video frames that do not compress at all; telemetry's repeats
// (JSON field names, slowly changing values) are far closer than 1 MiB.
// zstd's default window for SpeedFastest is 8 MiB, whose history buffer
// the kept encoder held in the daemon's live heap (issue 20: 7 MiB of the
// 25 MiB live at 8 cameras); at 1 MiB it holds 1.1 MiB.
const exportWindow = 1 << 20

// writerState is what one export needs besides the MCAP writer itself and
// is worth keeping for the next: the zstd encoder (SpeedFastest with an
// exportWindow window allocates its history buffer and a 256 KiB table
// on its first chunk) and the 1 MiB output buffer. The daemon exports
// every episode once (one 10 s episode every 15 s in the demo cell), so
// allocating these afresh each time made the Go heap take 17 MiB more
// per export, zeroed (touched) each time, until the next collection.
// Encoder.Reset starts an independent stream (the mcap writer already
// resets it for every chunk), so a reused encoder writes the same bytes
// as a new one; TestExportGolden checks the output is unchanged.
//
// WithLowerEncoderMem sizes the history to the window plus one block
// (1.1 MiB) instead of twice the window, with the same output. What is
// kept counts in the live heap, so in the heap goal under the daemon's
// memory limit.
type writerState struct {
	enc *zstd.Encoder
	bw  *bufio.Writer
}

// maxIdleWriters bounds the writer states kept between exports: one,
// which is what the daemon needs when its exports do not overlap (one
// episode every 15 s, exported in about a second); an export that runs
// beside another allocates its own and drops it. A sync.Pool would not
// do: it is emptied by every second collection, and at this daemon's
// allocation rate (frames) that is many times between two exports.
const maxIdleWriters = 1

var idleWriters struct {
	sync.Mutex
	l []*writerState
}

func getWriterState() (*writerState, error) {
	idleWriters.Lock()
	if n := len(idleWriters.l); n > 0 {
		ws := idleWriters.l[n-1]
		idleWriters.l[n-1] = nil
		idleWriters.l = idleWriters.l[:n-1]
		idleWriters.Unlock()
		return ws, nil
	}
	idleWriters.Unlock()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(exportWindow), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return &writerState{enc: enc, bw: bufio.NewWriterSize(nil, 1<<20)}, nil
}

// putWriterState keeps ws for the next export, dropping its references
// to this export's buffers and writer (the mcap writer's chunk buffer
// would otherwise stay reachable from the encoder).
func putWriterState(ws *writerState) {
	ws.enc.Reset(nil)
	ws.bw.Reset(nil)
	idleWriters.Lock()
	defer idleWriters.Unlock()
	if len(idleWriters.l) < maxIdleWriters {
		idleWriters.l = append(idleWriters.l, ws)
	}
}

// plan reads the episode (it must be finished), plans its streams, and
// takes the progress totals from its quality report.
func (x *exporter) plan(id string) error {
	e, err := x.src.Episode(id)
	if err != nil {
		return fmt.Errorf("read episode: %w", err)
	}
	if !e.State.Finished() || e.Stop == 0 {
		return ErrRecording
	}
	x.e = e
	x.manifest, x.streams, x.starts, err = planStreams(x.src, e)
	if err != nil {
		return err
	}
	if x.o.ChunkSize <= 0 {
		x.o.ChunkSize = DefaultChunkSize
	}
	x.byName = make(map[string]*streamState, len(x.streams))
	for _, s := range x.streams {
		x.byName[s.name] = s
	}
	for _, q := range e.Quality {
		if x.byName[q.Stream] != nil {
			x.prog.TotalMessages += q.Samples
			x.prog.TotalBytes += q.Bytes
		}
	}
	return nil
}

// open starts the MCAP writer over w (counted, buffered; chunks
// compressed by ws.enc, buffered by ws.bw) and writes the header.
func (x *exporter) open(w io.Writer, ws *writerState) error {
	x.cw = &countingWriter{w: w}
	ws.bw.Reset(x.cw)
	x.bw = ws.bw
	mw, err := mcap.NewWriter(x.bw, &mcap.WriterOptions{
		IncludeCRC:      true,
		Chunked:         true,
		ChunkSize:       x.o.ChunkSize,
		Compressor:      mcap.NewCustomCompressor(mcap.CompressionZSTD, ws.enc),
		OverrideLibrary: true,
	})
	if err != nil {
		return fmt.Errorf("new writer: %w", err)
	}
	x.mw = mw
	if err := mw.WriteHeader(&mcap.Header{Profile: Profile, Library: Library}); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	return nil
}

// writeMetadata writes the "episode" metadata record: the manifest, the
// quality report (with the video frames left out) and the verdict.
func (x *exporter) writeMetadata() error {
	mj, err := json.Marshal(x.manifest)
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	quality := slices.Clone(x.e.Quality)
	if quality == nil {
		quality = []episode.StreamReport{}
	}
	for i := range quality {
		if vs, ok := x.starts[quality[i].Stream]; ok {
			quality[i].VideoLeftOut = vs.Skipped
		}
	}
	qj, err := json.Marshal(quality)
	if err != nil {
		return fmt.Errorf("encode quality: %w", err)
	}
	meta := map[string]string{"manifest": string(mj), "quality": string(qj)}
	if x.e.Verdict != nil {
		vj, err := json.Marshal(x.e.Verdict)
		if err != nil {
			return fmt.Errorf("encode verdict: %w", err)
		}
		meta["verdict"] = string(vj)
	}
	if err := x.mw.WriteMetadata(&mcap.Metadata{Name: "episode", Metadata: meta}); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	return nil
}

// writeAttachments writes Options.Attachments in order, stamped with the
// episode start.
func (x *exporter) writeAttachments() error {
	at := uint64(max(x.e.Start, 0))
	for _, path := range x.o.Attachments {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read attachment: %w", err)
		}
		if err := x.mw.WriteAttachment(&mcap.Attachment{
			LogTime: at, CreateTime: at,
			Name: filepath.Base(path), MediaType: mediaType(path),
			DataSize: uint64(len(data)), Data: bytes.NewReader(data),
		}); err != nil {
			return fmt.Errorf("write attachment: %w", err)
		}
	}
	return nil
}

// writeSchemas writes the protobuf schemas the streams use.
func (x *exporter) writeSchemas() error {
	var haveVideo, haveCloud bool
	for _, s := range x.streams {
		haveVideo = haveVideo || s.kind == kindVideo
		haveCloud = haveCloud || s.kind == kindCloud
	}
	if haveVideo {
		if err := x.mw.WriteSchema(&mcap.Schema{ID: schemaVideo, Name: SchemaCompressedVideo, Encoding: "protobuf", Data: CompressedVideoSchema()}); err != nil {
			return fmt.Errorf("write schema: %w", err)
		}
	}
	if haveCloud {
		if err := x.mw.WriteSchema(&mcap.Schema{ID: schemaCloud, Name: SchemaPointCloud, Encoding: "protobuf", Data: PointCloudSchema()}); err != nil {
			return fmt.Errorf("write schema: %w", err)
		}
	}
	return nil
}

// writeChannels writes each stream's main channel, in sorted stream
// order. A stream with no representable kind has only its raw channel,
// which is then its main one.
func (x *exporter) writeChannels() error {
	x.nextID = uint16(len(x.streams) + 1)
	x.topics = make(map[uint16]string, len(x.streams))
	for i, s := range x.streams {
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
		if d := x.manifest.Streams[i]; d.Device != "" {
			ch.Metadata["device"] = d.Device
		}
		if err := x.mw.WriteChannel(ch); err != nil {
			return fmt.Errorf("write channel: %w", err)
		}
		x.topics[s.mainID] = s.topic
	}
	return nil
}

// rawChannel returns the id of s's "/raw" channel, writing the channel the
// first time it is needed.
func (x *exporter) rawChannel(s *streamState) (uint16, error) {
	if s.rawID != 0 {
		return s.rawID, nil
	}
	s.rawID = x.nextID
	x.nextID++
	topic := s.topic + "/raw"
	x.topics[s.rawID] = topic
	return s.rawID, x.mw.WriteChannel(&mcap.Channel{ID: s.rawID, Topic: topic, MessageEncoding: encRaw,
		Metadata: map[string]string{"stream": s.name}})
}

// writeMessages writes every sample of the window in storage's merge
// order, each video stream from its planned start, checking ctx every 256
// messages.
func (x *exporter) writeMessages(ctx context.Context) error {
	names := make([]string, len(x.streams))
	for i, s := range x.streams {
		names[i] = s.name
	}
	from, to := x.e.Window(0)
	for smp, err := range mergeFrom(x.src, names, x.starts, from, to) {
		if err != nil {
			return fmt.Errorf("read samples: %w", err)
		}
		s := x.byName[smp.Stream]
		if s == nil {
			continue
		}
		if x.prog.Messages%256 == 0 {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("cancelled: %w", err)
			}
		}
		d := s.desc(smp.T)
		var data []byte
		ok := false
		if kind, _, _ := kindOf(d); kind == s.kind && !smp.Flags.Has(sample.DecodeError) {
			if s.kind == kindVideo && s.leading(d, smp) {
				continue // counted in the manifest's video_left_out
			}
			data, ok = x.convert(s, d, smp)
		}
		if err := x.writeMessage(s, smp, data, ok); err != nil {
			return err
		}
	}
	return nil
}

// convert returns the message data of smp on s's main channel, described
// by d (of s's kind), or false if it cannot be represented there and goes
// to the raw channel. The data may be in a buffer reused by the next call.
func (x *exporter) convert(s *streamState, d *sample.Descriptor, smp sample.Sample) ([]byte, bool) {
	switch s.kind {
	case kindVideo:
		au, ok := annexB(x.buf[:0], d.Codec, d.Params, smp.Payload, smp.Flags.Has(sample.Keyframe))
		if !ok {
			return nil, false
		}
		x.buf = au
		x.pbuf = appendCompressedVideo(x.pbuf[:0], smp.PTS(), s.name, au, string(d.Codec))
		return x.pbuf, true
	case kindCloud:
		l := d.Layout
		body := smp.Payload
		if len(body) < l.HeaderSize || (len(body)-l.HeaderSize)%l.Stride != 0 {
			return nil, false
		}
		pfx, ok := s.prefix[d.Version]
		if !ok {
			pfx = pointCloudPrefix(l)
			s.prefix[d.Version] = pfx
		}
		x.pbuf = appendPointCloud(x.pbuf[:0], smp.T, s.name, pfx, body[l.HeaderSize:])
		return x.pbuf, true
	case kindJSON:
		return smp.Payload, json.Valid(smp.Payload)
	case kindCBOR:
		j, err := cborToJSON(smp.Payload)
		return j, err == nil
	}
	return nil, false
}

// writeMessage writes smp on s's main channel with data, or, if !ok, its
// payload as is on s's raw channel; it counts it and reports progress
// every 4 MiB of output.
func (x *exporter) writeMessage(s *streamState, smp sample.Sample, data []byte, ok bool) error {
	chID := s.mainID
	if !ok {
		id, err := x.rawChannel(s)
		if err != nil {
			return fmt.Errorf("write channel: %w", err)
		}
		chID, data = id, smp.Payload
		x.st.Raw++
	}
	pub := smp.SrcT
	if pub == 0 {
		pub = smp.T
	}
	x.msg.ChannelID, x.msg.Sequence, x.msg.LogTime, x.msg.PublishTime, x.msg.Data =
		chID, uint32(smp.Seq), uint64(max(smp.T, 0)), uint64(max(pub, 0)), data
	if err := x.mw.WriteMessage(&x.msg); err != nil {
		return fmt.Errorf("write message: %w", err)
	}
	s.samples++
	x.st.Streams[s.name]++
	x.st.Channels[x.topics[chID]]++
	x.st.Messages++
	x.st.PayloadBytes += uint64(len(smp.Payload))
	x.prog.Messages++
	x.prog.Bytes += uint64(len(smp.Payload))
	if x.o.Progress != nil && x.cw.n-x.lastReport >= 4<<20 {
		x.lastReport = x.cw.n
		x.prog.Written = x.cw.n
		x.o.Progress(x.prog)
	}
	return nil
}

// finish writes the summary and footer, flushes, and reports the final
// progress.
func (x *exporter) finish() error {
	if err := x.mw.Close(); err != nil {
		return fmt.Errorf("close writer: %w", err)
	}
	if err := x.bw.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	x.st.Size = x.cw.n
	if x.o.Progress != nil {
		x.prog.Written = x.cw.n
		x.o.Progress(x.prog)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
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
