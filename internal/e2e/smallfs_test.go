package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"github.com/episoded/episoded/internal/mcapcheck"
	"github.com/episoded/episoded/internal/sim"
	"github.com/episoded/episoded/internal/smallfs"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/export"
)

// poll is one observation of the daemon and the filesystem.
type poll struct {
	at       time.Time
	rejected float64 // episoded_storage_rejected_samples_total
	written  float64 // episoded_storage_samples_written_total
	full     bool
	free     int64 // statfs, measured by the test
	du       int64 // the store directory's allocated blocks, measured by the test
	data     int64 // of which sstables, blob files and segments
}

type smallFSCase struct {
	name    string
	policy  string
	quota   config.ByteSize
	minFree config.ByteSize
	// outside is written on the filesystem before the daemon starts, and
	// removed once the store is full (reject-new).
	outside int64
}

// TestSmallFilesystem records two cameras, robot telemetry and a fast lidar
// with the real daemon onto a 256 MB filesystem until it is full, for
// reject-new, evict-oldest and a 100 MiB quota. It checks that min_free and
// the quota are hard limits (measured by the test with statfs and du),
// that the store never refuses samples for more than 10 s while it is
// clearly under its threshold, that removing outside files and deleting
// episodes free real space and let samples in again within seconds, and
// that every episode kept still exports to MCAP that the official reader
// validates.
func TestSmallFilesystem(t *testing.T) {
	for _, c := range []smallFSCase{
		{name: "reject-new", policy: "reject-new", minFree: 10 << 20, outside: 40 << 20},
		{name: "evict-oldest", policy: "evict-oldest", minFree: 10 << 20},
		{name: "quota-100MiB", policy: "evict-oldest", quota: 100 << 20, minFree: 10 << 20},
	} {
		t.Run(c.name, func(t *testing.T) { runSmallFS(t, c) })
	}
}

