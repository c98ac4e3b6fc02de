package dataset_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/episoded/episoded/assets"
	"github.com/episoded/episoded/sync/dataset"
	"github.com/episoded/episoded/sync/dataset/datasetcheck"
)

const t0 = int64(1_795_000_000_000_000_000)

const period = int64(1e9) / 30

func joints(start int64, seconds int) telemetry {
	tl := telemetry{topic: "cell1/robot/joint_states"}
	for i := 0; i < seconds*100+1; i++ {
		ts := start + int64(i)*10_000_000 + 1_234_567
		tl.t = append(tl.t, ts)
		x := float64(i) / 100
		tl.msgs = append(tl.msgs, map[string]any{"position": []float64{x, -x, 2 * x}, "grip": i%200 < 100})
	}
	return tl
}

func testMapping(t *testing.T, missing string, cams ...string) *dataset.Mapping {
	return testMappingCodec(t, missing, "h264", cams...)
}

func testMappingCodec(t *testing.T, missing, codec string, cams ...string) *dataset.Mapping {
	t.Helper()
	y := "fps: 30\nrobot_type: test\nmissing: " + missing + "\ncodec: " + codec + "\nstate:\n  - topic: cell1/robot/joint_states\n    field: position\n    interpolate: linear\n  - topic: cell1/robot/joint_states\n    field: grip\naction:\n  next_state: true\ncameras:\n"
	for _, c := range cams {
		y += "  - stream: cell1/" + c + "\n    name: " + c + "\n"
	}
	m, err := dataset.ParseMapping([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// frames stamps access units at start + (i+ptsOff)·period plus jitter,
// leaving out decode indices in [cutFrom, cutTo).
func frames(aus [][]byte, ptsOff []int, start int64, jitter int64, seed uint64, cutFrom, cutTo int) []camFrame {
	r := rand.New(rand.NewPCG(seed, 1))
	var out []camFrame
	for i, au := range aus {
		if i >= cutFrom && i < cutTo {
			continue
		}
		j := int64(0)
		if jitter > 0 {
			j = r.Int64N(2*jitter+1) - jitter
		}
		off := 0
		if ptsOff != nil {
			off = ptsOff[i]
		}
		dts := start + int64(i)*period + j
		out = append(out, camFrame{dts: dts, pts: start + int64(i+off)*period + j, au: au})
	}
	return out
}

func build(t *testing.T, src, out string, m *dataset.Mapping) dataset.Summary {
	t.Helper()
	sum, err := dataset.Build(context.Background(), dataset.DirSource(src), dataset.Options{Out: out, Mapping: m, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary:\n%s", sum)
	return sum
}

// TestCameraOutageAndJitter: a camera with ±12 ms jitter and a 2 s outage
// cannot be remuxed (rows in the outage repeat the last frame), so it is
// re-encoded with ffmpeg; a gap-free camera beside it is remuxed. Both
// must load as LeRobot loads them. The split and drop-episode policies
// take the same input.
func TestCameraOutageAndJitter(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ffmpeg, node and PyAV; skipped under -short")
	}
	aus, _, _ := ffmpegClip(t, 8, 0, 30)
	src := t.TempDir()
	// The outage removes decode frames 90..149: two whole GOPs, so the
	// camera resumes on a keyframe as a real one does after a reconnect.
	fakeEpisode(t, src, "ep1", "stack", t0, []telemetry{joints(t0, 8)}, map[string][]camFrame{
		"cell1/clean":  frames(aus, nil, t0, 1_000_000, 1, 0, 0),
		"cell1/jitter": frames(aus, nil, t0, 12_000_000, 2, 90, 150),
	})

	t.Run("fill-previous", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "ds")
		sum := build(t, src, out, testMapping(t, dataset.PolicyFillPrevious, "clean", "jitter"))
		if sum.Remuxed != 1 || sum.Reencoded != 1 {
			t.Errorf("remuxed %d, re-encoded %d; want 1 and 1", sum.Remuxed, sum.Reencoded)
		}
		if sum.RepeatedFrames < 55 || sum.FilledRows < 55 || sum.MissingRows != sum.FilledRows {
			t.Errorf("a 2 s outage at 30 fps: %d repeated frames, %d filled of %d missing rows; want about 60", sum.RepeatedFrames, sum.FilledRows, sum.MissingRows)
		}
		rep := datasetcheck.Run(t, out)
		if rep.Episodes != 1 || rep.Frames < 235 {
			t.Errorf("%d episodes, %d rows", rep.Episodes, rep.Frames)
		}
	})
	t.Run("av1", func(t *testing.T) {
		if out, _ := exec.Command("ffmpeg", "-hide_banner", "-encoders").Output(); !strings.Contains(string(out), " libsvtav1 ") {
			t.Skip("this ffmpeg has no libsvtav1; the H.264 re-encode is tested above")
		}
		out := filepath.Join(t.TempDir(), "ds")
		sum := build(t, src, out, testMappingCodec(t, dataset.PolicyFillPrevious, "auto", "clean", "jitter"))
		if sum.Reencoded != 1 {
			t.Errorf("re-encoded %d", sum.Reencoded)
		}
		datasetcheck.Run(t, out)
		info, err := os.ReadFile(filepath.Join(out, "meta", "info.json"))
		if err != nil || !strings.Contains(string(info), `"video.codec": "av1"`) {
			t.Errorf("info.json does not name av1 for the re-encoded camera: %v", err)
		}
	})
	t.Run("split", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "ds")
		sum := build(t, src, out, testMapping(t, dataset.PolicySplit, "clean", "jitter"))
		if sum.DroppedRows < 55 || sum.RepeatedFrames != 0 {
			t.Errorf("split: %d rows left out, %d repeated frames", sum.DroppedRows, sum.RepeatedFrames)
		}
		rep := datasetcheck.Run(t, out)
		if rep.Episodes != 2 {
			t.Errorf("split made %d episodes, want 2", rep.Episodes)
		}
	})
	t.Run("drop-episode", func(t *testing.T) {
		src2 := t.TempDir()
		fakeEpisode(t, src2, "ep0", "stack", t0-100e9, []telemetry{joints(t0-100e9, 4)}, map[string][]camFrame{
			"cell1/clean":  frames(aus[:120], nil, t0-100e9, 0, 3, 0, 0),
			"cell1/jitter": frames(aus[:120], nil, t0-100e9, 0, 4, 0, 0),
		})
		os.Rename(filepath.Join(src, "ep1"), filepath.Join(src2, "ep1"))
		defer os.Rename(filepath.Join(src2, "ep1"), filepath.Join(src, "ep1"))
		out := filepath.Join(t.TempDir(), "ds")
		sum := build(t, src2, out, testMapping(t, dataset.PolicyDropEpisode, "clean", "jitter"))
		if sum.Dropped != 1 || len(sum.DroppedEpisodes) != 1 || !strings.Contains(sum.DroppedEpisodes[0], "ep1") {
			t.Errorf("drop-episode: %+v", sum)
		}
		rep := datasetcheck.Run(t, out)
		if rep.Episodes != 1 {
			t.Errorf("%d episodes, want the clean one only", rep.Episodes)
		}
	})
	t.Run("no-ffmpeg", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := dataset.Build(context.Background(), dataset.DirSource(src),
			dataset.Options{Out: filepath.Join(t.TempDir(), "ds"), Mapping: testMapping(t, dataset.PolicyFillPrevious, "clean", "jitter")})
		if !errors.Is(err, dataset.ErrNoFFmpeg) || !strings.Contains(err.Error(), "cell1/jitter") {
			t.Fatalf("without ffmpeg: %v; want ErrNoFFmpeg naming the camera", err)
		}
	})
}

