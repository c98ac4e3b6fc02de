package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/api"
)

func cmdEpisodes(args []string, stdout, stderr io.Writer) int {
	const synopsis = "episodes list|show ID|export ID --file FILE|-|delete ID [flags]"
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		w := stderr
		if len(args) > 0 {
			w = stdout
		}
		fmt.Fprintf(w, "Usage: episoded %s\n\n  list    list episodes, newest first (--limit, --since, --until)\n  show    one episode with its quality report\n  export  download an episode as MCAP (--file FILE, or - for stdout)\n  delete  delete an episode and the data only it covers\n\nIDs may be abbreviated to any unique prefix. Each takes --api, --token-file, --config\nand -o (output format: text or json; export writes MCAP).\n", synopsis)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	sub, rest := args[0], args[1:]
	fs := newFlags("episodes "+sub, "episodes "+sub+" [flags]", stdout, stderr)
	cf := addClientFlags(fs)
	var (
		out, file                  *string
		state, cell, labl, quality *string
		since, until               *string
		limit                      *int
		formats                    []string
	)
	switch sub {
	case "list":
		out, formats = addOutputFlag(fs, "table"), []string{"table", "json"}
		state = fs.String("state", "", "only episodes in this state: "+strings.Join(episodeStates(), ", "))
		cell = fs.String("cell", "", "only episodes of this cell")
		labl = fs.String("label", "", "only episodes with this label (k or k=v)")
		quality = fs.String("quality", "", "only episodes with this quality verdict: ok or degraded")
		since = fs.String("since", "", "only episodes starting at or after this time (RFC 3339, or a duration ago such as 24h)")
		until = fs.String("until", "", "only episodes starting at or before this time (RFC 3339, or a duration ago)")
		limit = fs.Int("limit", 100, "at most this many episodes, newest first (0: all, fetched page by page)")
	case "show", "delete":
		out, formats = addOutputFlag(fs, "text"), []string{"text", "json"}
	case "export":
		out, formats = fs.String("o", "mcap", "output format: mcap (the only one; the file is --file)"), []string{"mcap"}
		file = fs.String("file", "", "write the MCAP file here; - writes it to stdout (required)")
	default:
		fmt.Fprintf(stderr, "episoded episodes: %v\n", oneOf("subcommand", sub, "list", "show", "export", "delete"))
		return exitUsage
	}
	if code, ok := parse(fs, interspersed(fs, rest)); !ok {
		return code
	}
	if !checkOutput(*out, stderr, formats...) {
		if sub == "export" {
			fmt.Fprintln(stderr, "episoded episodes export: -o is the output format; give the file with --file FILE (- for stdout)")
		}
		return exitUsage
	}
	c, err := cf.client()
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitUsage
	}
	needID := sub != "list"
	if needID && fs.NArg() != 1 || !needID && fs.NArg() != 0 {
		fmt.Fprintf(stderr, "Usage: episoded %s\n", synopsis)
		return exitUsage
	}
	switch sub {
	case "list":
		q := url.Values{}
		for k, v := range map[string]string{"state": *state, "cell": *cell, "label": *labl, "quality": *quality} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if *state != "" {
			if err := oneOf("--state", *state, episodeStates()...); err != nil {
				fmt.Fprintf(stderr, "episoded: %v\n", err)
				return exitUsage
			}
		}
		if *quality != "" {
			if err := oneOf("--quality", *quality, episode.QualityOK, episode.QualityDegraded); err != nil {
				fmt.Fprintf(stderr, "episoded: %v\n", err)
				return exitUsage
			}
		}
		for k, v := range map[string]string{"since": *since, "until": *until} {
			if v == "" {
				continue
			}
			t, err := cliTime(v, time.Now())
			if err != nil {
				fmt.Fprintf(stderr, "episoded: --%s: %v\n", k, err)
				return exitUsage
			}
			q.Set(k, t)
		}
		if *limit < 0 {
			fmt.Fprintln(stderr, "episoded: --limit: must be 0 (all) or more")
			return exitUsage
		}
		var eps []episode.Episode
		eps, err = listEpisodes(c, q, *limit)
		if err == nil {
			if *out == "json" {
				printJSON(stdout, eps)
			} else {
				printEpisodeTable(stdout, eps)
			}
		}
	case "show":
		var e episode.Episode
		err = c.json("GET", "/v1/episodes/"+url.PathEscape(fs.Arg(0)), nil, &e)
		if err == nil {
			if *out == "json" {
				printJSON(stdout, e)
			} else {
				printEpisode(stdout, e)
			}
		}
	case "delete":
		var e episode.Episode
		// Resolve a prefix first so that the message names the full id.
		if err = c.json("GET", "/v1/episodes/"+url.PathEscape(fs.Arg(0)), nil, &e); err == nil {
			err = c.json("DELETE", "/v1/episodes/"+url.PathEscape(e.ID), nil, nil)
		}
		if err == nil {
			if *out == "json" {
				printJSON(stdout, map[string]string{"deleted": e.ID})
			} else {
				fmt.Fprintf(stdout, "deleted %s\n", e.ID)
			}
		}
	case "export":
		if *file == "" {
			fmt.Fprintln(stderr, "episoded episodes export: --file FILE is required (- writes to stdout)")
			return exitUsage
		}
		err = exportEpisode(c, fs.Arg(0), *file, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// episodeStates lists the valid episode states.
func episodeStates() []string {
	var out []string
	for _, s := range episode.States {
		out = append(out, string(s))
	}
	return out
}

// cliTime reads RFC 3339, a date (YYYY-MM-DD, local), or a duration ago
// ("24h") and returns it as RFC 3339 for the API.
func cliTime(s string, now time.Time) (string, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.Format(time.RFC3339Nano), nil
	}
	if t, err := time.ParseInLocation(time.DateOnly, s, time.Local); err == nil {
		return t.Format(time.RFC3339Nano), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d).Format(time.RFC3339Nano), nil
	}
	return "", fmt.Errorf("%q is not a time: use RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02) or a duration ago (24h)", s)
}

