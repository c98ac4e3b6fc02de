package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/sync/upload"
)

func cmdSync(args []string, stdout, stderr io.Writer) int {
	const synopsis = "sync run [--until-idle] | sync status [flags]"
	if len(args) == 0 || (args[0] != "run" && args[0] != "status") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintf(stdout, "Usage: episoded %s\n\n  run     upload what is due now, then exit (for a systemd timer)\n  status  the upload queue, window and backlog\n", synopsis)
			return exitOK
		}
		fmt.Fprintf(stderr, "Usage: episoded %s\n", synopsis)
		return exitUsage
	}
	sub := args[0]
	fs := newFlags("sync "+sub, "sync "+sub+" [flags]", stdout, stderr)
	cf := addClientFlags(fs)
	out := fs.String("o", "text", "output: text or json")
	if sub == "run" {
		// The only mode there is: upload what is due, return when idle.
		fs.Bool("until-idle", true, "return once nothing more is due (always on)")
	}
	if code, ok := parse(fs, args[1:]); !ok {
		return code
	}
	c, err := cf.client()
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitUsage
	}
	var st upload.Status
	switch sub {
	case "status":
		err = c.json("GET", "/v1/uploads", nil, &st)
	case "run":
		err = c.json("POST", "/v1/sync/run", nil, &st)
		if errors.Is(err, errUnreachable) && *cf.config != "" {
			// No daemon holds the store: upload from it directly.
			st, err = syncLocally(*cf.config, stderr)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitFailure
	}
	if *out == "json" {
		printJSON(stdout, st)
	} else {
		printUploads(stdout, st)
	}
	return exitOK
}

func syncLocally(path string, stderr io.Writer) (upload.Status, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return upload.Status{}, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return daemon.SyncOnce(ctx, cfg, newLogger(cfg.Log, redact.NewScrubber(cfg.Secrets()...), stderr))
}

func printUploads(w io.Writer, st upload.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "target:\t%s\n", st.Target)
	fmt.Fprintf(tw, "window:\t%+v\n", st.Window)
	if st.Bandwidth > 0 {
		fmt.Fprintf(tw, "bandwidth cap:\t%s/s\n", fmtBytes(st.Bandwidth))
	}
	fmt.Fprintf(tw, "queue:\t%d episodes, %s, %.2f h of data\n", len(st.Queue), fmtBytes(st.BytesRemaining), st.HoursRemaining)
	if st.DrainSeconds >= 0 {
		fmt.Fprintf(tw, "drains in:\t%s\n", time.Duration(st.DrainSeconds*float64(time.Second)).Round(time.Second))
	}
	fmt.Fprintf(tw, "uploaded:\t%d (this run of the daemon)\n", st.Uploaded)
	if st.LastError != "" {
		fmt.Fprintf(tw, "last error:\t%s\n", st.LastError)
	}
	tw.Flush()
	for _, group := range []struct {
		name string
		q    []upload.QueueEntry
	}{{"queued", st.Queue}, {"quarantined", st.Quarantined}, {"failed", st.Failed}} {
		for _, e := range group.q {
			fmt.Fprintf(w, "%-11s %+v\n", group.name, e)
		}
	}
}