// TestBFrameCamera: a camera whose stream has B-frames (ffmpeg libx264
// -bf 2), delivered in decode order with presentation timestamps, is
// remuxed with composition offsets; with a gap it is re-encoded. PyAV must
// find every row's frame at its timestamp.
func TestBFrameCamera(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ffmpeg, node and PyAV; skipped under -short")
	}
	aus, off, _ := ffmpegClip(t, 6, 2, 30)
	reordered := false
	for _, o := range off {
		reordered = reordered || o < 0
	}
	if !reordered {
		t.Fatal("ffmpeg made no B-frames")
	}
	src := t.TempDir()
	fakeEpisode(t, src, "ep1", "pick", t0, []telemetry{joints(t0, 6)}, map[string][]camFrame{
		"cell1/bf":    frames(aus, off, t0, 0, 1, 0, 0),
		"cell1/bfgap": frames(aus, off, t0, 0, 2, 60, 90),
	})
	out := filepath.Join(t.TempDir(), "ds")
	sum := build(t, src, out, testMapping(t, dataset.PolicyFillPrevious, "bf", "bfgap"))
	if sum.Remuxed != 1 || sum.Reencoded != 1 {
		t.Errorf("remuxed %d, re-encoded %d; want 1 and 1", sum.Remuxed, sum.Reencoded)
	}
	datasetcheck.Run(t, out)
}

