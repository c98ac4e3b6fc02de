// Package datasetcheck runs the independent LeRobot v3.0 checker on a
// dataset directory from tests: check.mjs (LeRobot's loading rules over
// parquet read with npm hyparquet) then check_frames.py (every row's frame
// decoded with Debian's python3-av, PyAV being LeRobot's fallback decoder,
// within 1e-4 s). Neither reuses any episoded code.
package datasetcheck

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/episoded/episoded/internal/npmcache"
)

// Report is check.mjs's summary plus the frame check's.
type Report struct {
	OK       bool     `json:"ok"`
	Problems []string `json:"problems"`
	Episodes int      `json:"episodes"`
	Frames   int      `json:"frames"`
	Tasks    []string `json:"tasks"`
	// Ranges gives min, max and the count of true values of every scalar
	// column.
	Ranges map[string]struct {
		Min, Max float64
		Trues    int
	} `json:"ranges"`
	// Extra holds each episode's episoded/... columns.
	Extra  []map[string]any `json:"extra"`
	Videos []struct {
		File    string    `json:"file"`
		Key     string    `json:"key"`
		Episode int       `json:"episode"`
		Queries []float64 `json:"queries"`
	} `json:"videos"`
	Decode struct {
		OK       bool     `json:"ok"`
		Problems []string `json:"problems"`
		Files    int      `json:"files"`
		Queries  int      `json:"queries"`
		WorstS   float64  `json:"worst_s"`
	}
}

func srcDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "lerobotcheck")
}

// python returns a python3 that can import av (Debian's python3-av lives
// in /usr/bin/python3, which a pyenv shim on PATH may hide).
func python(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if err := exec.Command(p, "-c", "import av").Run(); err == nil {
			return p
		}
	}
	if testing.Short() {
		t.Skip("no python3 with the av module (Debian python3-av); skipped under -short")
	}
	t.Fatal("no python3 with the av module: install Debian's python3-av")
	return ""
}

// Run checks dir and returns the report; any broken rule fails t.
func Run(t testing.TB, dir string) Report {
	t.Helper()
	rep, out, ok := run(t, dir)
	if !ok {
		t.Fatalf("dataset %s fails the independent LeRobot check:\n%s", dir, out)
	}
	return rep
}

// RunExpectFail checks dir and returns the problems found (for tests that
// show the checker can fail).
func RunExpectFail(t testing.TB, dir string) []string {
	t.Helper()
	rep, _, ok := run(t, dir)
	if ok {
		t.Fatalf("the independent check passed a dataset that should fail")
	}
	return append(rep.Problems, rep.Decode.Problems...)
}

func run(t testing.TB, dir string) (Report, string, bool) {
	t.Helper()
	nd := npmcache.Install(t, srcDir(), "hyparquet", "the independent dataset check")
	script := npmcache.Script(t, nd, filepath.Join(srcDir(), "check.mjs"))
	py := python(t)
	var rep Report
	cmd := exec.Command("node", script, dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		t.Fatalf("check.mjs: %v %v\n%s\n%s", err, jerr, out, stderr.String())
	}
	if err != nil || !rep.OK {
		return rep, string(out) + stderr.String(), false
	}
	fc := exec.Command(py, filepath.Join(srcDir(), "check_frames.py"))
	fc.Stdin = bytes.NewReader(out)
	stderr.Reset()
	fc.Stderr = &stderr
	fout, err := fc.Output()
	if jerr := json.Unmarshal(fout, &rep.Decode); jerr != nil {
		t.Fatalf("check_frames.py: %v %v\n%s\n%s", err, jerr, fout, stderr.String())
	}
	t.Logf("independent check: %d episodes, %d rows, %d video files, %d frame lookups, worst %.2g s",
		rep.Episodes, rep.Frames, rep.Decode.Files, rep.Decode.Queries, rep.Decode.WorstS)
	return rep, string(fout), err == nil && rep.Decode.OK
}
