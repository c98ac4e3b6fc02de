package export

import (
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// The plan of an export: which streams, their channel kinds, topics and
// ids, and where each video stream starts. It reads descriptors and, for
// video, the stored timeline; it writes nothing.

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

// leading reports whether the video access unit smp, described by d, is
// one a decoder starting at the stream's first keyframe cannot decode; it
// is left out (and counted in the manifest's video_left_out).
func (s *streamState) leading(d *sample.Descriptor, smp sample.Sample) bool {
	if s.start.C == nil {
		s.start.C = video.CodecOf(d.Codec)
	}
	nalus, ok := video.SplitAU(smp.Payload)
	return ok && s.start.Skip(nalus)
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
// stream descriptors from src. sync/upload uses it for the video starts
// of the upload manifest, so both state the same starts.
func Plan(src Source, e episode.Episode) (Manifest, error) {
	m, _, _, err := planStreams(src, e)
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

// planStreams returns the manifest of an export of e, the state of each stream
// (sorted by name; main channel ids 1..n in that order) and where each
// video stream starts.
func planStreams(src Source, e episode.Episode) (Manifest, []*streamState, map[string]sample.VideoStart, error) {
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
			vs, err := videoStart(src, name, last.Codec, from, to)
			if err != nil {
				return m, nil, nil, err
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

// videoStart finds where video stream name starts in [from, to): its last
// keyframe at or before from (else its first one inside), with the frames
// left out counted in Skipped. For H.265 the leading pictures of a
// starting CRA are left out too, and counted if inside the window.
func videoStart(src Source, name string, codec sample.Codec, from, to int64) (sample.VideoStart, error) {
	vs, err := src.VideoStart(name, from, to)
	if err != nil {
		return vs, fmt.Errorf("find the first keyframe of %s: %w", name, err)
	}
	if !vs.Found || codec != sample.CodecH265 {
		return vs, nil
	}
	f := video.StartFilter{C: video.H265}
	for x, err := range mergeFrom(src, []string{name}, map[string]sample.VideoStart{name: vs}, from, to) {
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
	return vs, nil
}

func isNotFound(err error) bool { return errors.Is(err, storage.ErrNotFound) }
