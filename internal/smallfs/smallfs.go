// Package smallfs mounts small real filesystems for tests that must see a
// disk fill up: a loop-mounted ext4 image, or a size-limited tmpfs where
// loop devices are not available. It needs root. A machine that can mount
// neither fails the test; only -short skips it.
package smallfs

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Mount mounts a fresh filesystem of size (as truncate(1) and tmpfs
// understand it, e.g. "256M") and returns its mount point. It is unmounted
// when the test ends.
func Mount(t testing.TB, size string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("mounts a small filesystem and fills it; skipped under -short")
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "fs.img")
	var errs []string
	try := func(name string, args ...string) bool {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out)))
		}
		return err == nil
	}
	kind := "ext4 (loop)"
	ok := try("truncate", "-s", size, img) && try("mkfs.ext4", "-q", "-F", img) && try("mount", "-o", "loop", img, mnt)
	if !ok {
		kind = "tmpfs"
		ok = try("mount", "-t", "tmpfs", "-o", "size="+strings.ToLower(size), "tmpfs", mnt)
	}
	if !ok {
		t.Fatalf("cannot mount a %s filesystem (needs root, and loop devices or tmpfs):\n%s", size, strings.Join(errs, "\n"))
	}
	t.Cleanup(func() {
		for range 50 {
			if exec.Command("umount", mnt).Run() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	t.Logf("mounted a %s %s at %s", size, kind, mnt)
	return mnt
}
