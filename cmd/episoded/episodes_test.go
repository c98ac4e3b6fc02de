package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/sim"
)

// daemonProc is the episoded binary running against a simulated cell.
type daemonProc struct {
	t      *testing.T
	cfg    string
	addr   string
	cmd    *exec.Cmd
	stderr bytes.Buffer
	exited chan error
}

func startDaemon(t *testing.T, cfg, addr string) *daemonProc {
	t.Helper()
	p := &daemonProc{t: t, cfg: cfg, addr: addr, exited: make(chan error, 1)}
	p.cmd = exec.Command(bin, "run", "--config", cfg)
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	waitUntil(t, 60*time.Second, "daemon ready", func() bool { return httpCode("http://"+addr+"/readyz") == 200 }, &p.stderr)
	return p
}

func (p *daemonProc) api(method, path string, body any) (int, []byte) {
	p.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+p.addr+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (p *daemonProc) episode(id string) episode.Episode {
	p.t.Helper()
	code, b := p.api("GET", "/v1/episodes/"+id, nil)
	var e episode.Episode
	if code != 200 || json.Unmarshal(b, &e) != nil {
		p.t.Fatalf("GET episode %s: %d %s", id, code, b)
	}
	return e
}

// streamSamples returns each stream's ingested sample count from /v1/status.
func (p *daemonProc) streamSamples() map[string]uint64 {
	p.t.Helper()
	code, b := p.api("GET", "/v1/status", nil)
	var st struct {
		Streams []struct {
			Stream   string `json:"stream"`
			Counters struct {
				Samples uint64 `json:"samples"`
			} `json:"counters"`
		} `json:"streams"`
	}
	if code != 200 || json.Unmarshal(b, &st) != nil {
		p.t.Fatalf("GET /v1/status: %d %s", code, b)
	}
	m := map[string]uint64{}
	for _, s := range st.Streams {
		m[s.Stream] = s.Counters.Samples
	}
	return m
}

// durableSamples returns episoded_storage_samples_written_total.
func (p *daemonProc) durableSamples() float64 {
	p.t.Helper()
	code, b := p.api("GET", "/metrics", nil)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "episoded_storage_samples_written_total "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	p.t.Fatalf("GET /metrics: %d, no episoded_storage_samples_written_total", code)
	return 0
}

// recordSome waits until each of at least streams streams has taken n
// more samples, and a commit after that made them durable: a condition,
// where a fixed sleep would record nothing on a stalled machine.
func (p *daemonProc) recordSome(streams int, n uint64) {
	p.t.Helper()
	base := p.streamSamples()
	waitUntil(p.t, 30*time.Second, fmt.Sprintf("%d more samples on each of %d streams", n, streams), func() bool {
		cur := p.streamSamples()
		if len(cur) < streams {
			return false
		}
		for s, c := range cur {
			if c < base[s]+n {
				return false
			}
		}
		return true
	}, &p.stderr)
	d := p.durableSamples()
	waitUntil(p.t, 30*time.Second, "a durable commit after them", func() bool { return p.durableSamples() > d }, &p.stderr)
}

// cli runs the episoded CLI in-process against this daemon.
func (p *daemonProc) cli(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	args = append(args, "--api", "http://"+p.addr)
	code := Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestEpisodesAPIAndCrash drives the episode API and CLI against a real
// daemon recording the simulator, then kills the daemon mid-episode and
// checks that the restarted daemon closes it as interrupted at its last
// durable sample.
func TestEpisodesAPIAndCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon against a simulated cell for ~30 s; skipped under -short")
	}
	s, err := sim.New(sim.Options{RTSPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Cameras: 1, TriggerPeriod: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-s.Ready()
	dir := t.TempDir()
	addr := freeAddr(t)
	central := filepath.Join(dir, "central")
	os.MkdirAll(central, 0o755)
	cfg := writeFile(t, filepath.Join(dir, "c.yaml"), s.Config(filepath.Join(dir, "store"), central, addr))

	d := startDaemon(t, cfg, addr)
	if code, b := d.api("POST", "/v1/cells/nowhere/episodes", nil); code != 404 {
		t.Fatalf("start on an unknown cell: %d %s", code, b)
	}
	if code, b := d.api("POST", "/v1/cells/cell1/episodes", map[string]any{"task": "pick", "bogus": 1}); code != 400 {
		t.Fatalf("start with an unknown field: %d %s", code, b)
	}
	code, b := d.api("POST", "/v1/cells/cell1/episodes", map[string]any{"task": "pick", "operator": "ana", "labels": map[string]string{"shift": "a"}})
	var e1 episode.Episode
	if code != 201 || json.Unmarshal(b, &e1) != nil || e1.State != episode.Recording || e1.Task != "pick" {
		t.Fatalf("start: %d %s", code, b)
	}
	if code, b := d.api("POST", "/v1/cells/cell1/episodes", map[string]any{"task": "again"}); code != 409 {
		t.Fatalf("second start while recording: %d %s, want 409", code, b)
	}
	d.recordSome(4, 5)
	if code, b := d.api("POST", "/v1/episodes/"+e1.ID+"/stop", nil); code != 200 {
		t.Fatalf("stop: %d %s", code, b)
	}
	if code, _ := d.api("POST", "/v1/episodes/"+e1.ID+"/stop", nil); code != 409 {
		t.Fatalf("second stop: %d, want 409", code)
	}
	// Closed (and then uploaded to the dir target) once post-roll and the
	// settle margin have passed.
	waitUntil(t, 30*time.Second, "the stopped episode to close", func() bool { return d.episode(e1.ID).State != episode.Recording }, nil)
	got := d.episode(e1.ID)
	if len(got.Quality) < 4 || got.StopReason != "api" {
		t.Fatalf("closed episode: %+v", got)
	}
	for _, q := range got.Quality {
		if q.Samples == 0 {
			t.Errorf("stream %s has no samples in the report", q.Stream)
		}
	}

	// Filters and the CLI.
	code, b = d.api("GET", "/v1/episodes?label=shift=a", nil)
	var list []episode.Episode
	if code != 200 || json.Unmarshal(b, &list) != nil || len(list) != 1 || list[0].ID != e1.ID {
		t.Fatalf("list by label: %d %s", code, b)
	}
	if code, b = d.api("GET", "/v1/episodes?label=shift=b", nil); code != 200 || strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("list by another label: %d %s", code, b)
	}
	if code, _ = d.api("GET", "/v1/episodes?state=sleeping", nil); code != 400 {
		t.Fatalf("list with a bad state: %d, want 400", code)
	}
	// The verdict: present once closed, filterable, and a column.
	if got.Verdict == nil || (got.Verdict.Status != episode.QualityOK && got.Verdict.Status != episode.QualityDegraded) {
		t.Fatalf("closed episode has no verdict: %+v", got.Verdict)
	}
	other := episode.QualityOK
	if got.Verdict.Status == other {
		other = episode.QualityDegraded
	}
	if code, b = d.api("GET", "/v1/episodes?quality="+got.Verdict.Status, nil); code != 200 || json.Unmarshal(b, &list) != nil || len(list) != 1 {
		t.Fatalf("list by quality %s: %d %s", got.Verdict.Status, code, b)
	}
	if code, b = d.api("GET", "/v1/episodes?quality="+other, nil); code != 200 || strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("list by quality %s: %d %s", other, code, b)
	}
	if code, _ = d.api("GET", "/v1/episodes?quality=great", nil); code != 400 {
		t.Fatalf("list with a bad quality: %d, want 400", code)
	}
	if c, out, errs := d.cli("episodes", "list", "--quality", got.Verdict.Status); c != 0 || !strings.Contains(out, e1.ID) || !strings.Contains(out, "QUALITY") {
		t.Fatalf("episodes list --quality: %d %q %q", c, out, errs)
	}
	if c, out, errs := d.cli("episodes", "list", "--quality", other); c != 0 || strings.Contains(out, e1.ID) {
		t.Fatalf("episodes list --quality %s: %d %q %q", other, c, out, errs)
	}
	if c, out, errs := d.cli("episodes", "list"); c != 0 || !strings.Contains(out, e1.ID) || !strings.Contains(out, "pick") {
		t.Fatalf("episodes list: %d %q %q", c, out, errs)
	}
	if c, out, errs := d.cli("episodes", "show", e1.ID); c != 0 || !strings.Contains(out, "cell1/cam1") || !strings.Contains(out, "BOUND") ||
		!strings.Contains(out, "quality:") || !strings.Contains(out, "COVERAGE") {
		t.Fatalf("episodes show: %d %q %q", c, out, errs)
	}
	if c, out, _ := d.cli("episodes", "show", e1.ID, "-o", "json"); c != 0 || !json.Valid([]byte(out)) {
		t.Fatalf("episodes show -o json: %d %q", c, out)
	}
	mcapPath := filepath.Join(dir, "e1.mcap")
	if c, _, errs := d.cli("episodes", "export", e1.ID, "--file", mcapPath); c != 0 {
		t.Fatalf("episodes export: %d %q", c, errs)
	}
	fileMCAP, err := os.ReadFile(mcapPath)
	if err != nil || !bytes.HasPrefix(fileMCAP, []byte("\x89MCAP0\r\n")) {
		t.Fatalf("exported file is not MCAP: %v", err)
	}
	// --file - writes the MCAP to stdout (and nothing else there); an id
	// prefix works as well as the full id; -o is the format, not the file.
	if c, out, errs := d.cli("episodes", "export", e1.ID[:len(e1.ID)-6], "--file", "-"); c != 0 || !strings.HasPrefix(out, "\x89MCAP0\r\n") || !strings.HasSuffix(out, "\x89MCAP0\r\n") || len(out) < len(fileMCAP)/2 {
		t.Fatalf("episodes export --file -: %d, %d bytes, %q", c, len(out), errs)
	}
	if _, err := os.Stat(filepath.Join(".", "-")); err == nil {
		t.Fatal("export --file - wrote a file named -")
	}
	if c, _, errs := d.cli("episodes", "export", e1.ID, "-o", mcapPath); c != exitUsage || !strings.Contains(errs, "--file") {
		t.Fatalf("episodes export -o FILE: %d %q, want a usage error naming --file", c, errs)
	}
	if c, _, errs := d.cli("episodes", "show", "no-such-episode"); c == 0 || !strings.Contains(errs, "404") {
		t.Fatalf("show of an unknown episode: %d %q", c, errs)
	}
	if c, out, errs := d.cli("status"); c != 0 || !strings.Contains(out, "cell1/cam1") {
		t.Fatalf("status: %d %q %q", c, out, errs)
	}

	// Delete: 409 while recording, then gone.
	code, b = d.api("POST", "/v1/cells/cell1/episodes", map[string]any{"task": "crash"})
	var e2 episode.Episode
	if code != 201 || json.Unmarshal(b, &e2) != nil {
		t.Fatalf("start e2: %d %s", code, b)
	}
	if code, _ := d.api("DELETE", "/v1/episodes/"+e2.ID, nil); code != 409 {
		t.Fatalf("delete while recording: %d, want 409", code)
	}
	waitUntil(t, 30*time.Second, "e1 uploaded", func() bool { return d.episode(e1.ID).State == episode.Uploaded }, nil)
	if c, out, errs := d.cli("episodes", "delete", e1.ID); c != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("episodes delete: %d %q %q", c, out, errs)
	}
	if code, _ := d.api("GET", "/v1/episodes/"+e1.ID, nil); code != 404 {
		t.Fatalf("deleted episode still there: %d", code)
	}

	// Crash mid-episode: SIGKILL, restart, and the episode is interrupted
	// at its last durable sample.
	d.recordSome(4, 5)
	killedAt := time.Now().UnixNano()
	d.cmd.Process.Kill()
	<-d.exited
	d2 := startDaemon(t, cfg, addr)
	got = d2.episode(e2.ID)
	// Interrupted, and the uploader may already have taken it on.
	if got.StopReason != "crash" || (got.State != episode.Interrupted && got.State != episode.Uploading && got.State != episode.Uploaded) {
		t.Fatalf("after a crash the episode is %s (%s), want interrupted (crash)", got.State, got.StopReason)
	}
	if got.Stop <= got.Start || got.Stop > killedAt {
		t.Fatalf("interrupted episode stops at %d; want after its start %d and before the kill %d", got.Stop, got.Start, killedAt)
	}
	if killedAt-got.Stop > int64(2*time.Second) {
		t.Fatalf("interrupted %s before the kill: its last durable sample should be within the sync interval", time.Duration(killedAt-got.Stop))
	}
	if len(got.Quality) == 0 {
		t.Fatal("interrupted episode has no quality report")
	}
	// The cell records again after the restart.
	if code, b := d2.api("POST", "/v1/cells/cell1/episodes", nil); code != 201 {
		t.Fatalf("start after restart: %d %s", code, b)
	}
}