func runSmallFS(t *testing.T, c smallFSCase) {
	mnt := smallfs.Mount(t, "256M")
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	s := daemontest.StartSim(t, sim.Options{
		RTSPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Cameras: 2, Seed: 7,
		LidarRate:    50, // ~5 MB/s: fills the disk in under a minute
		TriggerFirst: time.Second, TriggerPeriod: 5 * time.Second, TriggerOn: 3 * time.Second,
		Logger: log,
	})

	outside := filepath.Join(mnt, "outside.bin")
	if c.outside > 0 {
		if err := os.WriteFile(outside, bytes.Repeat([]byte{1}, int(c.outside)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	storeDir := filepath.Join(mnt, "store")
	cfg, err := config.Parse("smallfs", []byte(s.Config(storeDir, t.TempDir(), "127.0.0.1:0")), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Storage.FullPolicy = c.policy
	cfg.Storage.Quota = c.quota
	minFree := c.minFree
	cfg.Storage.MinFree = &minFree
	cfg.Storage.TimelineRetention = 5 * time.Second
	cfg.Sync.Mode = config.SyncOneshot // nothing uploads: no episode becomes evictable by upload
	d, stopDaemon := daemontest.Run(t, cfg, log, nil)
	base := "http://" + d.Addr()

	var polls []poll
	observe := func() poll {
		p := poll{at: time.Now()}
		m := get(t, base+"/metrics")
		p.rejected, p.written = metric(m, "episoded_storage_rejected_samples_total"), metric(m, "episoded_storage_samples_written_total")
		var st struct {
			Storage storage.Usage `json:"storage"`
		}
		if err := json.Unmarshal(get(t, base+"/v1/status"), &st); err != nil {
			t.Fatalf("status: %v", err)
		}
		p.full = st.Storage.Full
		var sfs syscall.Statfs_t
		if err := syscall.Statfs(mnt, &sfs); err != nil {
			t.Fatal(err)
		}
		p.free = int64(sfs.Bavail) * int64(sfs.Bsize)
		p.du, p.data = storeDU(t, storeDir)
		polls = append(polls, p)
		return p
	}
	// run observes for d, or until stop says so.
	run := func(d time.Duration, stop func(p poll) bool) poll {
		t.Helper()
		end := time.Now().Add(d)
		for {
			p := observe()
			if (stop != nil && stop(p)) || time.Now().After(end) {
				return p
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// The store's own word on whether it refuses samples (status "full").
	// Devices do not offer every sample once refused (a camera waits for
	// its next keyframe, MQTT holds back), so the refusal counter only
	// moves in bursts.
	refusing := func(p poll) bool { return p.full }
	fullFor := func(d time.Duration) func(p poll) bool {
		var since time.Time
		return func(p poll) bool {
			if !refusing(p) {
				since = time.Time{}
				return false
			}
			if since.IsZero() {
				since = p.at
			}
			return p.at.Sub(since) >= d
		}
	}

	var deleted []string
	switch c.policy {
	case "reject-new":
		p := run(3*time.Minute, fullFor(3*time.Second))
		if !refusing(p) || p.rejected == 0 {
			t.Fatalf("the store never went full: %+v", p)
		}
		t.Logf("full: du %s, free %s", storage.FormatSize(p.du), storage.FormatSize(p.free))
		// Outside files removed: samples are accepted again within 10 s.
		if err := os.Remove(outside); err != nil {
			t.Fatal(err)
		}
		removed, atRemoval := time.Now(), p
		p = run(10*time.Second, func(p poll) bool { return !refusing(p) && !p.full && p.written > atRemoval.written })
		if refusing(p) || p.full {
			t.Fatalf("still refusing samples %s after %s of outside files were removed: %+v", time.Since(removed), storage.FormatSize(c.outside), p)
		}
		t.Logf("accepting again %s after the outside file was removed", time.Since(removed).Round(time.Millisecond))
		p = run(3*time.Minute, fullFor(3*time.Second))
		if !refusing(p) {
			t.Fatalf("the store did not go full again: %+v", p)
		}
		// DELETE the two oldest closed episodes: du shrinks and samples are
		// accepted again within 10 s.
		eps := listEpisodes(t, base)
		slices.SortFunc(eps, func(a, b episode.Episode) int { return strings.Compare(a.ID, b.ID) }) // oldest first
		for _, e := range eps {
			if len(deleted) < 2 && e.State == episode.Closed {
				req, _ := http.NewRequest(http.MethodDelete, base+"/v1/episodes/"+e.ID, nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					t.Fatalf("DELETE %s: %s", e.ID, resp.Status)
				}
				deleted = append(deleted, e.ID)
			}
		}
		if len(deleted) < 2 {
			t.Fatalf("fewer than 2 closed episodes to delete: %+v", eps)
		}
		before, at := p, time.Now()
		minDU := before.du
		p = run(10*time.Second, func(p poll) bool {
			minDU = min(minDU, p.du)
			return !refusing(p) && !p.full && p.written > before.written
		})
		if refusing(p) || p.full {
			t.Fatalf("still refusing samples %s after deleting %v: %+v", time.Since(at), deleted, p)
		}
		if minDU > before.du-16<<20 {
			t.Errorf("deleting 2 episodes did not free disk space: du %s -> at least %s", storage.FormatSize(before.du), storage.FormatSize(minDU))
		}
		t.Logf("accepting again %s after DELETE; du %s -> %s", time.Since(at).Round(time.Millisecond), storage.FormatSize(before.du), storage.FormatSize(minDU))
		run(5*time.Second, nil)
	default:
		// Record until full, then well beyond: eviction must keep up.
		p := run(3*time.Minute, func(p poll) bool {
			return p.free < int64(c.minFree)+40<<20 || (c.quota > 0 && p.du > int64(c.quota)-30<<20)
		})
		t.Logf("near full: du %s, free %s", storage.FormatSize(p.du), storage.FormatSize(p.free))
		run(30*time.Second, nil)
	}

	fctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if err := d.Finish(fctx); err != nil {
		t.Errorf("finish: %v", err)
	}
	cancel()
	if err := stopDaemon(); err != nil {
		t.Fatalf("daemon exit: %v", err)
	}

	// The limits held at every observation, measured by the test.
	overhead := storage.FixedOverhead(int64(c.quota))
	for _, p := range polls {
		if p.free < int64(c.minFree) {
			t.Errorf("%s: free space %s below min_free %s", p.at.Format(time.StampMilli), storage.FormatSize(p.free), storage.FormatSize(int64(c.minFree)))
		}
		if c.quota > 0 && p.du > int64(c.quota) {
			t.Errorf("%s: store du %s over the quota %s", p.at.Format(time.StampMilli), storage.FormatSize(p.du), storage.FormatSize(int64(c.quota)))
		}
	}
	// Never refusing for more than 10 s while clearly under the threshold:
	// the data plus the whole fixed overhead plus 8 MiB fit the quota, and
	// free space exceeds min_free by the overhead plus 8 MiB.
	var streak time.Time
	for i := 1; i < len(polls); i++ {
		p := polls[i]
		under := p.free > int64(c.minFree)+overhead+8<<20 &&
			(c.quota == 0 || p.data+overhead+8<<20 < int64(c.quota))
		if p.full && under {
			if streak.IsZero() {
				streak = polls[i-1].at
			}
			if p.at.Sub(streak) > 10*time.Second {
				t.Errorf("refused samples for %s while under its threshold (du %s, data %s, free %s)",
					p.at.Sub(streak).Round(time.Millisecond), storage.FormatSize(p.du), storage.FormatSize(p.data), storage.FormatSize(p.free))
				break
			}
		} else {
			streak = time.Time{}
		}
	}
	last := polls[len(polls)-1]
	t.Logf("%d observations; written %.0f samples, refused %.0f; final du %s (data %s), free %s",
		len(polls), last.written, last.rejected, storage.FormatSize(last.du), storage.FormatSize(last.data), storage.FormatSize(last.free))

	// Every episode kept exports, and @mcap/core validates it.
	store, err := storage.Open(storage.Options{Dir: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	eps, err := store.Episodes()
	if err != nil {
		t.Fatal(err)
	}
	kept, evicted := 0, 0
	for _, e := range eps {
		info, err := store.Evicted(e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if info.At != 0 {
			evicted++
			if c.policy == "reject-new" {
				t.Errorf("reject-new evicted episode %s (%s)", e.ID, info.Reason)
			}
			continue
		}
		kept++
		var buf bytes.Buffer
		st, err := export.Write(context.Background(), &buf, store, e.ID, export.Options{})
		if err != nil {
			t.Errorf("export %s (%s): %v", e.ID, e.State, err)
			continue
		}
		if st.Messages == 0 {
			t.Errorf("export %s: no messages", e.ID)
		}
		var rep struct {
			Indexed struct {
				Counts map[string]uint64 `json:"counts"`
			} `json:"indexed"`
		}
		if err := json.Unmarshal(mcapcheck.Run(t, buf.Bytes()), &rep); err != nil {
			t.Fatalf("mcapcheck report: %v", err)
		}
		var n uint64
		for _, v := range rep.Indexed.Counts {
			n += v
		}
		if n != st.Messages {
			t.Errorf("export %s: @mcap/core counts %d messages, the export wrote %d", e.ID, n, st.Messages)
		}
	}
	for _, id := range deleted {
		if _, err := store.Episode(id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("deleted episode %s: %v", id, err)
		}
	}
	if kept == 0 {
		t.Fatal("no episode kept")
	}
	if c.policy == "evict-oldest" && evicted == 0 {
		t.Error("evict-oldest filled the disk without evicting an episode")
	}
	t.Logf("%d episodes kept (exported and validated), %d evicted", kept, evicted)
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b.Bytes())
	}
	return b.Bytes()
}

// metric sums a Prometheus metric's series in a text exposition.
func metric(body []byte, name string) float64 {
	var sum float64
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func listEpisodes(t *testing.T, base string) []episode.Episode {
	t.Helper()
	var eps []episode.Episode
	b := get(t, base+"/v1/episodes")
	if err := json.Unmarshal(b, &eps); err != nil {
		var wrapped struct {
			Episodes []episode.Episode `json:"episodes"`
		}
		if err2 := json.Unmarshal(b, &wrapped); err2 != nil {
			t.Fatalf("episodes list: %v / %v", err, err2)
		}
		eps = wrapped.Episodes
	}
	return eps
}

// storeDU is the store directory's allocated bytes, and the part in data
// files (sstables, blob files, segments).
func storeDU(t *testing.T, dir string) (total, data int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); errors.Is(err, fs.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		total += st.Blocks * 512
		switch filepath.Ext(path) {
		case ".sst", ".blob", ".seg":
			data += st.Blocks * 512
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return total, data
}
