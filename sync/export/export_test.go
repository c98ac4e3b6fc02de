package export_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foxglove/mcap/go/mcap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/mcapcheck"
	"github.com/episoded/episoded/sync/export"
	"github.com/episoded/episoded/sync/internal/synctest"
)

func writeAttachment(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "robot1.urdf")
	if err := os.WriteFile(p, []byte(`<robot name="robot1"><link name="base"/></robot>`), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func exportBytes(t *testing.T, src export.Source, id string, o export.Options) ([]byte, export.Stats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := export.Write(context.Background(), &buf, src, id, o)
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	if st.Size != int64(buf.Len()) {
		t.Fatalf("stats size %d, wrote %d", st.Size, buf.Len())
	}
	return buf.Bytes(), st
}

func TestExportDeterministicAndComplete(t *testing.T) {
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-000000000001", Video: true, Lidar: true, Telemetry: true})
	att := writeAttachment(t)
	var progress []export.Progress
	a, stats := exportBytes(t, st, fx.Episode.ID, export.Options{Attachments: []string{att}, Progress: func(p export.Progress) { progress = append(progress, p) }})
	// The upload state changes the episode record; the export must not.
	e := fx.Episode
	e.State, e.Reason, e.Updated = episode.Uploading, "x", e.Updated+12345
	if err := st.PutEpisode(e); err != nil {
		t.Fatal(err)
	}
	b, _ := exportBytes(t, st, fx.Episode.ID, export.Options{Attachments: []string{att}})
	if !bytes.Equal(a, b) {
		t.Fatalf("two exports differ: sha256 %x vs %x (%d vs %d bytes)", sha256.Sum256(a), sha256.Sum256(b), len(a), len(b))
	}
	for stream, n := range fx.Counts {
		if stats.Streams[stream] != n {
			t.Errorf("stream %s: exported %d samples, stored %d", stream, stats.Streams[stream], n)
		}
	}
	if len(progress) == 0 || progress[len(progress)-1].Messages != stats.Messages || progress[len(progress)-1].Written != stats.Size {
		t.Errorf("last progress %+v does not match stats %d msgs %d bytes", progress, stats.Messages, stats.Size)
	}

	// Go-side check with the mcap library's reader, decoding video with
	// the schema carried in the file (dynamicpb), so the descriptor set is
	// proven usable.
	r, err := mcap.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	info, err := r.Info()
	if err != nil {
		t.Fatalf("info: %v", err)
	}
	if info.Header.Library != export.Library {
		t.Errorf("library %q", info.Header.Library)
	}
	it, err := r.Messages(mcap.UsingIndex(true))
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	keyframes := map[string]int{}
	var last uint64
	msg := &mcap.Message{}
	for {
		schema, ch, m, err := it.NextInto(msg)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if m.LogTime < last {
			t.Fatalf("messages out of log-time order")
		}
		last = m.LogTime
		counts[ch.Topic]++
		if ch.Topic == "factory/cell1/robot1/status" { // CBOR on the wire, JSON in the file
			var v map[string]any
			if err := json.Unmarshal(m.Data, &v); err != nil || v["mode"] != "auto" || v["raw"] != "AQID" || ch.MessageEncoding != "json" {
				t.Fatalf("converted CBOR message %q: %v", m.Data, err)
			}
		}
		if ch.Topic == "factory/cell1/robot1/joint_states" && !json.Valid(m.Data) {
			t.Fatalf("invalid JSON on %s: %q", ch.Topic, m.Data)
		}
		if schema != nil && schema.Name == export.SchemaCompressedVideo {
			data, format, frameID := decodeVideo(t, schema, m.Data)
			if frameID != ch.Topic {
				t.Errorf("frame_id %q on %s", frameID, ch.Topic)
			}
			if checkAnnexB(t, data, format == "h265", fx.Params[ch.Topic]) {
				keyframes[ch.Topic]++
			}
		}
	}
	for _, cam := range []string{"cell1/cam-top", "cell1/cam-side"} {
		if counts[cam] != fx.Counts[cam] {
			t.Errorf("%s: %d messages, stored %d", cam, counts[cam], fx.Counts[cam])
		}
		if keyframes[cam] != fx.Keyframes[cam] || keyframes[cam] == 0 {
			t.Errorf("%s: %d keyframes with parameter sets, stored %d keyframes", cam, keyframes[cam], fx.Keyframes[cam])
		}
	}
	js := "factory/cell1/robot1/joint_states"
	if counts[js]+counts[js+"/raw"] != fx.Counts["cell1/robot1/joint_states"] || counts[js+"/raw"] == 0 {
		t.Errorf("json: %d + %d raw, stored %d", counts[js], counts[js+"/raw"], fx.Counts["cell1/robot1/joint_states"])
	}
	if counts["cell1/lidar/raw"] != 1 || counts["cell1/lidar"] != fx.Counts["cell1/lidar"]-1 {
		t.Errorf("lidar: %d + %d raw", counts["cell1/lidar"], counts["cell1/lidar/raw"])
	}

	// The independent reader.
	rep := runNodeCheck(t, a)
	if len(rep.Errors) > 0 {
		t.Fatalf("node reader errors: %v", rep.Errors)
	}
	if !rep.Stream.Done {
		t.Errorf("stream reader did not reach the end of the file")
	}
	for topic, n := range counts {
		if rep.Stream.Counts[topic] != n || rep.Indexed.Counts[topic] != n {
			t.Errorf("topic %s: go %d, node stream %d, node indexed %d", topic, n, rep.Stream.Counts[topic], rep.Indexed.Counts[topic])
		}
	}
	if len(rep.Stream.Counts) != len(counts) {
		t.Errorf("node sees topics %v, go %v", rep.Stream.Counts, counts)
	}
	if rep.Stream.OutOfOrder != 0 || rep.Indexed.OutOfOrder != 0 {
		t.Errorf("node: out of order messages")
	}
	for _, cam := range []string{"cell1/cam-top", "cell1/cam-side"} {
		v := rep.Stream.Video[cam]
		if v.NotAnnexB != 0 || uint64(v.AnnexB) != fx.Counts[cam] || v.Keyframes != fx.Keyframes[cam] || v.KeyframesWithParams != v.Keyframes {
			t.Errorf("node video %s: %+v (stored %d, %d keyframes)", cam, v, fx.Counts[cam], fx.Keyframes[cam])
		}
	}
	wantSchema := map[string]string{"cell1/cam-top": export.SchemaCompressedVideo, "cell1/lidar": export.SchemaPointCloud, js: ""}
	for _, c := range rep.Stream.Channels {
		if want, ok := wantSchema[c.Topic]; ok && c.Schema != want {
			t.Errorf("channel %s: schema %q, want %q", c.Topic, c.Schema, want)
		}
		if c.Topic == js && c.MessageEncoding != "json" {
			t.Errorf("channel %s encoding %q", c.Topic, c.MessageEncoding)
		}
		if c.Schema != "" && c.SchemaEncoding != "protobuf" {
			t.Errorf("channel %s schema encoding %q", c.Topic, c.SchemaEncoding)
		}
	}
	if rep.Indexed.Chunks == 0 || rep.Stream.RecordCounts["MessageIndex"] == 0 || len(rep.Indexed.ChunkCompression) != 1 || rep.Indexed.ChunkCompression[0] != "zstd" {
		t.Errorf("chunks: %v %v", rep.Stream.RecordCounts, rep.Indexed.ChunkCompression)
	}
	if len(rep.Indexed.Metadata) != 1 || rep.Indexed.Metadata[0].Manifest.ID != fx.Episode.ID ||
		strings.Join(rep.Indexed.Metadata[0].Keys, ",") != "manifest,quality" {
		t.Errorf("metadata %+v", rep.Indexed.Metadata)
	}
	if len(rep.Indexed.Attachments) != 1 || rep.Indexed.Attachments[0].Name != "robot1.urdf" || rep.Indexed.Attachments[0].MediaType != "application/xml" {
		t.Errorf("attachments %+v", rep.Indexed.Attachments)
	}
	if uint64(rep.Indexed.StatisticsMessageCount) != stats.Messages {
		t.Errorf("statistics %d, exported %d", rep.Indexed.StatisticsMessageCount, stats.Messages)
	}

	// The checker must be able to fail: one flipped byte inside the
	// compressed chunk data breaks a CRC (or the zstd frame).
	bad := bytes.Clone(a)
	bad[len(bad)/2] ^= 0x40
	if rep := runNodeCheck(t, bad); len(rep.Errors) == 0 {
		t.Errorf("node reader accepted a corrupted file")
	}
}

func decodeVideo(t *testing.T, schema *mcap.Schema, data []byte) ([]byte, string, string) {
	t.Helper()
	var fds descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(schema.Data, &fds); err != nil {
		t.Fatalf("schema: %v", err)
	}
	files, err := protodesc.NewFiles(&fds)
	if err != nil {
		t.Fatalf("schema files: %v", err)
	}
	d, err := files.FindDescriptorByName(protoreflect.FullName(schema.Name))
	if err != nil {
		t.Fatalf("find %s: %v", schema.Name, err)
	}
	m := dynamicpb.NewMessage(d.(protoreflect.MessageDescriptor))
	if err := proto.Unmarshal(data, m); err != nil {
		t.Fatalf("decode video: %v", err)
	}
	f := m.Descriptor().Fields()
	ts := m.Get(f.ByName("timestamp")).Message()
	if ts.Get(ts.Descriptor().Fields().ByName("seconds")).Int() == 0 {
		t.Fatalf("video timestamp not set")
	}
	return m.Get(f.ByName("data")).Bytes(), m.Get(f.ByName("format")).String(), m.Get(f.ByName("frame_id")).String()
}

// checkAnnexB checks data is Annex-B and, if it holds an IRAP slice, that
// exactly the descriptor's parameter sets come first; it reports whether
// it was a keyframe.
func checkAnnexB(t *testing.T, data []byte, hevc bool, params [][]byte) bool {
	t.Helper()
	if !bytes.HasPrefix(data, []byte{0, 0, 0, 1}) {
		t.Fatalf("video message is not Annex-B: % x", data[:min(8, len(data))])
	}
	nalus := bytes.Split(data[4:], []byte{0, 0, 0, 1})
	key := -1
	for i, n := range nalus {
		typ := int(n[0] & 0x1f)
		if hevc {
			typ = int(n[0]>>1) & 0x3f
		}
		if (!hevc && typ == 5) || (hevc && typ >= 16 && typ <= 21) {
			key = i
			break
		}
	}
	if key < 0 {
		return false
	}
	if key < len(params) {
		t.Fatalf("keyframe without parameter sets in front")
	}
	for i, p := range params {
		if !bytes.Equal(nalus[i], p) {
			t.Fatalf("parameter set %d differs from the descriptor's", i)
		}
	}
	return true
}

type nodeReport struct {
	Errors []string `json:"errors"`
	Stream struct {
		Done         bool              `json:"done"`
		Counts       map[string]uint64 `json:"counts"`
		RecordCounts map[string]int    `json:"recordCounts"`
		OutOfOrder   int               `json:"outOfOrder"`
		Video        map[string]struct {
			Format              string `json:"format"`
			AnnexB              int    `json:"annexB"`
			NotAnnexB           int    `json:"notAnnexB"`
			Keyframes           int    `json:"keyframes"`
			KeyframesWithParams int    `json:"keyframesWithParams"`
			First               *struct {
				Keyframe   bool `json:"keyframe"`
				WithParams bool `json:"withParams"`
			} `json:"first"`
		} `json:"video"`
		Channels []struct {
			Topic           string `json:"topic"`
			MessageEncoding string `json:"messageEncoding"`
			Schema          string `json:"schema"`
			SchemaEncoding  string `json:"schemaEncoding"`
		} `json:"channels"`
	} `json:"stream"`
	Indexed struct {
		Counts                 map[string]uint64 `json:"counts"`
		OutOfOrder             int               `json:"outOfOrder"`
		SeqOutOfOrder          map[string]int    `json:"seqOutOfOrder"`
		Chunks                 int               `json:"chunks"`
		ChunkCompression       []string          `json:"chunkCompression"`
		StatisticsMessageCount int64             `json:"statisticsMessageCount"`
		Metadata               []struct {
			Keys     []string        `json:"keys"`
			Manifest export.Manifest `json:"manifest"`
		} `json:"metadata"`
		Attachments []struct {
			Name      string `json:"name"`
			MediaType string `json:"mediaType"`
		} `json:"attachments"`
	} `json:"indexed"`
}

func runNodeCheck(t *testing.T, data []byte) nodeReport {
	t.Helper()
	out := mcapcheck.Run(t, data)
	var rep nodeReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("node report: %v\n%s", err, out)
	}
	t.Logf("node report: %s", bytes.TrimSpace(out)[:min(600, len(bytes.TrimSpace(out)))])
	return rep
}