// TestQualityFilterAndAppend: --quality ok leaves degraded episodes out;
// the episodes table carries id, verdict, coverage; a later build over
// more episodes appends only the new ones, and gives the same files as
// building once.
func TestQualityFilterAndAppend(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ffmpeg, node and PyAV; skipped under -short")
	}
	aus, _, _ := ffmpegClip(t, 2, 0, 30)
	src := t.TempDir()
	for i, v := range []string{"ok", "degraded", "ok"} {
		start := t0 + int64(i)*100e9
		id := "ep" + string(rune('1'+i))
		fakeEpisodeVerdict(t, src, id, "task "+v, v, start, []telemetry{joints(start, 2)}, map[string][]camFrame{
			"cell1/cam": frames(aus, nil, start, 0, uint64(i), 0, 0),
		})
	}
	m := testMapping(t, dataset.PolicyFillPrevious, "cam")
	out := filepath.Join(t.TempDir(), "ds")
	sum, err := dataset.Build(context.Background(), dataset.DirSource(src), dataset.Options{Out: out, Mapping: m, Quality: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Added != 2 || sum.Filtered != 1 {
		t.Fatalf("--quality ok: %+v", sum)
	}
	rep := datasetcheck.Run(t, out)
	if len(rep.Tasks) != 1 || rep.Tasks[0] != "task ok" {
		t.Errorf("tasks %v", rep.Tasks)
	}

	// Build once over everything, and in two steps: same bytes.
	once := filepath.Join(t.TempDir(), "once")
	build(t, src, once, m)
	inc := filepath.Join(t.TempDir(), "inc")
	build(t, filepath.Join(src, "ep1"), inc, m)
	sum = build(t, src, inc, m)
	if sum.Added != 2 || sum.AlreadyPresent != 1 || sum.Episodes != 3 {
		t.Errorf("append: %+v", sum)
	}
	datasetcheck.Run(t, inc)
	a, b := treeHash(t, once), treeHash(t, inc)
	if len(a) != len(b) {
		t.Errorf("%d files appending, %d building once", len(b), len(a))
	}
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s differs between appending and building once", k)
		}
	}
	info, _ := os.ReadFile(filepath.Join(once, "meta", "info.json"))
	for _, want := range []string{`"total_tasks": 2`, `"source_episodes": [`, `"ep2"`} {
		if !strings.Contains(string(info), want) {
			t.Errorf("info.json lacks %s", want)
		}
	}
}

