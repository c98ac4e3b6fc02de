package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"

	"github.com/episoded/episoded/internal/buildinfo"
	"github.com/episoded/episoded/sync/bucket"
	"github.com/episoded/episoded/sync/dataset"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// cmdDataset runs `dataset build`: a LeRobot v3.0 dataset from a daemon's
// episodes (--api) or from uploaded ones (--from DIR or s3://bucket/prefix).
func cmdDataset(args []string, stdout, stderr io.Writer) int {
	const synopsis = "dataset build --out DIR --map FILE [--from DIR|s3://bucket/prefix | --api URL [--id ID]... [--cell C] [--task T] [--label K=V]... [--since T] [--until T]] [--quality ok]"
	if len(args) == 0 || args[0] != "build" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintf(stdout, "Usage: episoded %s\n", synopsis)
			return exitOK
		}
		fmt.Fprintf(stderr, "Usage: episoded %s\n", synopsis)
		return exitUsage
	}
	fs := newFlags("dataset build", synopsis, stdout, stderr)
	out := fs.String("out", "", "dataset directory (created, or appended to when it holds a dataset)")
	mapPath := fs.String("map", "", "mapping file (YAML; see docs/DATASETS.md)")
	from := fs.String("from", "", "uploaded episodes: a dir target's directory, or s3://bucket/prefix")
	endpoint := fs.String("endpoint", "", "S3 endpoint for --from s3://... (default $AWS_ENDPOINT_URL); credentials from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY")
	region := fs.String("region", "", "S3 region for --from s3://...")
	pathStyle := fs.Bool("path-style", false, "force path-style bucket addressing for --from s3://...")
	quality := fs.String("quality", "", "take only episodes with this quality verdict (ok)")
	var ids, labels stringList
	fs.Var(&ids, "id", "episode id to take from the daemon (repeatable)")
	fs.Var(&labels, "label", "daemon episodes with this label K=V (repeatable)")
	cell := fs.String("cell", "", "daemon episodes of this cell")
	task := fs.String("task", "", "daemon episodes of this task")
	since := fs.String("since", "", "daemon episodes starting at or after (RFC 3339 or ns)")
	until := fs.String("until", "", "daemon episodes starting at or before (RFC 3339 or ns)")
	noProgress := fs.Bool("no-progress", false, "no progress bar (there is none unless stderr is a terminal)")
	cf := addClientFlags(fs)
	format := addOutputFlag(fs, "text")
	if code, ok := parse(fs, interspersed(fs, args[1:])); !ok {
		return code
	}
	if !checkOutput(*format, stderr, "text", "json") {
		return exitUsage
	}
	if *out == "" || *mapPath == "" {
		fmt.Fprintln(stderr, "episoded dataset build: --out and --map are required")
		return exitUsage
	}
	if *quality != "" && *quality != "ok" && *quality != "degraded" {
		fmt.Fprintf(stderr, "episoded dataset build: --quality %q: want ok or degraded\n", *quality)
		return exitUsage
	}
	m, err := dataset.LoadMapping(*mapPath)
	if err != nil {
		fmt.Fprintf(stderr, "episoded dataset build: %s\n", oneLine(err))
		return exitUsage
	}
	var src dataset.Source
	switch {
	case *from != "":
		bs, err := dataset.OpenLocation(*from, bucket.S3Options{Endpoint: *endpoint, Region: *region, PathStyle: *pathStyle})
		if err != nil {
			fmt.Fprintf(stderr, "episoded dataset build: --from %s: %v\n", *from, err)
			return exitUsage
		}
		src = bs
	default:
		c, err := cf.client()
		if err != nil {
			fmt.Fprintf(stderr, "episoded dataset build: %v\n", err)
			return exitUsage
		}
		src = dataset.APISource{Base: c.base, Token: c.token, HTTP: c.http, IDs: ids, Cell: *cell, Task: *task,
			Since: *since, Until: *until, Labels: labels}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	o := dataset.Options{Out: *out, Mapping: m, Version: buildinfo.Get().Version, Quality: *quality}
	drawn := false
	if !*noProgress && isTerminal(stderr) {
		o.Progress = func(p dataset.Progress) {
			drawn = true
			drawBar(stderr, frac(int64(p.Done), int64(max(p.Total, 1))), fmt.Sprintf("%d/%d episodes, %d rows", p.Done, p.Total, p.Rows))
		}
	}
	sum, err := dataset.Build(ctx, src, o)
	if drawn {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "episoded dataset build: %s\n", oneLine(err))
		if errors.Is(err, dataset.ErrTampered) || errors.Is(err, dataset.ErrNoFFmpeg) {
			return exitFailure
		}
		return exitFailure
	}
	if *format == "json" {
		printJSON(stdout, map[string]any{"dataset": *out, "summary": sum})
		return exitOK
	}
	fmt.Fprint(stdout, sum.String())
	fmt.Fprintf(stdout, "dataset: %s\n", *out)
	return exitOK
}
