package dataset_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/episoded/episoded/sync/dataset"
	"github.com/episoded/episoded/sync/dataset/datasetcheck"
)

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
}

// TestCheckerFails shows the independent checker rejects datasets that
// LeRobot would not load or would fail on: a wrong total, video frames off
// the grid by 5 ms, and a fragmented MP4.
func TestCheckerFails(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ffmpeg, node and PyAV; skipped under -short")
	}
	aus, _, _ := ffmpegClip(t, 2, 0, 30)
	src := t.TempDir()
	fakeEpisode(t, src, "ep1", "pick", t0, []telemetry{joints(t0, 2)}, map[string][]camFrame{"cell1/cam": frames(aus, nil, t0, 0, 1, 0, 0)})
	good := filepath.Join(t.TempDir(), "good")
	build(t, src, good, testMapping(t, dataset.PolicyFillPrevious, "cam"))
	datasetcheck.Run(t, good)
	mp4 := filepath.Join("videos", "observation.images.cam", "chunk-000", "file-000.mp4")

	for _, tc := range []struct {
		name, want string
		breakIt    func(dir string)
	}{
		{"total_frames", "total_frames", func(dir string) {
			p := filepath.Join(dir, "meta", "info.json")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(strings.Replace(string(b), `"total_frames": `, `"total_frames": 1`, 1)), 0o644)
		}},
		{"off-grid", "FrameTimestampError", func(dir string) {
			p := filepath.Join(dir, mp4)
			tmp := p + ".shift.mp4"
			if out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-i", p, "-c", "copy", "-output_ts_offset", "0.005", tmp).CombinedOutput(); err != nil {
				t.Fatalf("ffmpeg: %v %s", err, out)
			}
			os.Rename(tmp, p)
		}},
		{"fragmented", "not a progressive MP4", func(dir string) {
			p := filepath.Join(dir, mp4)
			tmp := p + ".frag.mp4"
			if out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-i", p, "-c", "copy", "-movflags", "frag_keyframe+empty_moov", tmp).CombinedOutput(); err != nil {
				t.Fatalf("ffmpeg: %v %s", err, out)
			}
			os.Rename(tmp, p)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ds")
			copyTree(t, good, dir)
			tc.breakIt(dir)
			probs := datasetcheck.RunExpectFail(t, dir)
			if !strings.Contains(strings.Join(probs, "\n"), tc.want) {
				t.Errorf("problems %q; want one about %q", probs, tc.want)
			}
		})
	}
}