// h265Clip returns the repository's H.265 clip (made by ffmpeg/libx265,
// see package assets) as Annex-B access units, with the parameter sets in
// front of every IRAP picture as the export writes them.
func h265Clip(t *testing.T) [][]byte {
	t.Helper()
	aus, err := assets.H265AccessUnits()
	if err != nil {
		t.Fatal(err)
	}
	var params [][]byte
	for _, n := range aus[0] {
		if typ := (n[0] >> 1) & 0x3f; typ >= 32 && typ <= 34 {
			params = append(params, n)
		}
	}
	var out [][]byte
	for _, au := range aus {
		irap, has := false, false
		for _, n := range au {
			typ := (n[0] >> 1) & 0x3f
			irap = irap || typ >= 16 && typ <= 21
			has = has || typ >= 32 && typ <= 34
		}
		var b []byte
		if irap && !has {
			for _, p := range params {
				b = append(append(b, 0, 0, 0, 1), p...)
			}
		}
		for _, n := range au {
			b = append(append(b, 0, 0, 0, 1), n...)
		}
		out = append(out, b)
	}
	return out
}

// TestH265Camera: an H.265 camera is remuxed (hvc1 in the MP4) when it is
// on the grid, and re-encoded when it has a gap.
func TestH265Camera(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ffmpeg, node and PyAV; skipped under -short")
	}
	needFFmpeg(t)
	aus := h265Clip(t)
	src := t.TempDir()
	fakeEpisode(t, src, "ep1", "pick", t0, []telemetry{joints(t0, 4)}, map[string][]camFrame{
		"cell1/h265":    frames(aus, nil, t0, 1_000_000, 1, 0, 0),
		"cell1/h265gap": frames(aus, nil, t0, 1_000_000, 2, 30, 60),
	})
	out := filepath.Join(t.TempDir(), "ds")
	sum := build(t, src, out, testMapping(t, dataset.PolicyFillPrevious, "h265", "h265gap"))
	if sum.Remuxed != 1 || sum.Reencoded != 1 {
		t.Errorf("remuxed %d, re-encoded %d; want 1 and 1", sum.Remuxed, sum.Reencoded)
	}
	datasetcheck.Run(t, out)
	info, _ := os.ReadFile(filepath.Join(out, "meta", "info.json"))
	if !strings.Contains(string(info), `"video.codec": "hevc"`) {
		t.Errorf("info.json does not say hevc for the remuxed H.265 camera")
	}
}

// TestAppendManyDataFiles: with data files rolling every ~100 rows,
// appending episode by episode (each append reads back only the last data
// file) gives the same files as building once, in several data files.
func TestAppendManyDataFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ffmpeg, node and PyAV; skipped under -short")
	}
	defer dataset.SetDataFileBytes(100 * 80)()
	aus, _, _ := ffmpegClip(t, 2, 0, 30)
	src := t.TempDir()
	var ids []string
	for i := 0; i < 5; i++ {
		start := t0 + int64(i)*100e9
		id := "ep" + string(rune('1'+i))
		ids = append(ids, id)
		fakeEpisode(t, src, id, "pick", start, []telemetry{joints(start, 2)}, map[string][]camFrame{
			"cell1/cam": frames(aus, nil, start, 0, uint64(i), 0, 0),
		})
	}
	m := testMapping(t, dataset.PolicyFillPrevious, "cam")
	once := filepath.Join(t.TempDir(), "once")
	build(t, src, once, m)
	inc := filepath.Join(t.TempDir(), "inc")
	for _, id := range ids {
		build(t, filepath.Join(src, id), inc, m)
	}
	rep := datasetcheck.Run(t, inc)
	if rep.Episodes != 5 {
		t.Errorf("%d episodes", rep.Episodes)
	}
	files, _ := filepath.Glob(filepath.Join(inc, "data", "*", "*.parquet"))
	if len(files) < 3 {
		t.Errorf("%d data files; the test wants several", len(files))
	}
	a, b := treeHash(t, once), treeHash(t, inc)
	if len(a) != len(b) {
		t.Errorf("%d files appending, %d building once", len(b), len(a))
	}
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s differs between appending and building once", k)
		}
	}
}
