package main

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Run is one result line of one benchmark: the figures it reported (ns/op,
// B/op and every b.ReportMetric unit), keyed by unit.
type Run map[string]float64

// Bench gathers every run of one benchmark found in the input, and what
// go test said about it when it produced no result line.
type Bench struct {
	Pkg  string // import path from the "pkg:" header ("" if none was seen)
	Name string // full name without the -GOMAXPROCS suffix, e.g. "BenchmarkHubPublish/viewers=1"
	Runs []Run
	// Status is "fail" or "skip" when a "--- FAIL:" or "--- SKIP:" line
	// named the benchmark.
	Status string
}

// Input is everything parsed from one or more go test -bench outputs.
type Input struct {
	Benches  []*Bench
	CPU      string          // the "cpu:" header line, if any
	PkgFails map[string]bool // packages whose "FAIL\t<pkg>" line was seen
}

var (
	// BenchmarkName-2   	     200	       183.5 ns/op	  0.018 cores@100k/s
	resultRe = regexp.MustCompile(`^(Benchmark\S*)\s+(\d+)\s+(.+)$`)
	// The figures of a result whose name line was printed earlier (stray
	// output of the benchmark between the name and its figures).
	orphanRe = regexp.MustCompile(`^\s*(\d+)\s+(-?[0-9][^\s]*\s+\S+.*)$`)
	nameRe   = regexp.MustCompile(`^(Benchmark\S*)\s*$`)
	statusRe = regexp.MustCompile(`^\s*--- (FAIL|SKIP): (Benchmark\S*)`)
	pkgFail  = regexp.MustCompile(`^FAIL\s+(\S+)\s`)
	procsRe  = regexp.MustCompile(`-\d+$`)
)

// stripProcs removes the -GOMAXPROCS suffix go test appends to a benchmark name.
func stripProcs(name string) string { return procsRe.ReplaceAllString(name, "") }

// parsePairs reads "value unit value unit ..."; ok is false unless the
// whole text is such pairs.
func parsePairs(s string) (Run, bool) {
	f := strings.Fields(s)
	if len(f) == 0 || len(f)%2 != 0 {
		return nil, false
	}
	r := Run{}
	for i := 0; i < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return nil, false
		}
		r[f[i+1]] = v
	}
	return r, true
}

// Parse reads go test -bench output (plain or -v) and adds it to in.
func (in *Input) Parse(r io.Reader) error {
	if in.PkgFails == nil {
		in.PkgFails = map[string]bool{}
	}
	byKey := map[string]*Bench{}
	for _, b := range in.Benches {
		byKey[b.Pkg+" "+b.Name] = b
	}
	get := func(pkg, name string) *Bench {
		name = stripProcs(name)
		k := pkg + " " + name
		if b := byKey[k]; b != nil {
			return b
		}
		b := &Bench{Pkg: pkg, Name: name}
		byKey[k] = b
		in.Benches = append(in.Benches, b)
		return b
	}
	pkg, pending := "", ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg, pending = strings.TrimSpace(line[len("pkg: "):]), ""
		case strings.HasPrefix(line, "cpu: "):
			if in.CPU == "" {
				in.CPU = strings.TrimSpace(line[len("cpu: "):])
			}
		case statusRe.MatchString(line):
			m := statusRe.FindStringSubmatch(line)
			b := get(pkg, m[2])
			if len(b.Runs) == 0 {
				b.Status = strings.ToLower(m[1])
			}
			pending = ""
		case pkgFail.MatchString(line):
			in.PkgFails[pkgFail.FindStringSubmatch(line)[1]] = true
		default:
			if m := resultRe.FindStringSubmatch(line); m != nil {
				if run, ok := parsePairs(m[3]); ok {
					b := get(pkg, m[1])
					b.Runs = append(b.Runs, run)
					b.Status = ""
					pending = ""
					continue
				}
			}
			if m := nameRe.FindStringSubmatch(line); m != nil {
				pending = m[1]
				continue
			}
			if strings.HasPrefix(line, "Benchmark") {
				// The name, then stray output on the same line.
				pending = strings.Fields(line)[0]
				continue
			}
			if pending != "" {
				if m := orphanRe.FindStringSubmatch(line); m != nil {
					if run, ok := parsePairs(m[2]); ok {
						b := get(pkg, pending)
						b.Runs = append(b.Runs, run)
						b.Status = ""
						pending = ""
					}
				}
			}
		}
	}
	return sc.Err()
}