// listEpisodes fetches up to limit episodes (0: all), following the API's
// page cursors.
func listEpisodes(c *client, q url.Values, limit int) ([]episode.Episode, error) {
	eps := []episode.Episode{}
	cursor := ""
	for {
		page := min(listPageSize, limit-len(eps))
		if limit == 0 {
			page = listPageSize
		}
		q.Set("limit", strconv.Itoa(page))
		q.Del("cursor")
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		resp, err := c.do("GET", "/v1/episodes?"+q.Encode(), nil)
		if err != nil {
			return nil, err
		}
		var got []episode.Episode
		if err := decodeBody(resp, &got); err != nil {
			return nil, fmt.Errorf("list episodes: %w", err)
		}
		eps = append(eps, got...)
		cursor = resp.Header.Get(api.NextCursorHeader)
		if cursor == "" || len(got) == 0 || limit > 0 && len(eps) >= limit {
			return eps, nil
		}
	}
}

// listPageSize is how many episodes the CLI asks for per request.
const listPageSize = 500

func duration(e episode.Episode) string {
	if e.Stop == 0 {
		return "-"
	}
	return time.Duration(e.Stop - e.Start).Round(100 * time.Millisecond).String()
}

func stateName(e episode.Episode) string {
	if e.State == episode.Recording && e.Stop != 0 {
		return "recording (post-roll)"
	}
	return string(e.State)
}

// worstBound is the largest per-stream alignment error bound.
func worstBound(e episode.Episode) string {
	if len(e.Quality) == 0 {
		return "-"
	}
	var b float64
	for _, q := range e.Quality {
		b = max(b, q.AlignmentErrorBoundMs)
	}
	return fmt.Sprintf("%.2f ms", b)
}

// qualityName is the episode's verdict, "-" before it has one.
func qualityName(e episode.Episode) string {
	if st := e.QualityStatus(); st != "" {
		return st
	}
	return "-"
}

// worstCoverage is the lowest per-stream coverage.
func worstCoverage(e episode.Episode) string {
	if e.Verdict == nil || len(e.Quality) == 0 {
		return "-"
	}
	c := 1.0
	for _, q := range e.Quality {
		c = min(c, q.Coverage)
	}
	return fmt.Sprintf("%.1f%%", c*100)
}

func printEpisodeTable(w io.Writer, eps []episode.Episode) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCELL\tSTATE\tQUALITY\tSTART\tDURATION\tTASK\tSAMPLES\tCOVERAGE\tGAPS\tALIGN BOUND")
	for _, e := range eps {
		var n, gaps uint64
		for _, q := range e.Quality {
			n += q.Samples
			gaps += q.Gaps
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", e.ID, e.Cell, stateName(e), qualityName(e), fmtTime(e.Start), duration(e), e.Task, n, worstCoverage(e), gaps, worstBound(e))
	}
	tw.Flush()
}

