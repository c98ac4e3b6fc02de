package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/signal"
	"strings"
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
	out := addOutputFlag(fs, "text")
	var untilIdle *bool
	if sub == "run" {
		untilIdle = fs.Bool("until-idle", false, "with a daemon in sync.mode daemon, wait until nothing more is due (queue empty, window closed, or only entries waiting for a retry); a daemon in oneshot mode and a local run always return when idle")
	}
	if code, ok := parse(fs, args[1:]); !ok {
		return code
	}
	if !checkOutput(*out, stderr, "text", "json") {
		return exitUsage
	}
	// sync run needs the API token only when a daemon answers; the upload
	// unit loads only the S3 credentials and uploads from the store.
	c, err := cf.clientToken(sub == "run")
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitUsage
	}
	var st upload.Status
	switch sub {
	case "status":
		err = c.json("GET", "/v1/uploads", nil, &st)
	case "run":
		var resp *http.Response
		resp, err = c.do("POST", "/v1/sync/run", nil)
		if err == nil {
			err = decodeBody(resp, &st)
			if err == nil && resp.StatusCode == http.StatusAccepted && *untilIdle {
				// The daemon's own uploader was nudged: follow it.
				st, err = waitIdle(c, stderr)
			}
		}
		if errors.Is(err, errUnreachable) && *cf.config != "" {
			// No daemon holds the store: upload from it directly.
			st, err = syncLocally(*cf.config, stderr)
		} else if err != nil && c.token == "" && strings.Contains(err.Error(), "401") {
			err = fmt.Errorf("%w (a daemon is running and holds the store; give sync run its API token: --token-file, or api.token_file readable, e.g. LoadCredential=api-token in the unit)", err)
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

// waitIdle polls the daemon's upload status until nothing more is due now.
func waitIdle(c *client, stderr io.Writer) (upload.Status, error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	for {
		var st upload.Status
		if err := c.json("GET", "/v1/uploads", nil, &st); err != nil {
			return st, err
		}
		if idle(st, time.Now()) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, errors.New("sync run: interrupted; the daemon keeps uploading")
		case <-time.After(time.Second):
		}
	}
}

// idle reports whether nothing in st is due now.
func idle(st upload.Status, now time.Time) bool {
	if st.Active != nil {
		return false
	}
	if !st.Window.Always && !st.Window.Open {
		return true
	}
	for _, e := range st.Queue {
		if e.NextAttempt.IsZero() || !e.NextAttempt.After(now) {
			return false
		}
	}
	return true
}

func syncLocally(path string, stderr io.Writer) (upload.Status, error) {
	// Only the S3 credentials: the upload unit has no other secret.
	cfg, err := config.LoadSecrets(path, config.SecretSync)
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
	fmt.Fprintf(tw, "window:\t%s\n", windowText(st.Window))
	if st.Rate > 0 {
		fmt.Fprintf(tw, "rate:\t%s/s\n", fmtBytes(int64(st.Rate)))
	}
	if a := st.Active; a != nil {
		fmt.Fprintf(tw, "uploading:\t%s %s (%s of %s)\n", a.Episode, a.Key, fmtBytes(a.Done), fmtBytes(a.Size))
	}
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
	if len(st.Queue)+len(st.Quarantined)+len(st.Failed) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LIST\tID\tCELL\tSTATE\tSIZE\tDATA\tATTEMPTS\tNEXT TRY\tERROR")
	for _, group := range []struct {
		name string
		q    []upload.QueueEntry
	}{{"queued", st.Queue}, {"quarantined", st.Quarantined}, {"failed", st.Failed}} {
		for _, e := range group.q {
			name := group.name
			if e.Priority {
				name += " (priority)"
			}
			next := "-"
			if !e.NextAttempt.IsZero() {
				next = e.NextAttempt.Local().Format("2006-01-02 15:04:05")
			}
			msg := e.LastError
			if e.Reason != "" {
				msg = strings.TrimSpace(e.Reason + " " + msg)
			}
			if msg == "" {
				msg = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", name, e.ID, e.Cell, e.State, fmtBytes(e.Bytes),
				time.Duration(e.Seconds*float64(time.Second)).Round(time.Second), e.Attempts, next, msg)
		}
	}
	tw.Flush()
}

// windowText describes the upload window in words.
func windowText(w upload.WindowStatus) string {
	if w.Always {
		return "always open"
	}
	s := "closed"
	if w.Open {
		s = "open"
	}
	if len(w.Windows) > 0 {
		s += " (" + strings.Join(w.Windows, ", ")
		if w.Timezone != "" {
			s += " " + w.Timezone
		}
		s += ")"
	}
	if !w.NextChange.IsZero() {
		verb := "opens"
		if w.Open {
			verb = "closes"
		}
		s += fmt.Sprintf(", %s at %s", verb, w.NextChange.Local().Format("2006-01-02 15:04"))
	}
	return s
}
