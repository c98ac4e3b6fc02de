// Package atomicfile writes a file so that a crash leaves either the old
// file or the whole new one: write a temporary file beside it, fsync it,
// rename it over the target, then fsync the directory.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// Write creates path with perm through write, atomically and durably. The
// directory must exist. On error nothing is left behind and path is as it
// was.
func Write(path string, perm os.FileMode, write func(f *os.File) error) error {
	dir := filepath.Dir(path)
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	err = write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	df, err := os.Open(dir)
	if err == nil {
		err = df.Sync()
		df.Close()
	}
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}