func printEpisode(w io.Writer, e episode.Episode) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("id", e.ID)
	row("cell", e.Cell)
	row("state", stateName(e))
	row("reason", e.Reason)
	row("task", e.Task)
	row("operator", e.Operator)
	row("robot", e.Robot)
	for k, v := range e.Labels {
		row("label "+k, v)
	}
	row("trigger", e.Trigger)
	row("stop reason", e.StopReason)
	row("start", fmtTime(e.Start))
	row("stop", fmtTime(e.Stop))
	row("duration", duration(e))
	row("window", fmt.Sprintf("-%s / +%s", time.Duration(e.Preroll), time.Duration(e.Postroll)))
	row("previous", e.Previous)
	row("next", e.Next)
	row("quality", qualityName(e))
	if e.Verdict != nil {
		for _, r := range e.Verdict.Reasons {
			row("  "+r.Code, r.Stream+": "+r.Detail)
		}
	}
	tw.Flush()
	if len(e.Quality) == 0 {
		fmt.Fprintln(w, "\nno quality report yet (the report is final when the episode closes)")
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tSAMPLES\tEXPECTED\tCOVERAGE\tRATE\tBYTES\tGAPS\tLOST\tDROPS\tDECODE ERR\tCLOCK\tOFFSET\tDRIFT\tBOUND")
	for _, q := range e.Quality {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f%%\t%.1f Hz\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%.1f ppm\t%.2f ms\n",
			q.Stream, q.Samples, q.Expected, q.Coverage*100, q.MeanRateHz, fmtBytes(int64(q.Bytes)), q.Gaps, q.Lost, q.Drops, q.DecodeErrors,
			q.Clock.Mode, time.Duration(q.Clock.OffsetNs).Round(time.Microsecond), q.Clock.DriftPPM, q.AlignmentErrorBoundMs)
	}
	tw.Flush()
	// At most maxGapLines gaps per stream here; -o json has them all.
	const maxGapLines = 20
	for _, q := range e.Quality {
		for i, g := range q.GapList {
			if i == maxGapLines {
				break
			}
			fmt.Fprintf(w, "gap %s %s +%s: %s\n", q.Stream, fmtTime(g.From), time.Duration(g.To-g.From).Round(time.Millisecond), g.Cause)
		}
		if more := q.Gaps - min(q.Gaps, maxGapLines); more > 0 {
			fmt.Fprintf(w, "gap %s: %d more (-o json lists up to %d)\n", q.Stream, more, episode.MaxGapList)
		}
	}
	for _, q := range e.Quality {
		for _, ev := range q.Clock.Events {
			fmt.Fprintf(w, "clock event %s %s: %s %s\n", q.Stream, fmtTime(ev.T), ev.Kind, ev.Detail)
		}
	}
}

// exportEpisode downloads an episode's MCAP to path through a temporary
// file and an atomic rename, with a progress bar when stderr is a terminal.
func exportEpisode(c *client, id, path string, stdout, stderr io.Writer) error {
	var e episode.Episode
	if err := c.json("GET", "/v1/episodes/"+url.PathEscape(id), nil, &e); err != nil {
		return err
	}
	id = e.ID // a prefix resolved
	var estimate int64
	for _, q := range e.Quality {
		estimate += int64(q.Bytes)
	}
	resp, err := c.do("GET", "/v1/episodes/"+url.PathEscape(id)+"/export", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if path == "-" {
		n, err := io.Copy(stdout, resp.Body)
		if err != nil {
			return fmt.Errorf("export %s: %w", id, err)
		}
		fmt.Fprintf(stderr, "exported %s to stdout (%s)\n", id, fmtBytes(n))
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer os.Remove(tmp.Name())
	var w io.Writer = tmp
	var bar *progressBar
	if isTerminal(stderr) {
		bar = &progressBar{w: stderr, total: estimate, start: time.Now()}
		w = io.MultiWriter(tmp, bar)
	}
	n, err := io.Copy(w, resp.Body)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("export %s: %w", id, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if bar != nil {
		bar.finish()
	}
	fmt.Fprintf(stderr, "exported %s to %s (%s)\n", id, path, fmtBytes(n))
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressBar draws "[=====>    ] 42% 12.3 MiB 8.1 MiB/s" on a terminal.
// total is an estimate (payload bytes); the bar stops at 99% until done.
type progressBar struct {
	w     io.Writer
	total int64
	done  int64
	start time.Time
	last  time.Time
}

func (p *progressBar) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	if time.Since(p.last) > 100*time.Millisecond {
		p.last = time.Now()
		p.draw(min(0.99, frac(p.done, p.total)))
	}
	return len(b), nil
}

func frac(a, b int64) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func (p *progressBar) draw(f float64) {
	rate := float64(p.done) / max(time.Since(p.start).Seconds(), 0.001)
	drawBar(p.w, f, fmt.Sprintf("%3.0f%% %s %s/s", f*100, fmtBytes(p.done), fmtBytes(int64(rate))))
}

// drawBar redraws "[=====>    ] text" in place on a terminal.
func drawBar(w io.Writer, f float64, text string) {
	const width = 30
	n := int(f * width)
	bar := make([]byte, width)
	for i := range bar {
		switch {
		case i < n:
			bar[i] = '='
		case i == n:
			bar[i] = '>'
		default:
			bar[i] = ' '
		}
	}
	fmt.Fprintf(w, "\r[%s] %s ", bar, text)
}

func (p *progressBar) finish() {
	p.draw(1)
	fmt.Fprintln(p.w)
}
