package upload

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/export"
)

type stageWriter struct {
	w   io.Writer
	err error
}

func (s *stageWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

// stage makes sure the export of e is on local disk at path with the size
// and sha256 recorded in obj, re-creating it if needed. If the content
// differs from what an earlier attempt recorded, that attempt's multipart
// upload is dropped.
func (u *Uploader) stage(ctx context.Context, e episode.Episode, obj *storage.ObjectState, path string, save func() error) error {
	if obj.SHA256 != "" {
		if fi, err := os.Stat(path); err == nil && fi.Size() == obj.Size {
			if sum, err := hashFile(path); err == nil && sum == obj.SHA256 {
				return nil
			}
		}
	}
	if err := os.MkdirAll(u.o.StageDir, 0o750); err != nil {
		return fmt.Errorf("create stage dir: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("stage export: %w", err)
	}
	defer os.Remove(tmp)
	h := sha256.New()
	sw := &stageWriter{w: f}
	// No buffer of its own: export.Write buffers its output (1 MiB,
	// kept between exports) and writes it in blocks of that size.
	w := io.MultiWriter(sw, h)
	var att []string
	if u.o.Attachments != nil {
		att = u.o.Attachments(e.Cell)
	}
	stats, err := export.Write(ctx, w, u.store, e.ID, export.Options{Attachments: att})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if ctx.Err() != nil || sw.err != nil {
			return fmt.Errorf("stage export: %w", err)
		}
		return &failedError{err: fmt.Errorf("export: %w", err)}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("stage export: %w", err)
	}
	if err := syncDir(u.o.StageDir); err != nil {
		return fmt.Errorf("stage export: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if obj.SHA256 != "" && (obj.SHA256 != sum || obj.Size != stats.Size) {
		u.log.Warn("export differs from the one being uploaded, starting the object over", "episode", e.ID)
		obj.UploadID, obj.Parts, obj.Done = "", nil, false
	}
	obj.SHA256, obj.Size = sum, stats.Size
	u.log.Info("episode staged", "episode", e.ID, "bytes", stats.Size, "messages", stats.Messages)
	return save()
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
