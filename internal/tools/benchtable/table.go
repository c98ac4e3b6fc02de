package main

import (
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Direction says which side of a goal's limit passes.
type Direction int

const (
	AtMost  Direction = iota // passes when the figure is <= Limit
	AtLeast                  // passes when the figure is >= Limit
)

// Of names the figure a goal judges.
type Of int

const (
	OfValue Of = iota // our value, in Row.Unit
	OfRatio           // the ratio to the peer
)

// Goal is a limit on a row's value or ratio. The zero Goal with Set false
// means "reported, no goal".
type Goal struct {
	Set   bool
	Of    Of
	Dir   Direction
	Limit float64
}

func RatioAtMost(x float64) Goal  { return Goal{Set: true, Of: OfRatio, Dir: AtMost, Limit: x} }
func RatioAtLeast(x float64) Goal { return Goal{Set: true, Of: OfRatio, Dir: AtLeast, Limit: x} }
func ValueAtMost(x float64) Goal  { return Goal{Set: true, Of: OfValue, Dir: AtMost, Limit: x} }
func ValueAtLeast(x float64) Goal { return Goal{Set: true, Of: OfValue, Dir: AtLeast, Limit: x} }

func (g Goal) pass(x float64) bool {
	if g.Dir == AtMost {
		return x <= g.Limit
	}
	return x >= g.Limit
}

func (g Goal) String() string {
	if !g.Set {
		return "–"
	}
	what := "value"
	if g.Of == OfRatio {
		what = "ratio"
	}
	op := "≤"
	if g.Dir == AtLeast {
		op = "≥"
	}
	lim := strconv.FormatFloat(g.Limit, 'g', -1, 64)
	if math.Abs(g.Limit) >= 1000 {
		lim = num(g.Limit)
	}
	return what + " " + op + " " + lim
}

// Row declares one line of the table. Rows live in rows.go.
type Row struct {
	Figure string // what the line measures, for a reader
	Pkg    string // package path inside the module, e.g. "devices/rtsp"
	Bench  string // full benchmark name without -GOMAXPROCS, e.g. "BenchmarkHubPublish/viewers=1"
	Unit   string // the b.ReportMetric unit of our value
	Peer   string // unit of the same-run baseline's value ("" if the benchmark reports only a ratio)
	Ratio  string // unit of the reported ratio; "" computes Unit/Peer per run
	Goal   Goal
}

// Result outcomes.
const (
	Pass    = "PASS"
	Fail    = "FAIL"
	Info    = "info" // figures present, no goal
	Missing = "MISSING"
)

// Line is one evaluated row.
type Line struct {
	Row                Row
	Runs               int
	Value, Peer, Ratio []float64 // one entry per run that had the figure
	Outcome, Why       string
}

// Evaluate matches rows to parsed benchmarks. Rows whose benchmark is not
// selected by the -bench pattern are returned in skipped, not as missing.
func Evaluate(rows []Row, in *Input, selected func(name string) bool) (lines []Line, skipped []Row) {
	for _, r := range rows {
		if !selected(r.Bench) {
			skipped = append(skipped, r)
			continue
		}
		lines = append(lines, evaluate(r, in))
	}
	return lines, skipped
}

func pkgMatches(have, want string) bool {
	return have == want || strings.HasSuffix(have, "/"+want)
}

func evaluate(r Row, in *Input) Line {
	l := Line{Row: r}
	var b *Bench
	for _, c := range in.Benches {
		if c.Name == r.Bench && pkgMatches(c.Pkg, r.Pkg) {
			b = c
			break
		}
	}
	if b == nil || len(b.Runs) == 0 {
		l.Outcome = Missing
		switch {
		case b != nil && b.Status == "fail":
			l.Why = "benchmark failed"
		case b != nil && b.Status == "skip":
			l.Why = "benchmark skipped"
		default:
			l.Why = "no result"
			for p := range in.PkgFails {
				if pkgMatches(p, r.Pkg) {
					l.Why = "package failed"
				}
			}
		}
		return l
	}
	l.Runs = len(b.Runs)
	for _, run := range b.Runs {
		v, okV := run[r.Unit]
		if okV {
			l.Value = append(l.Value, v)
		}
		p, okP := run[r.Peer]
		if r.Peer != "" && okP {
			l.Peer = append(l.Peer, p)
		}
		switch {
		case r.Ratio != "":
			if x, ok := run[r.Ratio]; ok {
				l.Ratio = append(l.Ratio, x)
			}
		case r.Peer != "" && okV && okP && p != 0:
			l.Ratio = append(l.Ratio, v/p)
		}
	}
	var need []string
	if len(l.Value) == 0 {
		need = append(need, r.Unit)
	}
	if r.Peer != "" && len(l.Peer) == 0 {
		need = append(need, r.Peer)
	}
	if r.Ratio != "" && len(l.Ratio) == 0 {
		need = append(need, r.Ratio)
	}
	if len(need) > 0 {
		l.Outcome, l.Why = Missing, "no "+strings.Join(need, ", ")
		return l
	}
	if !r.Goal.Set {
		l.Outcome = Info
		return l
	}
	judged := l.Value
	if r.Goal.Of == OfRatio {
		judged = l.Ratio
	}
	if len(judged) == 0 {
		l.Outcome, l.Why = Missing, "no ratio"
		return l
	}
	m := median(judged)
	if math.IsNaN(m) || math.IsInf(m, 0) {
		l.Outcome, l.Why = Missing, "figure is "+strconv.FormatFloat(m, 'g', -1, 64)
		return l
	}
	l.Outcome = Fail
	if r.Goal.pass(m) {
		l.Outcome = Pass
	}
	return l
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// num formats a figure readably: thousands separators for large values,
// three significant digits for small ones.
func num(x float64) string {
	a := math.Abs(x)
	switch {
	case math.IsNaN(x) || math.IsInf(x, 0):
		return strconv.FormatFloat(x, 'g', -1, 64)
	case a >= 1000:
		s := strconv.FormatFloat(math.Round(a), 'f', 0, 64)
		var out []byte
		for i := range len(s) {
			if i > 0 && (len(s)-i)%3 == 0 {
				out = append(out, ',')
			}
			out = append(out, s[i])
		}
		if x < 0 {
			return "-" + string(out)
		}
		return string(out)
	case a >= 100:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(x, 'f', 1, 64)
	case a >= 1 || a == 0:
		return strconv.FormatFloat(x, 'f', 2, 64)
	default:
		return strconv.FormatFloat(x, 'g', 3, 64)
	}
}

// spread formats the median of xs, and its range when there is more than one run.
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "–"
	}
	s := num(median(xs))
	if len(xs) > 1 {
		s += " (" + num(slices.Min(xs)) + "–" + num(slices.Max(xs)) + ")"
	}
	return s
}

