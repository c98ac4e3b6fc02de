package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/sim"
	"github.com/episoded/episoded/internal/testwait"
)

// TestOutagesRealCamera: a camera served by a real RTSP server (gortsplib,
// in the simulator) and read by the daemon's real RTSP client goes away
// at the start, in the middle, at the end and for the whole of four
// episodes started and stopped through the HTTP API. Each episode's report
// counts cam1 against its window (expected within one sample of the
// window's 30 fps slots), lists the outage as one gap accounted to
// device_offline, and the verdict is degraded for the right reason.
func TestOutagesRealCamera(t *testing.T) {
	if testing.Short() {
		t.Skip("records four episodes in real time (~40 s); skipped under -short")
	}
	const stream = "cell1/cam1"
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	outages := []sim.Outage{
		{Camera: "cam1", At: sec(4), For: sec(5)},      // [4, 9): start of A
		{Camera: "cam1", At: sec(16.5), For: sec(6.5)}, // [16.5, 23): end of B, all of C
		{Camera: "cam1", At: sec(28), For: sec(2)},     // [28, 30): middle of D
	}
	type epCase struct {
		name        string
		start, stop time.Duration // trigger times relative to the simulator's start
		outage      int           // index into outages
		reason      string
	}
	cases := []epCase{
		{"start", sec(7), sec(12), 0, episode.ReasonLowCoverage},
		{"end", sec(14), sec(17), 1, episode.ReasonLowCoverage},
		{"whole", sec(20), sec(21), 1, episode.ReasonMissingStream},
		{"middle", sec(27), sec(32), 2, episode.ReasonLowCoverage},
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := daemontest.StartSim(t, sim.Options{RTSPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Cameras: 1,
		TriggerPeriod: -1, Outages: outages, Logger: log})

	dir := t.TempDir()
	central := filepath.Join(dir, "central")
	if err := os.MkdirAll(central, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("outage", []byte(s.Config(filepath.Join(dir, "store"), central, "127.0.0.1:0")), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Devices {
		// Reconnect quickly once the camera is back, so the gap ends
		// close to the outage's end.
		cfg.Devices[i].Backoff = config.Backoff{Min: 100 * time.Millisecond, Max: 200 * time.Millisecond}
	}
	_, api := daemontest.Start(t, cfg, log)
	t0 := s.T0()
	// at paces the outage schedule: it waits for a time, not a condition.
	at := func(rel time.Duration) { time.Sleep(time.Until(time.Unix(0, t0+int64(rel)))) }

	ids := make([]string, len(cases))
	for i, c := range cases {
		at(c.start)
		var e episode.Episode
		if code := call(t, "POST", api+"/v1/cells/cell1/episodes", map[string]string{"task": c.name}, &e); code != 201 {
			t.Fatalf("%s: start: %d", c.name, code)
		}
		ids[i] = e.ID
		at(c.stop)
		if code := call(t, "POST", api+"/v1/episodes/"+e.ID+"/stop", nil, nil); code != 200 {
			t.Fatalf("%s: stop: %d", c.name, code)
		}
	}
	const period = int64(time.Second) / 30
	for i, c := range cases {
		e := waitSettled(t, api, ids[i], c.name)
		t.Run(c.name, func(t *testing.T) {
			from, to := e.Window(0)
			var q *episode.StreamReport
			for i := range e.Quality {
				if e.Quality[i].Stream == stream {
					q = &e.Quality[i]
				}
			}
			if q == nil {
				t.Fatalf("no report for %s: %+v", stream, e.Quality)
			}
			o := outages[c.outage]
			oFrom, oTo := t0+int64(o.At), t0+int64(o.At+o.For)
			t.Logf("window [%v, %v]; outage [%v, %v]; %d samples, expected %d, coverage %v; gaps %+v; verdict %+v",
				rel(from, t0), rel(to, t0), o.At, o.At+o.For, q.Samples, q.Expected, q.Coverage, q.GapList, e.Verdict)
			if !degradedFor(e, stream, c.reason) {
				t.Errorf("verdict %+v, want degraded: %s of %s", e.Verdict, c.reason, stream)
			}
			// Expected: the window's 30 fps slots, within one sample (for
			// the whole-episode outage, at the rate learned before it).
			slots := float64(to-from) / float64(period)
			if diff := float64(q.Expected) - slots; diff < -1 || diff > 1 {
				t.Errorf("expected %d samples, the window has %.1f slots", q.Expected, slots)
			}
			if c.name == "whole" {
				if q.Samples != 0 || q.Coverage != 0 || len(q.GapList) != 1 || q.GapList[0].From != from || q.GapList[0].To != to ||
					q.GapList[0].Cause != episode.CauseDeviceOffline {
					t.Errorf("whole-episode outage: %d samples, coverage %v, gaps %+v; want one device_offline gap over the window", q.Samples, q.Coverage, q.GapList)
				}
				return
			}
			if want := float64(q.Samples) / float64(q.Expected); q.Coverage < want-1e-6 || q.Coverage > want+1e-6 {
				t.Errorf("coverage %v, want %d/%d", q.Coverage, q.Samples, q.Expected)
			}
			// The outage is one gap, accounted to the camera being offline:
			// it starts within one period of the outage (or at the window's
			// start) and ends after it, once the camera is reconnected and
			// a keyframe arrived (within 3 s: backoff, then up to a 1 s GOP).
			var g *episode.Gap
			for i := range q.GapList {
				if q.GapList[i].From < oTo && oFrom < q.GapList[i].To {
					if g != nil {
						t.Errorf("the outage is more than one gap: %+v", q.GapList)
					}
					g = &q.GapList[i]
				}
			}
			if g == nil {
				t.Fatalf("no gap over the outage: %+v", q.GapList)
			}
			if g.Cause != episode.CauseDeviceOffline {
				t.Errorf("gap cause %s, want device_offline", g.Cause)
			}
			wantFrom, wantTo := max(oFrom, from), min(oTo, to)
			if g.From < wantFrom-2*period || g.From > wantFrom+period {
				t.Errorf("gap starts at %v, want within a period of %v", rel(g.From, t0), rel(wantFrom, t0))
			}
			if g.To < wantTo-period || g.To > wantTo+int64(3*time.Second) {
				t.Errorf("gap ends at %v, want %v (+ reconnect and the next keyframe, at most 3 s)", rel(g.To, t0), rel(wantTo, t0))
			}
		})
	}
	// Listed under ?quality=degraded, and counted in the metric.
	var list []episode.Episode
	if code := call(t, "GET", api+"/v1/episodes?quality=degraded", nil, &list); code != 200 || len(list) < len(cases) {
		t.Errorf("?quality=degraded: %d, %d episodes, want at least %d", code, len(list), len(cases))
	}
	// The counter is incremented just after the episode is stored closed,
	// so a scrape may briefly lag the list: wait for it, then compare.
	want := `episoded_episodes_closed_total{cell="cell1",quality="degraded"} ` + fmt.Sprint(len(list)) + "\n"
	var metrics string
	testwait.For(t, 10*time.Second, "the degraded-episode metric to count the listed episodes", func() bool {
		resp, err := http.Get(api + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		metrics = string(body)
		return strings.Contains(metrics, want)
	}, func() string { return grepLines(metrics, "episodes_closed") })
}

func rel(t, t0 int64) time.Duration { return time.Duration(t - t0).Round(time.Millisecond) }

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// call makes a JSON API call and decodes the answer into out (if not nil).
func call(t *testing.T, method, url string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	if body != nil {
		// The API takes JSON bodies only with their content type (415).
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, b)
		}
	}
	return resp.StatusCode
}
