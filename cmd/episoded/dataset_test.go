package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"github.com/episoded/episoded/internal/sim"
	"github.com/episoded/episoded/sync/dataset"
	"github.com/episoded/episoded/sync/dataset/datasetcheck"
)

// runDemo records the simulated cell as `episoded demo` does, but with
// the simulator's triggers limited to exactly n episodes
// (sim.Options.TriggerCount), and returns the demo directory, the
// still-running daemon's API address and the ids of those n episodes,
// all uploaded. The limit is what makes the set fixed on a loaded
// machine: with endless triggers, episodes can start between Finish and
// the simulator's stop (and upload while the datasets are built), or
// come faster than they upload.
func runDemo(t *testing.T, n int) (string, string, []string) {
	t.Helper()
	if testing.Short() {
		t.Skip("records the simulated cell for ~20 s; skipped under -short")
	}
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := sim.New(sim.Options{
		RTSPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Cameras: 2,
		ClockOffset: 500 * time.Millisecond, ClockDriftPPM: 30, Jitter: 2 * time.Millisecond, Seed: 1,
		TriggerFirst: 4 * time.Second, TriggerOn: 4 * time.Second, TriggerPeriod: 6 * time.Second,
		TriggerCount: n, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	simCtx, stopSim := context.WithCancel(context.Background())
	simDone := make(chan struct{}) // closed: read by runDemo and its cleanup
	go func() { s.Run(simCtx); close(simDone) }()
	t.Cleanup(func() { stopSim(); <-simDone })
	<-s.Ready()
	central := filepath.Join(dir, "central")
	if err := os.MkdirAll(central, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("demo", []byte(s.Config(filepath.Join(dir, "store"), central, "127.0.0.1:0")), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	state := map[string]episode.State{}
	onEpisode := func(e episode.Episode) {
		mu.Lock()
		defer mu.Unlock()
		state[e.ID] = e.State
	}
	closed := func() (ids []string) {
		mu.Lock()
		defer mu.Unlock()
		for id, st := range state {
			if st != episode.Recording {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		return ids
	}
	d, _ := daemontest.Run(t, cfg, log, func(d *daemon.Daemon) { d.OnEpisode = onEpisode })
	// The n episodes are closed by their stop triggers, and the simulator
	// publishes no further trigger; stop it anyway (its streams are no
	// longer needed), then Finish: nothing is recording, so it only waits
	// for the uploads of those n episodes (generously: a loaded machine
	// uploads slowly).
	waitUntil(t, 3*time.Minute, fmt.Sprintf("%d episodes closed", n), func() bool { return len(closed()) >= n }, nil)
	stopSim()
	<-simDone
	ctx, c2 := context.WithTimeout(context.Background(), 5*time.Minute)
	defer c2()
	if err := d.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	if trig := s.Triggers(); len(trig) != 2*n {
		t.Fatalf("the simulator published %d triggers, want %d (%d episodes): %+v", len(trig), 2*n, n, trig)
	}
	ids := closed()
	if len(ids) != n {
		t.Fatalf("%d episodes closed, want exactly %d: %v", len(ids), n, ids)
	}
	if got := manifestIDs(central); !slices.Equal(got, ids) {
		t.Fatalf("uploaded %v, want exactly the closed episodes %v", got, ids)
	}
	return dir, "http://" + d.Addr(), ids
}

// manifestIDs lists the ids of the episodes uploaded under root, sorted.
func manifestIDs(root string) []string {
	var ids []string
	filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.Name() == "manifest.json" {
			ids = append(ids, filepath.Base(filepath.Dir(p)))
		}
		return nil
	})
	slices.Sort(ids)
	return ids
}

func mappingPath(t *testing.T) string {
	p, err := filepath.Abs("../../configs/dataset-demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func build(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(append([]string{"dataset", "build", "--no-progress"}, args...), &out, &errb)
	return out.String(), errb.String(), code
}

// treeHash maps every file under dir to its sha256.
func treeHash(t *testing.T, dir string) map[string][32]byte {
	m := map[string][32]byte{}
	filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		m[rel] = sha256.Sum256(b)
		return nil
	})
	return m
}

// TestDatasetFromDemo records the demo cell, then builds LeRobot datasets
// from its uploads (--from DIR, as documented) and from the running
// daemon (--api), and checks them with the independent checker; appending
// episode by episode must give the same bytes as building once; a
// tampered episode.mcap is refused, naming the object.
func TestDatasetFromDemo(t *testing.T) {
	const n = 2
	demo, api, ids := runDemo(t, n)
	central := filepath.Join(demo, "central")
	mp := mappingPath(t)

	once := filepath.Join(t.TempDir(), "once")
	t.Run("from-dir", func(t *testing.T) {
		out, errs, code := build(t, "--from", central, "--map", mp, "--out", once)
		if code != 0 {
			t.Fatalf("exit %d: %s\n%s", code, errs, out)
		}
		t.Logf("%s", out)
		if !strings.Contains(out, "remuxed") {
			t.Errorf("no summary: %s", out)
		}
		rep := datasetcheck.Run(t, once)
		if rep.Episodes != n || rep.Decode.Queries != 2*rep.Frames {
			t.Errorf("checked %d episodes, %d frame lookups for %d rows and 2 cameras", rep.Episodes, rep.Decode.Queries, rep.Frames)
		}
		if len(rep.Tasks) != 1 || rep.Tasks[0] != "pick-and-place" {
			t.Errorf("tasks %v, want the episodes' task", rep.Tasks)
		}
		// Fidelity: every camera frame within half a frame of its row, no
		// frame repeated (the demo cameras have no gaps: remuxed), the
		// joints interpolated (offset 0) and the gripper within 20 ms.
		for _, cam := range []string{"cam1", "cam2"} {
			r := rep.Ranges["fidelity.offset_ms.images."+cam]
			if r.Min < -16.7 || r.Max > 16.7 || r.Max-r.Min < 0.01 {
				t.Errorf("%s frame offsets [%v, %v] ms", cam, r.Min, r.Max)
			}
			if n := rep.Ranges["fidelity.repeated.images."+cam].Trues; n != 0 {
				t.Errorf("%s: %d repeated frames", cam, n)
			}
		}
		if r, ok := rep.Ranges["fidelity.offset_ms.cell1.gripper.state"]; !ok || r.Min < -20 || r.Max > 20 {
			t.Errorf("gripper offsets %+v (present %v)", r, ok)
		}
		// The episodes table carries each episode's id, verdict, coverage
		// and alignment bound.
		okCount := 0
		for _, e := range rep.Extra {
			q, _ := e["episoded/quality"].(string)
			if q != "ok" && q != "degraded" {
				t.Errorf("episode %v: quality %q, want the episode's verdict", e["episoded/id"], q)
			}
			if q == "ok" {
				okCount++
			}
			// Coverage is what the episode's report says; under load the
			// demo's episodes can be degraded, honestly. What must hold:
			// a coverage in (0, 1], and below the default quality floor
			// (0.99) the verdict is degraded, never ok.
			c, _ := e["episoded/coverage"].(float64)
			if c <= 0 || c > 1 {
				t.Errorf("episode %v: coverage %v", e["episoded/id"], e["episoded/coverage"])
			}
			if c < 0.99 && q == "ok" {
				t.Errorf("episode %v: coverage %v below 0.99 but the verdict is ok", e["episoded/id"], c)
			}
			if sc, _ := e["episoded/stream_coverage"].(float64); sc <= 0 || sc > 1 {
				t.Errorf("episode %v: stream coverage %v", e["episoded/id"], e["episoded/stream_coverage"])
			}
			if b, _ := e["episoded/alignment_bound_ms"].(float64); b <= 0 {
				t.Errorf("episode %v: alignment bound %v", e["episoded/id"], e["episoded/alignment_bound_ms"])
			}
		}
		// --quality ok takes exactly the episodes whose verdict is ok.
		okDir := filepath.Join(t.TempDir(), "ok")
		out, errs, code = build(t, "--from", central, "--map", mp, "--out", okDir, "--quality", "ok")
		if code != 0 || !strings.Contains(out, itoa(okCount)+" added") {
			t.Errorf("--quality ok with %d ok episodes: exit %d: %s\n%s", okCount, code, errs, out)
		}
	})

	t.Run("from-api", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "api")
		out, errs, code := build(t, "--api", api, "--cell", "cell1", "--map", mp, "--out", dir)
		if code != 0 {
			t.Fatalf("exit %d: %s\n%s", code, errs, out)
		}
		if !strings.Contains(out, itoa(n)+" added") {
			t.Errorf("--api over the %d episodes: %s", n, out)
		}
		if rep := datasetcheck.Run(t, dir); rep.Episodes != n {
			t.Errorf("--api gave %d episodes, want %d", rep.Episodes, n)
		}
		// Selectors: one id; a task no episode has.
		one := filepath.Join(t.TempDir(), "one")
		if out, errs, code := build(t, "--api", api, "--id", ids[len(ids)-1], "--map", mp, "--out", one); code != 0 || !strings.Contains(out, "1 added") {
			t.Fatalf("--id: exit %d: %s\n%s", code, errs, out)
		}
		if rep := datasetcheck.Run(t, one); rep.Episodes != 1 {
			t.Errorf("--id gave %d episodes", rep.Episodes)
		}
		if out, errs, code := build(t, "--api", api, "--task", "no-such-task", "--label", "sim=true", "--since", "2000-01-01T00:00:00Z", "--map", mp, "--out", filepath.Join(t.TempDir(), "none")); code != 0 || !strings.Contains(out, "0 added") {
			t.Errorf("--task no-such-task: exit %d: %s\n%s", code, errs, out)
		}
		// Same episodes, same exports: the same dataset as from the uploads.
		a, b := treeHash(t, once), treeHash(t, dir)
		if len(a) != len(b) {
			t.Errorf("the api build made %d files, the dir build %d", len(b), len(a))
		}
		for k, v := range a {
			if k != "meta/info.json" && b[k] != v {
				t.Errorf("%s differs between the dir and api builds", k)
			}
		}
	})

	t.Run("append", func(t *testing.T) {
		var dirs []string
		filepath.WalkDir(central, func(p string, de fs.DirEntry, err error) error {
			if err == nil && de.Name() == "manifest.json" {
				dirs = append(dirs, filepath.Dir(p))
			}
			return nil
		})
		if len(dirs) != n {
			t.Fatalf("%d uploaded episodes, want %d", len(dirs), n)
		}
		inc := filepath.Join(t.TempDir(), "inc")
		for _, d := range dirs { // WalkDir order is by name: ids sort by time
			if out, errs, code := build(t, "--from", d, "--map", mp, "--out", inc); code != 0 {
				t.Fatalf("exit %d: %s\n%s", code, errs, out)
			}
		}
		// Everything again: nothing new.
		out, errs, code := build(t, "--from", central, "--map", mp, "--out", inc)
		if code != 0 || !strings.Contains(out, "0 added, "+itoa(len(dirs))+" already present") {
			t.Fatalf("rebuild over the same episodes: exit %d: %s\n%s", code, errs, out)
		}
		datasetcheck.Run(t, inc)
		a, b := treeHash(t, once), treeHash(t, inc)
		if len(a) != len(b) {
			t.Errorf("append made %d files, building once %d", len(b), len(a))
		}
		for k, v := range a {
			if b[k] != v {
				t.Errorf("%s differs between appending and building once", k)
			}
		}
	})

	t.Run("tampered", func(t *testing.T) {
		var victim string
		filepath.WalkDir(central, func(p string, de fs.DirEntry, err error) error {
			if err == nil && de.Name() == "episode.mcap" && victim == "" {
				victim = p
			}
			return nil
		})
		b, err := os.ReadFile(victim)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(victim, b, 0o644); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "tampered")
		out, errs, code := build(t, "--from", central, "--map", mp, "--out", dir)
		if code == 0 {
			t.Fatalf("a tampered episode.mcap was accepted: %s", out)
		}
		if !strings.Contains(errs, victim) || !strings.Contains(errs, "sha256") {
			t.Errorf("error does not name the object and its checksum: %s", errs)
		}
		if _, err := os.Stat(filepath.Join(dir, "meta", "info.json")); err == nil {
			t.Errorf("a dataset was written from a tampered source")
		}
	})
}