func TestExportHandler(t *testing.T) {
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-000000000002", Telemetry: true})
	rec := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-000000000003", Telemetry: true, State: episode.Recording})
	mux := http.NewServeMux()
	mux.Handle("GET /v1/episodes/{id}/export", export.Handler(st, export.HandlerOptions{}))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	want, _ := exportBytes(t, st, fx.Episode.ID, export.Options{})
	resp, err := http.Get(srv.URL + "/v1/episodes/" + fx.Episode.ID + "/export")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got, want) || resp.Header.Get("Content-Type") != "application/x-mcap" {
		t.Fatalf("status %d, %d bytes (want %d), type %q", resp.StatusCode, len(got), len(want), resp.Header.Get("Content-Type"))
	}
	for id, code := range map[string]int{"nope": 404, rec.Episode.ID: 409} {
		resp, err := http.Get(srv.URL + "/v1/episodes/" + id + "/export")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("%s: status %d, want %d", id, resp.StatusCode, code)
		}
		// The API's one error format (internal/httpjson).
		var e struct{ Error string }
		if err := json.Unmarshal(body, &e); err != nil || e.Error == "" || resp.Header.Get("Content-Type") != "application/json" ||
			resp.Header.Get("Content-Disposition") != "" {
			t.Errorf("%s: error answered as %q %q: %v", id, resp.Header.Get("Content-Type"), body, err)
		}
	}
}

