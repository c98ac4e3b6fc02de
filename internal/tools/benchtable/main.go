// Command benchtable reads `go test -bench` output and prints the one
// table that ends `make bench`: for every row declared in rows.go, our
// figure, the peer measured in the same run, their ratio, the goal, and
// whether the goal is met.
//
//	go test -run '^$' -bench . ./... | tee bin/bench.txt
//	go run ./internal/tools/benchtable -bench . bin/bench.txt
//
// Input is read from the files named on the command line (their results
// are merged, so separate runs can be assembled into one table), or from
// standard input. With several runs of one benchmark (-count N, or several
// files) the table shows the median and the range; goals judge the median.
//
// A row whose benchmark was selected by -bench (the same pattern given to
// go test) but reported no figure (it failed, was skipped, crashed, or did
// not report the unit) is MISSING, never a pass. Rows not selected are
// left out and counted below the table. The exit status is 0 unless
// -strict is given and a row failed or is missing, so that `make bench`
// always ends with the table.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	pattern := flag.String("bench", ".", "the -bench pattern given to go test: rows it does not select are left out")
	strict := flag.Bool("strict", false, "exit 1 if a row failed its goal or is missing")
	flag.Parse()
	code, err := run(os.Stdout, os.Stdin, flag.Args(), *pattern, *strict)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
	}
	os.Exit(code)
}

func run(w io.Writer, stdin io.Reader, files []string, pattern string, strict bool) (int, error) {
	sel, err := Selector(pattern)
	if err != nil {
		return 2, err
	}
	var in Input
	if len(files) == 0 {
		if err := in.Parse(stdin); err != nil {
			return 2, fmt.Errorf("read stdin: %w", err)
		}
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return 2, err
		}
		err = in.Parse(fh)
		fh.Close()
		if err != nil {
			return 2, fmt.Errorf("read %s: %w", f, err)
		}
	}
	lines, skipped := Evaluate(Rows, &in, sel)
	Render(w, lines, skipped, in.CPU)
	if strict {
		for _, l := range lines {
			if l.Outcome == Fail || l.Outcome == Missing {
				return 1, nil
			}
		}
	}
	return 0, nil
}
