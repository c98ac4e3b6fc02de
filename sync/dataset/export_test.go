package dataset_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/video"
	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/sync/dataset"
	"github.com/episoded/episoded/sync/dataset/datasetcheck"
	"github.com/episoded/episoded/sync/export"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// TestFromRealExport goes through the real export (sync/export over a
// real store): an H.264 camera, an H.265 camera and a B-frame H.264
// camera (ffmpeg -bf 2, stored in decode order with presentation offsets)
// plus JSON joint states become a dataset the independent checker loads.
func TestFromRealExport(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ffmpeg, node and PyAV; skipped under -short")
	}
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{Video: true, Telemetry: true, Duration: 4 * time.Second})
	e := fx.Episode

	// The B-frame camera: frames in decode order, T the decode time,
	// PTSOffset the presentation offset, SPS/PPS in the descriptor.
	aus, off, keys := ffmpegClip(t, 4, 2, 30)
	var params [][]byte
	for _, n := range video.SplitAnnexB(aus[0]) {
		if video.H264.ParamSlot(n) >= 0 {
			params = append(params, n)
		}
	}
	const bf = "cell1/cam-bf"
	if _, err := st.PutDescriptor(sample.Descriptor{Stream: bf, Kind: sample.KindVideo, Codec: sample.CodecH264, Params: params,
		Device: "cam-bf", Source: "rtsp://cam-bf.local/", Clock: sample.ClockDevice}); err != nil {
		t.Fatal(err)
	}
	e.Streams = append(e.Streams, bf)
	if err := st.PutEpisode(e); err != nil {
		t.Fatal(err)
	}
	var smp []sample.Sample
	for i, au := range aus {
		s := sample.Sample{Stream: bf, Seq: uint64(i + 1), T: e.Start + int64(i)*period, PTSOffset: int64(off[i]) * period, Payload: au}
		s.RecvT = s.T
		if keys[i] {
			s.Flags = sample.Keyframe
		}
		smp = append(smp, s)
	}
	synctest.Append(t, st, smp)

	src := t.TempDir()
	dir := filepath.Join(src, e.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, upload.ObjectMCAP))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	stats, err := export.Write(context.Background(), f, st, e.ID, export.Options{})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(f.Name())
	h.Write(b)
	man, _ := json.Marshal(upload.Manifest{Format: upload.ManifestFormat, Episode: e.ID, Cell: e.Cell, Task: e.Task, Start: e.Start, Stop: e.Stop,
		Objects: []upload.ManifestObject{{Name: upload.ObjectMCAP, Key: e.ID + "/" + upload.ObjectMCAP, Size: stats.Size, SHA256: hex.EncodeToString(h.Sum(nil))}}})
	if err := os.WriteFile(filepath.Join(dir, upload.ObjectManifest), man, 0o644); err != nil {
		t.Fatal(err)
	}

	m, err := dataset.ParseMapping([]byte(`
fps: 30
state:
  - {topic: factory/cell1/robot1/joint_states, field: position, interpolate: linear}
action: {next_state: true}
cameras:
  - {stream: cell1/cam-top, name: top}
  - {stream: cell1/cam-side, name: side}
  - {stream: cell1/cam-bf, name: bf}
`))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "ds")
	sum := build(t, src, out, m)
	if sum.Remuxed != 3 || sum.Reencoded != 0 {
		t.Errorf("remuxed %d, re-encoded %d; want every camera remuxed", sum.Remuxed, sum.Reencoded)
	}
	rep := datasetcheck.Run(t, out)
	if rep.Episodes != 1 || rep.Frames < 100 || len(rep.Tasks) != 1 || rep.Tasks[0] != "pick" {
		t.Errorf("%d episodes, %d rows, tasks %v", rep.Episodes, rep.Frames, rep.Tasks)
	}
	info, _ := os.ReadFile(filepath.Join(out, "meta", "info.json"))
	if !strings.Contains(string(info), `"hevc"`) {
		t.Errorf("info.json: no hevc camera")
	}
}