func TestExportCancelled(t *testing.T) {
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-000000000004", RawBytes: 8 << 20, RawChunk: 4096})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := export.Write(ctx, io.Discard, st, fx.Episode.ID, export.Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

// exportGoldenSHA256 is the sha256 of the fixture's export below, taken
// before export kept its zstd encoder and output buffer between exports
// (wave 4): reusing them must not change a byte. Change it only with a
// deliberate change of the output format, saying so in the commit. Wave 5
// changed it once: the chunks' zstd window went from 8 MiB to 1 MiB
// (exportWindow), which changes the zstd frames and nothing a reader
// decodes (the fixture's export went from 551,039 to 551,059 bytes).
const exportGoldenSHA256 = "33f9c0ef52df5da22ad2434880d9f90df530bef517ee724518a503355c6c7e6b"

// TestExportGolden pins the bytes of one fixture's export, and checks that
// an export made with a writer state reused from earlier exports (of this
// episode and of a different one, whose encoder history must not leak in)
// gives the same bytes.
func TestExportGolden(t *testing.T) {
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000a1", Video: true, Lidar: true, Telemetry: true})
	other := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000a2", Cell: "cell2",
		Start: time.Date(2026, 11, 26, 22, 0, 0, 0, time.UTC), Video: true, Telemetry: true})
	att := writeAttachment(t)
	o := export.Options{Attachments: []string{att}}
	for i, id := range []string{fx.Episode.ID, other.Episode.ID, fx.Episode.ID} {
		b, _ := exportBytes(t, st, id, o)
		if id != fx.Episode.ID {
			continue
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(b)); got != exportGoldenSHA256 {
			t.Errorf("export %d of the fixture: sha256 %s (%d bytes), want %s", i, got, len(b), exportGoldenSHA256)
		}
	}
}
