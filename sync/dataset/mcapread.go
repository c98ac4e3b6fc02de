package dataset

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/foxglove/mcap/go/mcap"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sync/export"
)

// Episode is what a build takes from one exported episode: its manifest
// and quality report, the telemetry messages of the mapped topics and the
// frames of the mapped cameras.
type Episode struct {
	Manifest export.Manifest
	Quality  []episode.StreamReport
	// QualityStatus is the episode's verdict ("ok", "degraded") when the
	// export carries one (the metadata record's "verdict"), else "".
	QualityStatus string
	// Telemetry holds, per topic in time order, the values of the mapped
	// fields of each message (not the whole message).
	Telemetry map[string][]Message
	// Video holds the frames per camera stream, in decode order. Their
	// bytes are in a spool file until Close.
	Video map[string]*Track
	spool *os.File
}

// Close removes the episode's spooled frames.
func (e *Episode) Close() error {
	if e.spool == nil {
		return nil
	}
	e.spool.Close()
	return os.Remove(e.spool.Name())
}

// Message is one telemetry message: its time and the numbers at each
// mapped field path (absent when the message lacks the path or holds
// something else there).
type Message struct {
	T    int64
	Vals map[string][]float64
}

// Track is one camera's frames.
type Track struct {
	Codec string // "h264" or "h265"
	// Frames are in decode order, starting at the first keyframe.
	Frames []Frame
	// Skipped counts frames before the first keyframe, which cannot be
	// decoded and are left out.
	Skipped int
	spool   *os.File
}

// AU returns frame i's access unit (Annex-B), read from the spool.
func (t *Track) AU(i int) ([]byte, error) {
	f := t.Frames[i]
	b := make([]byte, f.size)
	if _, err := t.spool.ReadAt(b, f.off); err != nil {
		return nil, fmt.Errorf("read spooled frame: %w", err)
	}
	return b, nil
}

// Frame is one access unit.
type Frame struct {
	// DTS is the MCAP log time (decode order); PTS the presentation time
	// (CompressedVideo.timestamp), equal to DTS without B-frames.
	DTS, PTS int64
	Key      bool
	// The access unit (Annex-B) is at off in the episode's spool file.
	off  int64
	size int
}

// ReadEpisode reads an episode MCAP, keeping only the field paths that
// topics lists per topic and the video streams in cameras. Frames are spooled to a file in spoolDir
// (the system's temporary directory if ""), so that memory holds their
// times only; Close the episode to remove it.
func ReadEpisode(r io.Reader, topics map[string][]string, cameras map[string]bool, spoolDir string) (ep *Episode, err error) {
	rd, err := mcap.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("read mcap: %w", err)
	}
	defer rd.Close()
	spool, err := os.CreateTemp(spoolDir, "frames-*.spool")
	if err != nil {
		return nil, err
	}
	ep = &Episode{Telemetry: map[string][]Message{}, Video: map[string]*Track{}, spool: spool}
	defer func() {
		if err != nil {
			ep.Close()
		}
	}()
	bw := bufio.NewWriterSize(spool, 1<<20)
	var spoolOff int64
	var haveManifest bool
	it, err := rd.Messages(mcap.UsingIndex(false), mcap.WithMetadataCallback(func(md *mcap.Metadata) error {
		if md.Name != "episode" {
			return nil
		}
		if err := json.Unmarshal([]byte(md.Metadata["manifest"]), &ep.Manifest); err != nil {
			return fmt.Errorf("episode manifest: %w", err)
		}
		haveManifest = true
		if v := md.Metadata["verdict"]; v != "" {
			var vd episode.Verdict
			if err := json.Unmarshal([]byte(v), &vd); err != nil {
				return fmt.Errorf("episode verdict: %w", err)
			}
			ep.QualityStatus = vd.Status
		}
		if q := md.Metadata["quality"]; q != "" {
			if err := json.Unmarshal([]byte(q), &ep.Quality); err != nil {
				return fmt.Errorf("episode quality report: %w", err)
			}
		}
		return nil
	}))
	if err != nil {
		return nil, fmt.Errorf("read mcap: %w", err)
	}
	buf := &mcap.Message{}
	for {
		_, ch, m, err := it.NextInto(buf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read mcap: %w", err)
		}
		stream := ch.Metadata["stream"]
		switch {
		case ch.MessageEncoding == "protobuf" && cameras[stream] && ch.Topic == stream:
			tr := ep.Video[stream]
			if tr == nil {
				tr = &Track{spool: spool}
				ep.Video[stream] = tr
			}
			f, au, codec, err := decodeCompressedVideo(m.Data)
			if err != nil {
				return nil, fmt.Errorf("read mcap: %s message %d: %w", stream, m.Sequence, err)
			}
			tr.Codec = codec
			f.DTS = int64(m.LogTime)
			if f.PTS == 0 {
				f.PTS = f.DTS
			}
			f.Key = isKey(codec, au)
			if len(tr.Frames) == 0 && !f.Key {
				tr.Skipped++
				continue
			}
			if _, err := bw.Write(au); err != nil {
				return nil, fmt.Errorf("spool frames: %w", err)
			}
			f.off, f.size = spoolOff, len(au)
			spoolOff += int64(len(au))
			tr.Frames = append(tr.Frames, f)
		case ch.MessageEncoding == "json" && len(topics[ch.Topic]) > 0:
			var v any
			if err := json.Unmarshal(m.Data, &v); err != nil {
				return nil, fmt.Errorf("read mcap: %s message %d: %w", ch.Topic, m.Sequence, err)
			}
			msg := Message{T: int64(m.LogTime), Vals: map[string][]float64{}}
			for _, p := range topics[ch.Topic] {
				if x, ok := value(v, p); ok {
					msg.Vals[p] = x
				}
			}
			ep.Telemetry[ch.Topic] = append(ep.Telemetry[ch.Topic], msg)
		}
	}
	if !haveManifest {
		return nil, errors.New("read mcap: no episode metadata record")
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("spool frames: %w", err)
	}
	for _, ms := range ep.Telemetry {
		sort.SliceStable(ms, func(i, j int) bool { return ms[i].T < ms[j].T })
	}
	return ep, nil
}

// decodeCompressedVideo decodes foxglove.CompressedVideo: timestamp (1),
// frame_id (2), data (3), format (4).
func decodeCompressedVideo(b []byte) (Frame, []byte, string, error) {
	var f Frame
	var au []byte
	var format string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return f, nil, "", protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return f, nil, "", protowire.ParseError(n)
			}
			f.PTS = decodeTimestamp(v)
			b = b[n:]
		case num == 3 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return f, nil, "", protowire.ParseError(n)
			}
			au = v
			b = b[n:]
		case num == 4 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return f, nil, "", protowire.ParseError(n)
			}
			format = string(v)
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return f, nil, "", protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	if format != "h264" && format != "h265" {
		return f, nil, "", fmt.Errorf("video format %q is not h264 or h265", format)
	}
	if len(au) == 0 {
		return f, nil, "", errors.New("empty frame")
	}
	return f, au, format, nil
}

func decodeTimestamp(b []byte) int64 {
	var sec, nsec int64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0
		}
		b = b[n:]
		if typ != protowire.VarintType {
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return 0
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return 0
		}
		b = b[n:]
		switch num {
		case 1:
			sec = int64(v)
		case 2:
			nsec = int64(int32(v))
		}
	}
	return sec*1e9 + nsec
}
