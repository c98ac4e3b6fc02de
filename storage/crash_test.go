package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/episoded/episoded/sample"
)

const crashDirEnv = "EPISODED_STORAGE_CRASH_DIR"

// crashStreams are the child's streams and payload sizes: two go to
// segment files, three stay inline in Pebble.
var crashStreams = []struct {
	name string
	size int
}{
	{"cell/cam0", 12_000}, {"cell/cam1", 5_000}, {"cell/tel0", 200}, {"cell/tel1", 300}, {"cell/tel2", 120},
	// Sizes on both sides of the segment threshold: inline and segment
	// samples interleave within one stream.
	{"cell/mixed", -1},
}

func crashSize(stream int, seq uint64) int {
	if n := crashStreams[stream].size; n >= 0 {
		return n
	}
	return 1000 + int(seq*7919%8000)
}

func crashT(stream int, seq uint64) int64 {
	return 1_700_000_000_000_000_000 + int64(seq)*1_000_000 + int64(stream)
}

// TestCrashChild is the child process of TestCrash: it appends samples to
// several streams, continuing each stream's seq after the last durable
// sample, and prints "DURABLE stream from to" once a batch is durable. It
// runs until it is killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("helper process for TestCrash; runs only when " + crashDirEnv + " is set")
	}
	s, err := Open(Options{Dir: dir, SyncInterval: 10 * time.Millisecond, MinFree: -1, SegmentSlice: 50 * time.Millisecond,
		// Sample times are fixed in 2023: keep the timeline.
		TimelineRetention: 100_000 * time.Hour,
		Logger:            testLogger(t)})
	if err != nil {
		fmt.Printf("OPENFAIL %v\n", err)
		os.Exit(3)
	}
	// Small batches: most commits span several Pebble batches, so kills
	// land between them.
	s.batchBytes = 16 << 10
	go s.Run(context.Background())
	next := make([]uint64, len(crashStreams))
	for i, st := range crashStreams {
		last, err := s.LastSample(st.name)
		switch {
		case err == nil:
			next[i] = last.Seq + 1
		case errors.Is(err, ErrNotFound):
			next[i] = 1
		default:
			fmt.Printf("OPENFAIL last sample: %v\n", err)
			os.Exit(3)
		}
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for {
		i := rng.IntN(len(crashStreams))
		st := crashStreams[i]
		n := 1 + rng.IntN(12)
		batch := make([]sample.Sample, n)
		for j := range batch {
			seq := next[i] + uint64(j)
			batch[j] = sample.Sample{Stream: st.name, Seq: seq, T: crashT(i, seq), RecvT: int64(seq), Payload: payloadFor(st.name, seq, crashSize(i, seq))}
		}
		from, to := next[i], next[i]+uint64(n)-1
		err := s.Append(batch, func(err error) {
			if err == nil {
				// One write(2) per line, straight to the pipe.
				os.Stdout.WriteString(fmt.Sprintf("DURABLE %s %d %d\n", st.name, from, to))
			}
		})
		if err != nil {
			time.Sleep(time.Millisecond) // a producer backs off after a refusal
			continue
		}
		next[i] = to + 1
		if rng.IntN(4) == 0 {
			time.Sleep(time.Millisecond) // pacing: vary where the kill lands
		}
	}
}

func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test re-executes the test binary 25 times; skipped in -short mode")
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	durable := make(map[string]uint64)
	logs := newCountHandler()
	const kills = 25
	for round := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Some kills land during Open and recovery, most while writing.
		early := round%5 == 0
		var delay time.Duration
		if early {
			delay = time.Duration(rng.IntN(80)) * time.Millisecond
		} else {
			delay = time.Duration(50+rng.IntN(400)) * time.Millisecond
		}
		var reported []string
		kill := time.After(delay)
		waitFirst := !early
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("round %d: child exited before it was killed: %v", round, reported)
				}
				reported = append(reported, l)
				if waitFirst && strings.HasPrefix(l, "DURABLE ") {
					waitFirst = false
					kill = time.After(delay)
				}
			case <-kill:
				if waitFirst {
					kill = time.After(10 * time.Millisecond)
					continue
				}
				break wait
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("round %d: child reported nothing for 60s", round)
			}
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for l := range lines {
			reported = append(reported, l)
		}
		cmd.Wait()
		var nDurable int
		for _, l := range reported {
			if strings.HasPrefix(l, "OPENFAIL") {
				t.Fatalf("round %d: child could not open the store: %s", round, l)
			}
			f := strings.Fields(l)
			if len(f) != 4 || f[0] != "DURABLE" {
				continue
			}
			to, _ := strconv.ParseUint(f[3], 10, 64)
			durable[f[1]] = max(durable[f[1]], to)
			nDurable++
		}
		checkCrashStore(t, dir, round, durable, slog.New(logs))
		t.Logf("round %d: killed after %v (early=%v), %d durable batches reported, last durable %v", round, delay, early, nDurable, durable)
	}
	// Which recovery paths the kills exercised (the child repairs first,
	// so these count what was left by the kill that ended each round).
	t.Logf("recovery on reopen: %d torn segment tails truncated, %d unreferenced segments removed",
		logs.count("truncating torn segment tail"), logs.count("removing segment not referenced by the index (crash before commit)"))
	if len(durable) < len(crashStreams) {
		t.Fatalf("only %d streams ever became durable", len(durable))
	}
}

// checkCrashStore reopens the store and checks that every sample reported
// durable is present and intact, and that each stream's seq is gapless.
func checkCrashStore(t *testing.T, dir string, round int, durable map[string]uint64, log *slog.Logger) {
	t.Helper()
	s, err := Open(Options{Dir: dir, MinFree: -1, Logger: log})
	if err != nil {
		t.Fatalf("round %d: reopen after kill: %v", round, err)
	}
	defer s.Close()
	for i, st := range crashStreams {
		want := uint64(1)
		for sm, err := range s.Range(st.name, -1<<63, 1<<63-1) {
			if err != nil {
				t.Fatalf("round %d: %s: %v", round, st.name, err)
			}
			if sm.Seq != want {
				t.Fatalf("round %d: %s: seq %d after %d: hole in the timeline", round, st.name, sm.Seq, want-1)
			}
			if sm.T != crashT(i, sm.Seq) || sm.RecvT != int64(sm.Seq) || string(sm.Payload) != string(payloadFor(st.name, sm.Seq, crashSize(i, sm.Seq))) {
				t.Fatalf("round %d: %s seq %d: content differs from what was written", round, st.name, sm.Seq)
			}
			want++
		}
		if got := want - 1; got < durable[st.name] {
			t.Fatalf("round %d: %s: store has seq 1..%d, but %d was reported durable", round, st.name, got, durable[st.name])
		}
	}
}
