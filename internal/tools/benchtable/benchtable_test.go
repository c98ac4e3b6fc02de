package main

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The testdata files are real go test -bench output captured on this
// machine: ingest-dashboard-sim.txt from
//
//	go test -run '^$' -bench 'StreamProcess|EpisodePath|Handler|SimulatedSecond' -benchtime 200x -count 2 ./ingest ./internal/dashboard ./internal/sim
//
// and fail-skip*.txt from a throwaway package "bfail" whose benchmarks log,
// fail (b.Fatal), skip and run a sub-benchmark, without and with -v.

func parseFiles(t *testing.T, names ...string) *Input {
	t.Helper()
	var in Input
	for _, n := range names {
		f, err := os.Open(filepath.Join("testdata", n))
		if err != nil {
			t.Fatal(err)
		}
		if err := in.Parse(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	return &in
}

func find(in *Input, pkgSuffix, name string) *Bench {
	for _, b := range in.Benches {
		if b.Name == name && pkgMatches(b.Pkg, pkgSuffix) {
			return b
		}
	}
	return nil
}

func TestParseRealOutput(t *testing.T) {
	in := parseFiles(t, "ingest-dashboard-sim.txt")
	if in.CPU != "AMD EPYC" {
		t.Errorf("cpu = %q", in.CPU)
	}
	b := find(in, "ingest", "BenchmarkEpisodePath")
	if b == nil || len(b.Runs) != 2 {
		t.Fatalf("EpisodePath: %+v", b)
	}
	if got := b.Runs[0]["ns/sample"]; got != 491.9 {
		t.Errorf("ns/sample run 0 = %v", got)
	}
	if got := b.Runs[1]["x_chan_handoff"]; got != 3.958 {
		t.Errorf("x_chan_handoff run 1 = %v", got)
	}
	if got := b.Runs[0]["allocs/op"]; got != 0 {
		t.Errorf("allocs/op = %v", got)
	}
	if b := find(in, "internal/dashboard", "BenchmarkHandler/baseline=FileServerFS"); b == nil || b.Runs[1]["ns/op"] != 135404 {
		t.Errorf("sub-benchmark: %+v", b)
	}
	// The same name in another package is another benchmark.
	if find(in, "internal/sim", "BenchmarkEpisodePath") != nil {
		t.Error("benchmark attributed to the wrong package")
	}
}

func TestParseFailSkip(t *testing.T) {
	for _, f := range []string{"fail-skip.txt", "fail-skip-v.txt"} {
		t.Run(f, func(t *testing.T) {
			in := parseFiles(t, f)
			if b := find(in, "bfail", "BenchmarkOK"); b == nil || len(b.Runs) != 1 || b.Runs[0]["x-peer"] != 1.5 {
				t.Errorf("OK: %+v", b)
			}
			if b := find(in, "bfail", "BenchmarkFails"); b == nil || b.Status != "fail" || len(b.Runs) != 0 {
				t.Errorf("Fails: %+v", b)
			}
			if b := find(in, "bfail", "BenchmarkSub/a=1"); b == nil || b.Runs[0]["u/s"] != 3 {
				t.Errorf("Sub: %+v", b)
			}
			if !in.PkgFails["bfail"] {
				t.Error("package FAIL line not seen")
			}
		})
	}
	in := parseFiles(t, "fail-skip-v.txt")
	if b := find(in, "bfail", "BenchmarkSkips"); b == nil || b.Status != "skip" {
		t.Errorf("Skips: %+v", b)
	}
}

// A benchmark that writes to stdout between its name and its figures
// (non -v output prints the name first) still gets its figures.
func TestParseStrayOutput(t *testing.T) {
	const out = "pkg: example.com/m/p\n" +
		"BenchmarkChild-2   \tchild says hi\n" +
		"       1\t  5000 ns/op\t  2.5 x-ratio\n" +
		"BenchmarkNext-2 \t 3\t 7 ns/op\n"
	var in Input
	if err := in.Parse(strings.NewReader(out)); err != nil {
		t.Fatal(err)
	}
	if b := find(&in, "p", "BenchmarkChild"); b == nil || b.Runs[0]["x-ratio"] != 2.5 {
		t.Errorf("Child: %+v", b)
	}
	if b := find(&in, "p", "BenchmarkNext"); b == nil || b.Runs[0]["ns/op"] != 7 {
		t.Errorf("Next: %+v", b)
	}
}

func TestEvaluate(t *testing.T) {
	in := parseFiles(t, "ingest-dashboard-sim.txt", "fail-skip-v.txt")
	rows := []Row{
		// Median of 491.9 and 275.7 is 383.8.
		{Figure: "pass", Pkg: "ingest", Bench: "BenchmarkEpisodePath", Unit: "ns/sample", Ratio: "x_chan_handoff", Goal: ValueAtMost(1000)},
		{Figure: "fail", Pkg: "ingest", Bench: "BenchmarkEpisodePath", Unit: "ns/sample", Goal: ValueAtMost(300)},
		{Figure: "ratio fail", Pkg: "ingest", Bench: "BenchmarkStreamProcess/device", Unit: "ns/sample", Ratio: "x_chan_handoff", Goal: RatioAtMost(1)},
		{Figure: "computed ratio", Pkg: "bfail", Bench: "BenchmarkOK", Unit: "x-peer", Peer: "ns/op", Goal: RatioAtLeast(1)},
		{Figure: "missing unit", Pkg: "internal/sim", Bench: "BenchmarkSimulatedSecond", Unit: "%core", Peer: "copy-ns", Goal: ValueAtMost(1)},
		{Figure: "failed", Pkg: "bfail", Bench: "BenchmarkFails", Unit: "x", Goal: ValueAtMost(1)},
		{Figure: "skipped", Pkg: "bfail", Bench: "BenchmarkSkips", Unit: "x", Goal: ValueAtMost(1)},
		{Figure: "absent", Pkg: "storage", Bench: "BenchmarkAppendFrames", Unit: "MB/s"},
		{Figure: "no goal", Pkg: "internal/dashboard", Bench: "BenchmarkHandler/Handler", Unit: "ns/op", Ratio: "x_baseline"},
		{Figure: "not selected", Pkg: "storage", Bench: "BenchmarkAppendSmall", Unit: "records/s"},
	}
	sel, err := Selector("EpisodePath|StreamProcess|OK|Fails|Skips|SimulatedSecond|AppendFrames|Handler")
	if err != nil {
		t.Fatal(err)
	}
	lines, skipped := Evaluate(rows, in, sel)
	want := map[string]string{
		"pass": Pass, "fail": Fail, "ratio fail": Fail, "computed ratio": Fail,
		"missing unit": Missing + " no copy-ns", "failed": Missing + " benchmark failed",
		"skipped": Missing + " benchmark skipped", "absent": Missing + " no result", "no goal": Info,
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d", len(lines), len(want))
	}
	for _, l := range lines {
		got := strings.TrimSpace(l.Outcome + " " + l.Why)
		if got != want[l.Row.Figure] {
			t.Errorf("%s: %q, want %q", l.Row.Figure, got, want[l.Row.Figure])
		}
	}
	if len(skipped) != 1 || skipped[0].Figure != "not selected" {
		t.Errorf("skipped = %+v", skipped)
	}
	if l := lines[0]; math.Abs(median(l.Value)-383.8) > 1e-9 || len(l.Ratio) != 2 {
		t.Errorf("pass line: %+v", l)
	}
	if l := lines[3]; len(l.Ratio) != 1 || l.Ratio[0] != 1.5/24682 {
		t.Errorf("computed ratio: %+v", l.Ratio)
	}
}

func TestRenderAndStrict(t *testing.T) {
	var buf bytes.Buffer
	files := []string{filepath.Join("testdata", "ingest-dashboard-sim.txt")}
	code, err := run(&buf, nil, files, "EpisodePath|SimulatedSecond|AppendSmall", true)
	if err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	t.Log("\n" + out)
	// AppendSmall was selected but is not in the input: missing, so -strict fails.
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	for _, s := range []string{
		"| ingest: whole episode path per sample | 384 (276–492) ns/sample | – | 9.52 (3.96–15.1)× | value ≤ 1,000 | PASS, 2 runs |",
		"| storage: 200 B records, 50 streams | – | – | – | value ≥ 1,000,000 | MISSING (no result) |",
		"2 pass, 0 fail, 1 missing",
		"cpu: AMD EPYC",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q", s)
		}
	}
	if !strings.HasPrefix(out, "| figure | value | peer (same run) | ratio | goal | result |\n") {
		t.Error("output does not start with the table header")
	}
	buf.Reset()
	if code, _ := run(&buf, nil, files, "EpisodePath", true); code != 0 {
		t.Errorf("all selected rows pass, exit code %d", code)
	}
}

func TestSelector(t *testing.T) {
	for _, c := range []struct {
		pat, name string
		want      bool
	}{
		{".", "BenchmarkHubPublish/viewers=1", true},
		{"HubPublish", "BenchmarkHubPublish/viewers=1", true},
		{"HubPublish/viewers=16", "BenchmarkHubPublish/viewers=1", false},
		{"Hub/16", "BenchmarkHubPublish/viewers=16", true},
		{"Record8", "BenchmarkHubPublish", false},
		{"", "BenchmarkA", false},
	} {
		sel, err := Selector(c.pat)
		if err != nil {
			t.Fatal(err)
		}
		if got := sel(c.name); got != c.want {
			t.Errorf("Selector(%q)(%q) = %v", c.pat, c.name, got)
		}
	}
	if got := splitPattern(`A(b/c)/[/]x/d\/e`); !slices.Equal(got, []string{"A(b/c)", "[/]x", `d\/e`}) {
		t.Errorf("splitPattern = %q", got)
	}
}

// Every row names a benchmark function that exists in its package, and
// every unit it reads is reported there (a typo would leave the row
// MISSING forever).
func TestRowsMatchSources(t *testing.T) {
	root := filepath.Join("..", "..", "..")
	builtin := map[string]bool{"ns/op": true, "B/op": true, "allocs/op": true, "MB/s": true}
	for _, r := range Rows {
		dir := filepath.Join(root, filepath.FromSlash(r.Pkg))
		funcs, lits := map[string]bool{}, map[string]bool{}
		files, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
		fset := token.NewFileSet()
		for _, f := range files {
			af, err := parser.ParseFile(fset, f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(af, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.FuncDecl:
					funcs[n.Name.Name] = true
				case *ast.BasicLit:
					if n.Kind == token.STRING {
						if s, err := strconv.Unquote(n.Value); err == nil {
							lits[s] = true
						}
					}
				}
				return true
			})
		}
		top, _, _ := strings.Cut(r.Bench, "/")
		if !funcs[top] {
			t.Errorf("row %q: no func %s in %s", r.Figure, top, dir)
		}
		for _, u := range []string{r.Unit, r.Peer, r.Ratio} {
			if u != "" && !builtin[u] && !lits[u] {
				t.Errorf("row %q: unit %q is not reported in %s", r.Figure, u, dir)
			}
		}
		if r.Figure == "" || r.Unit == "" {
			t.Errorf("row %+v: needs a figure and a unit", r)
		}
	}
}
