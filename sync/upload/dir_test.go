package upload_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

func TestDirTarget(t *testing.T) {
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000e1", Video: true, Telemetry: true, Lidar: true})
	root := t.TempDir()
	o := upload.Options{Target: upload.Target{Type: "dir", Path: root}, Site: "plant1", Gateway: "gw7", StageDir: t.TempDir()}
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e := state(t, st, fx.Episode.ID); e.State != episode.Uploaded {
		t.Fatalf("state %s (%s)", e.State, e.Reason)
	}
	dir := filepath.Join(root, filepath.FromSlash(upload.Dir("", "plant1", "gw7", fx.Episode)))
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "episode.mcap,manifest.json" {
		t.Fatalf("files %v (temp files left behind?)", names)
	}
	want, size := exportSHA(t, st, fx.Episode.ID)
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m upload.Manifest
	if err := json.Unmarshal(data, &m); err != nil || m.Objects[0].SHA256 != want || m.Objects[0].Size != size {
		t.Fatalf("manifest %+v %v", m, err)
	}
	mi, _ := os.Stat(filepath.Join(dir, "manifest.json"))
	ei, _ := os.Stat(filepath.Join(dir, "episode.mcap"))
	if mi.ModTime().Before(ei.ModTime()) {
		t.Fatalf("manifest written before the episode")
	}

	// Idempotent: a re-run, and a run after the local state was reset,
	// write nothing. The manifest's time is set back a day, so that a
	// rewrite shows whatever the file system's time resolution.
	sent := u.Sent()
	old := mi.ModTime().Add(-24 * time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "manifest.json"), old, old); err != nil {
		t.Fatal(err)
	}
	e := state(t, st, fx.Episode.ID)
	e.State = episode.Closed
	if err := st.PutEpisode(e); err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if u.Sent() != sent {
		t.Fatalf("re-run sent %d bytes", u.Sent()-sent)
	}
	mi2, _ := os.Stat(filepath.Join(dir, "manifest.json"))
	if !mi2.ModTime().Equal(old) {
		t.Fatalf("manifest rewritten")
	}
	if e := state(t, st, fx.Episode.ID); e.State != episode.Uploaded {
		t.Fatalf("state %s", e.State)
	}
}

func TestDirTargetMissingIsQuarantined(t *testing.T) {
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000e2", Telemetry: true})
	o := upload.Options{Target: upload.Target{Type: "dir", Path: filepath.Join(t.TempDir(), "not-mounted")}, StageDir: t.TempDir()}
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e := state(t, st, fx.Episode.ID); e.State != episode.Quarantined || !strings.Contains(e.Reason, "not-mounted") {
		t.Fatalf("state %s reason %q", e.State, e.Reason)
	}

	// The status handler the daemon mounts, and Retry (the daemon's POST
	// /v1/episodes/{id}/retry).
	srv := httptest.NewServer(u.StatusHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/uploads")
	if err != nil {
		t.Fatal(err)
	}
	var stt upload.Status
	if err := json.NewDecoder(resp.Body).Decode(&stt); err != nil || len(stt.Quarantined) != 1 || stt.Quarantined[0].Reason == "" {
		t.Fatalf("GET /v1/uploads: %+v %v", stt, err)
	}
	resp.Body.Close()
	if err := u.Retry("nope"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("retry of an unknown episode: %v, want not found", err)
	}
	if err := u.Retry(fx.Episode.ID); err != nil {
		t.Fatal(err)
	}
	if e := state(t, st, fx.Episode.ID); e.State != episode.Closed {
		t.Fatalf("after retry: %s", e.State)
	}
}