func itoa(n int) string { return fmtInt(n) }

func fmtInt(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// TestExampleMappings loads every dataset mapping in configs/.
func TestExampleMappings(t *testing.T) {
	files, _ := filepath.Glob("../../configs/dataset-*.yaml")
	if len(files) == 0 {
		t.Fatal("no example mapping in configs/")
	}
	for _, f := range files {
		if _, err := dataset.LoadMapping(f); err != nil {
			t.Errorf("%v", err)
		}
	}
}

// TestDatasetUsage: bad command lines are usage errors with a message.
func TestDatasetUsage(t *testing.T) {
	mp := mappingPath(t)
	bad := writeFile(t, filepath.Join(t.TempDir(), "bad.yaml"), "fps: 0\nmissing: sometimes\nstate: []\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--map", mp}, "--out and --map are required"},
		{[]string{"--out", t.TempDir(), "--map", bad}, "fps: must be 1..1000"},
		{[]string{"--out", t.TempDir(), "--map", bad}, `missing: "sometimes" is not fill-previous, split or drop-episode`},
		{[]string{"--out", t.TempDir(), "--map", mp, "--from", "/nonexistent"}, "no such file or directory"},
		{[]string{"--out", t.TempDir(), "--map", mp, "--from", "s3://bucket/p"}, "no endpoint"},
		{[]string{"--out", t.TempDir(), "--map", mp, "--quality", "great"}, "want ok or degraded"},
	} {
		t.Setenv("AWS_ENDPOINT_URL", "")
		_, errs, code := build(t, tc.args...)
		if code != exitUsage || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, %q; want exit 2 and %q", tc.args, code, errs, tc.want)
		}
	}
}
