package dataset_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/bluenviron/mediacommon/v2/pkg/formats/mp4/codecs"
	"github.com/bluenviron/mediacommon/v2/pkg/formats/pmp4"
	"github.com/foxglove/mcap/go/mcap"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/episoded/episoded/sync/export"
	"github.com/episoded/episoded/sync/upload"
)

// camFrame is one access unit of a test camera.
type camFrame struct {
	dts, pts int64
	au       []byte // Annex-B
}

// telemetry is a JSON topic of a test episode.
type telemetry struct {
	topic string
	t     []int64
	msgs  []any
}

// fakeEpisode writes dir/<id>/episode.mcap and manifest.json the way
// sync/export and sync/upload lay them out (same schema, metadata record,
// channel metadata and manifest), so that tests can give the builder
// cameras that the recorder cannot produce on demand: jitter, outages,
// B-frames with presentation times. This is a fake of the export, written
// here because the export has no way to take such input.
func fakeEpisode(t testing.TB, root, id, task string, start int64, tel []telemetry, cams map[string][]camFrame) {
	t.Helper()
	fakeEpisodeVerdict(t, root, id, task, "", start, tel, cams)
}

// fakeEpisodeVerdict is fakeEpisode with a quality verdict ("ok",
// "degraded") in the episode metadata record and manifest.json, as the
// export and upload write it.
func fakeEpisodeVerdict(t testing.TB, root, id, task, verdict string, start int64, tel []telemetry, cams map[string][]camFrame) {
	t.Helper()
	dir := filepath.Join(root, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, err := mcap.NewWriter(&buf, &mcap.WriterOptions{Chunked: true, ChunkSize: 1 << 20, Compression: mcap.CompressionZSTD, IncludeCRC: true})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.WriteHeader(&mcap.Header{Library: export.Library}))
	man := export.Manifest{Format: export.ManifestFormat, ID: id, Cell: "cell1", Task: task, Start: start}
	mj, _ := json.Marshal(man)
	meta := map[string]string{"manifest": string(mj), "quality": "[]"}
	if verdict != "" {
		meta["verdict"] = `{"status":"` + verdict + `"}`
	}
	must(w.WriteMetadata(&mcap.Metadata{Name: "episode", Metadata: meta}))
	must(w.WriteSchema(&mcap.Schema{ID: 1, Name: export.SchemaCompressedVideo, Encoding: "protobuf", Data: export.CompressedVideoSchema()}))
	type msg struct {
		ch   uint16
		t    int64
		data []byte
	}
	var msgs []msg
	id16 := uint16(1)
	names := make([]string, 0, len(cams))
	for n := range cams {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		must(w.WriteChannel(&mcap.Channel{ID: id16, SchemaID: 1, Topic: n, MessageEncoding: "protobuf", Metadata: map[string]string{"stream": n}}))
		for _, f := range cams[n] {
			msgs = append(msgs, msg{id16, f.dts, compressedVideo(f.pts, n, f.au)})
		}
		id16++
	}
	for _, tl := range tel {
		must(w.WriteChannel(&mcap.Channel{ID: id16, Topic: tl.topic, MessageEncoding: "json", Metadata: map[string]string{"stream": tl.topic}}))
		for i, m := range tl.msgs {
			b, _ := json.Marshal(m)
			msgs = append(msgs, msg{id16, tl.t[i], b})
		}
		id16++
	}
	sort.SliceStable(msgs, func(i, j int) bool { return msgs[i].t < msgs[j].t })
	for i, m := range msgs {
		must(w.WriteMessage(&mcap.Message{ChannelID: m.ch, Sequence: uint32(i), LogTime: uint64(m.t), PublishTime: uint64(m.t), Data: m.data}))
	}
	must(w.Close())
	must(os.WriteFile(filepath.Join(dir, upload.ObjectMCAP), buf.Bytes(), 0o644))
	sum := sha256.Sum256(buf.Bytes())
	mf := upload.Manifest{Format: upload.ManifestFormat, Episode: id, Site: "s", Gateway: "g", Cell: "cell1", Task: task, Start: start,
		Objects: []upload.ManifestObject{{Name: upload.ObjectMCAP, Key: id + "/" + upload.ObjectMCAP, Size: int64(buf.Len()), SHA256: hex.EncodeToString(sum[:])}}}
	b, _ := json.Marshal(mf)
	if verdict != "" { // the manifest's verdict field (added with quality verdicts)
		b = append(b[:len(b)-1], []byte(`,"verdict":{"status":"`+verdict+`"}}`)...)
	}
	must(os.WriteFile(filepath.Join(dir, upload.ObjectManifest), b, 0o644))
}

func compressedVideo(t int64, frameID string, au []byte) []byte {
	var ts []byte
	ts = protowire.AppendTag(ts, 1, protowire.VarintType)
	ts = protowire.AppendVarint(ts, uint64(t/1e9))
	ts = protowire.AppendTag(ts, 2, protowire.VarintType)
	ts = protowire.AppendVarint(ts, uint64(t%1e9))
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, frameID)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, au)
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	format := "h264"
	if strings.Contains(frameID, "h265") {
		format = "h265"
	}
	return protowire.AppendString(b, format)
}

func needFFmpeg(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		if testing.Short() {
			t.Skip("ffmpeg not installed; skipped under -short")
		}
		t.Fatal("ffmpeg not installed")
	}
}

// ffmpegClip makes an H.264 clip with ffmpeg (testsrc2, 320x240, 30 fps)
// and returns its access units in decode order as Annex-B with SPS/PPS in
// front of every keyframe, with presentation offsets in frames.
func ffmpegClip(t testing.TB, seconds, bframes, gop int) (aus [][]byte, ptsOff []int, keys []bool) {
	t.Helper()
	needFFmpeg(t)
	out := filepath.Join(t.TempDir(), "clip.mp4")
	profile := "baseline"
	if bframes > 0 {
		profile = "main"
	}
	cmd := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
		fmt.Sprintf("testsrc2=size=320x240:rate=30:duration=%d", seconds), "-c:v", "libx264", "-profile:v", profile,
		"-bf", fmt.Sprint(bframes), "-g", fmt.Sprint(gop), "-x264-params", fmt.Sprintf("keyint=%d:min-keyint=%d:scenecut=0", gop, gop),
		"-pix_fmt", "yuv420p", "-movflags", "+faststart", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var p pmp4.Presentation
	if err := p.Unmarshal(f); err != nil {
		t.Fatal(err)
	}
	tr := p.Tracks[0]
	h := tr.Codec.(*codecs.H264)
	dur := int32(tr.Samples[0].Duration)
	base := int32(0)
	if len(tr.Samples) > 0 {
		base = tr.Samples[0].PTSOffset // the first frame's offset: presentation starts there
	}
	for _, s := range tr.Samples {
		b, err := s.GetPayload()
		if err != nil {
			t.Fatal(err)
		}
		var au []byte
		if !s.IsNonSyncSample {
			for _, ps := range [][]byte{h.SPS, h.PPS} {
				au = append(au, 0, 0, 0, 1)
				au = append(au, ps...)
			}
		}
		for len(b) >= 4 {
			n := binary.BigEndian.Uint32(b)
			au = append(au, 0, 0, 0, 1)
			au = append(au, b[4:4+n]...)
			b = b[4+n:]
		}
		aus = append(aus, au)
		ptsOff = append(ptsOff, int((s.PTSOffset-base)/dur))
		keys = append(keys, !s.IsNonSyncSample)
	}
	return aus, ptsOff, keys
}
