package storage

import (
	"errors"
	"fmt"
	"github.com/episoded/episoded/internal/atomicfile"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// Space accounting. The store's bytes on disk are its data (sstables, blob
// files, segment files) plus a fixed overhead that eviction cannot free:
//
//   - Pebble's WAL files. Pebble preallocates each WAL to 110% of the
//     memtable size and keeps up to MemTableStopWritesThreshold+1 obsolete
//     WALs for recycling, next to up to MemTableStopWritesThreshold+1 live
//     ones: at most (2*memTableStop+2) * 1.1 * MemTableSize.
//   - the MANIFEST (rolled over at maxManifestBytes; the previous one is
//     kept), OPTIONS, the marker and lock files (metaSlack).
//   - the ballast: a file of ballastSize that the store removes the moment
//     Pebble meets ENOSPC (vfs.OnDiskFull), so that Pebble's own fatal
//     writes (WAL, MANIFEST) succeed on their retry while the store refuses
//     samples. It is recreated once the space is back.
//
// The memtable is sized from the store's capacity (the quota, or the
// filesystem less min_free): capacity/128, a power of two between 2 MiB and
// 8 MiB, so that the overhead stays near 1/10 of a small store and at most
// ~74 MiB on a large one.
//
// The memtable is also memory: Pebble allocates it outside the Go heap
// (cgo), fills it over minutes at the daemon's usual rate, and keeps the
// last flushed one for reuse, so up to two memtables stay resident. At 32
// MiB that was up to 64 MiB of the daemon's RSS, more than everything
// else it holds at 8 cameras (BenchmarkDaemonRSS8Cameras); 8 MiB still
// holds a second of small records at 30k/s, and flushes, which write the
// same bytes either way, just come more often.
const (
	memTableStop     = 2 // Pebble's MemTableStopWritesThreshold
	minMemTable      = 2 << 20
	maxMemTable      = 8 << 20
	maxManifestBytes = 2 << 20
	metaSlack        = 1 << 20
	minBallast       = 4 << 20
	// minDataRoom is the least room for data a quota must leave beyond the
	// fixed overhead.
	minDataRoom = 32 << 20
	// minQuota is the smallest quota accepted at all.
	minQuota = 64 << 20
)

const ballastName = "BALLAST"

// memTableFor returns the memtable size for a store of the given capacity
// (0 or less: unknown, the largest).
func memTableFor(capacity int64) int64 {
	m := int64(maxMemTable)
	if capacity <= 0 {
		return m
	}
	for m > minMemTable && m*128 > capacity {
		m /= 2
	}
	return m
}

func walPrealloc(memTable int64) int64 { return memTable + memTable/10 }

// walBound is the most space Pebble's WAL files take, live and recycled.
func walBound(memTable int64) int64 { return (2*memTableStop + 2) * walPrealloc(memTable) }

func ballastSize(memTable int64) int64 { return max(2*memTable, minBallast) }

// overheadFor is the fixed overhead of a store with this memtable size.
func overheadFor(memTable int64) int64 {
	return walBound(memTable) + 2*maxManifestBytes + metaSlack + ballastSize(memTable)
}

// FixedOverhead is the most disk space a store with this quota (0: none)
// occupies beyond its data: Pebble's WAL files (preallocated and
// recycled), its MANIFEST, and the ballast kept for ENOSPC. It is an upper
// bound: on a filesystem smaller than the quota the store sizes its
// memtable, and so its overhead, down further.
func FixedOverhead(quota int64) int64 { return overheadFor(memTableFor(quota)) }

// CheckQuota reports whether quota (0: none) leaves room for data beyond
// the fixed overhead; the error names the figures. config check and the
// daemon use it.
func CheckQuota(quota int64) error {
	if quota <= 0 {
		return nil
	}
	ov := FixedOverhead(quota)
	need := max(int64(minQuota), ov+minDataRoom)
	if quota < need {
		return fmt.Errorf("%s is too small: the store's fixed overhead is %s (Pebble's WAL files and manifest, and the ENOSPC ballast), so the quota must be at least %s",
			FormatSize(quota), FormatSize(ov), FormatSize(need))
	}
	return nil
}

// FormatSize prints a byte count with a binary unit, e.g. "22.2MiB".
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 || f == float64(int64(f)) {
		return strconv.FormatInt(int64(f), 10) + units[i]
	}
	return strings.TrimSuffix(strconv.FormatFloat(f, 'f', 1, 64), ".0") + units[i]
}

// fsSize returns the total and available bytes of the filesystem at dir.
func fsSize(dir string) (total, avail int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Blocks) * int64(st.Bsize), int64(st.Bavail) * int64(st.Bsize), nil
}