func cellUnit(xs []float64, unit string) string {
	if len(xs) == 0 {
		return "–"
	}
	return spread(xs) + " " + unit
}

// Render writes the lines as one Markdown table, followed by a summary.
func Render(w io.Writer, lines []Line, skipped []Row, cpu string) {
	fmt.Fprintln(w, "| figure | value | peer (same run) | ratio | goal | result |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	count := map[string]int{}
	for _, l := range lines {
		count[l.Outcome]++
		ratio := "–"
		if len(l.Ratio) > 0 {
			ratio = spread(l.Ratio) + "×"
		}
		res := l.Outcome
		if l.Why != "" {
			res += " (" + l.Why + ")"
		}
		if l.Runs > 1 {
			res += fmt.Sprintf(", %d runs", l.Runs)
		}
		peer := cellUnit(l.Peer, l.Row.Peer)
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", esc(l.Row.Figure),
			esc(cellUnit(l.Value, l.Row.Unit)), esc(peer), ratio, l.Row.Goal, res)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%d pass, %d fail, %d missing, %d without a goal", count[Pass], count[Fail], count[Missing], count[Info])
	if len(skipped) > 0 {
		fmt.Fprintf(w, "; %d rows not selected by the -bench pattern", len(skipped))
	}
	fmt.Fprintln(w, ". Value, peer and ratio are medians over runs; the range over runs in parentheses.")
	if cpu != "" {
		fmt.Fprintf(w, "cpu: %s\n", cpu)
	}
}

func esc(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// Selector returns whether go test -bench pattern would run the benchmark
// with the given full name: the pattern is split at slashes outside
// brackets and parentheses, and element i must match name level i (as in
// package testing). An empty pattern selects nothing.
func Selector(pattern string) (func(string) bool, error) {
	if pattern == "" {
		return func(string) bool { return false }, nil
	}
	var res []*regexp.Regexp
	for _, e := range splitPattern(pattern) {
		re, err := regexp.Compile(e)
		if err != nil {
			return nil, fmt.Errorf("bench pattern %q: %w", pattern, err)
		}
		res = append(res, re)
	}
	return func(name string) bool {
		for i, level := range strings.Split(name, "/") {
			if i >= len(res) {
				break
			}
			if !res[i].MatchString(level) {
				return false
			}
		}
		return true
	}, nil
}

func splitPattern(s string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[', '(':
			depth++
		case ']', ')':
			depth--
		case '\\':
			i++
		case '/':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}