// sizeForFilesystem checks that MinFree and Quota fit the filesystem the
// store lives on and picks the memtable size for the capacity left. Errors
// are start-up errors that name the figures.
func (s *Store) sizeForFilesystem() error {
	// The directory may not exist yet: measure its nearest ancestor, so
	// that a store that cannot fit is refused before it is initialised.
	dir := s.dir
	for {
		if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
			break
		}
		dir = filepath.Dir(dir)
	}
	total, _, err := fsSize(dir)
	if err != nil {
		return fmt.Errorf("open store %s: statfs: %w", s.dir, err)
	}
	s.fsTotal = total
	minFree := max(s.opts.MinFree, 0)
	if minFree >= total {
		return fmt.Errorf("open store %s: min_free %s is larger than the %s filesystem (set a smaller min_free; 0 is allowed)", s.dir, FormatSize(minFree), FormatSize(total))
	}
	capacity := total - minFree
	if s.opts.Quota > 0 {
		if s.opts.Quota > capacity {
			return fmt.Errorf("open store %s: quota %s plus min_free %s do not fit the %s filesystem", s.dir,
				FormatSize(s.opts.Quota), FormatSize(minFree), FormatSize(total))
		}
		capacity = s.opts.Quota
	}
	s.capacity = capacity
	if s.opts.MemTableSize <= 0 {
		s.opts.MemTableSize = memTableFor(capacity)
	}
	if ov := overheadFor(s.opts.MemTableSize); capacity < ov+minDataRoom/2 {
		return fmt.Errorf("open store %s: the %s filesystem leaves %s after min_free %s, less than the store's fixed overhead %s plus %s for data",
			s.dir, FormatSize(total), FormatSize(capacity), FormatSize(minFree), FormatSize(ov), FormatSize(minDataRoom/2))
	}
	return nil
}

// ballastPath is the ballast file (store root, outside Pebble's directory).
func (s *Store) ballastPath() string { return filepath.Join(s.dir, ballastName) }

// ensureBallast creates the ballast with allocated blocks if it is missing.
// It reports whether the ballast is in place.
func (s *Store) ensureBallast() bool {
	size := ballastSize(s.opts.MemTableSize)
	path := s.ballastPath()
	if st, err := os.Stat(path); err == nil && st.Size() == size {
		return true
	}
	err := atomicfile.Write(path, 0o640, func(f *os.File) error {
		err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
		if errors.Is(err, syscall.EOPNOTSUPP) {
			err = writeZeros(f, size)
		}
		return err
	})
	if err != nil {
		s.log.Warn("create ballast: no reserve for ENOSPC until space returns", "size", size, "err", err)
		return false
	}
	return true
}

func writeZeros(f *os.File, n int64) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// onDiskFull runs (via vfs.OnDiskFull) when one of Pebble's writes meets
// ENOSPC: it frees the ballast so that the write's retry succeeds, and
// makes the store refuse samples until the space is back. It must be quick:
// Pebble's writes wait for it.
func (s *Store) onDiskFull() {
	s.enospc.report()
	if err := os.Remove(s.ballastPath()); err != nil && !os.IsNotExist(err) {
		s.log.Error("disk full: remove ballast", "err", err)
	}
	s.log.Error("disk full (ENOSPC): released the ballast for Pebble, refusing samples until space returns")
	s.kick(s.kickWatch)
}

// diskFull is the store's ENOSPC state: 0 while samples are taken,
// otherwise the number of the latest ENOSPC report. Every report takes a
// new number, so that the watcher, which restores the ballast outside any
// lock, clears only the report it saw before restoring it: a report that
// came meanwhile (onDiskFull releasing the ballast again) is never lost.
type diskFull struct{ state, seq atomic.Uint64 }

// report records an ENOSPC; it returns whether the store was taking
// samples until now (the first report of an episode of ENOSPC).
func (d *diskFull) report() bool { return d.state.Swap(d.seq.Add(1)) == 0 }

// refusing reports whether an ENOSPC is outstanding.
func (d *diskFull) refusing() bool { return d.state.Load() != 0 }

// latest returns the outstanding report (0: none).
func (d *diskFull) latest() uint64 { return d.state.Load() }

// clear ends the ENOSPC episode if seen is still the latest report.
func (d *diskFull) clear(seen uint64) bool { return seen != 0 && d.state.CompareAndSwap(seen, 0) }

// isENOSPC reports whether err is the filesystem saying it is full.
func isENOSPC(err error) bool { return errors.Is(err, syscall.ENOSPC) }
