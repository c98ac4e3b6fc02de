package upload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/bucket"
)

// TerminalError is an error that retrying cannot fix (bad credentials, a
// missing bucket, a refused request). The episode is quarantined with it.
type TerminalError struct {
	Op     string
	Code   string
	Status int
	Err    error
	// Full is set for a bucket-full or quota error: the multipart upload
	// in progress is aborted as the episode is quarantined.
	Full bool
}

func (e *TerminalError) Error() string {
	s := e.Op + ": "
	if e.Code != "" {
		s += e.Code + ": "
	}
	if e.Status != 0 {
		s += fmt.Sprintf("HTTP %d: ", e.Status)
	}
	return s + e.Err.Error()
}

func (e *TerminalError) Unwrap() error { return e.Err }

// ServerError is an error response the server gave that retrying may fix
// (a 5xx, a throttle, an unrecognised code). After Options.MaxAttempts
// attempts the episode is quarantined with it.
type ServerError struct {
	Op     string
	Code   string
	Status int
	Err    error
}

func (e *ServerError) Error() string {
	s := e.Op + ": "
	if e.Code != "" {
		s += e.Code + ": "
	}
	if e.Status != 0 {
		s += fmt.Sprintf("HTTP %d: ", e.Status)
	}
	return s + e.Err.Error()
}

func (e *ServerError) Unwrap() error { return e.Err }

// errPaused stops an upload between parts when its window closed; the
// upload state is kept and the upload resumes in the next window.
var errPaused = errors.New("upload: paused outside the upload window")

// errNotExist is returned by target.stat and target.get for a missing
// object.
var errNotExist = errors.New("upload: object does not exist")

// objInfo is what a target knows about a stored object.
type objInfo struct {
	Size int64
	ETag string
}

// target is where objects go. Keys are slash-separated paths relative to
// the target root.
type target interface {
	stat(ctx context.Context, key string) (objInfo, error)
	get(ctx context.Context, key string, max int64) ([]byte, error)
	// putBytes writes a small object in one request, verified.
	putBytes(ctx context.Context, key string, data []byte, contentType string) error
	// putFile uploads the staged file at path as obj.Key, resuming from
	// and recording progress in obj (save persists it). cont is called
	// before each part and stops the upload with its error. On success
	// the object is verified and obj.Done is set.
	putFile(ctx context.Context, path string, obj *storage.ObjectState, save func() error, cont func() error) error
	// abort drops the unfinished upload recorded in obj (the parts the
	// server holds), so that a quarantined episode leaves nothing behind.
	abort(ctx context.Context, obj *storage.ObjectState) error
	String() string
}

// dirTarget writes into a local or NFS directory with an atomic rename.
type dirTarget struct {
	root string
	u    *Uploader
}

func (d *dirTarget) String() string { return "dir " + d.root }

// abort has nothing to drop: a dir target writes a temporary file that is
// renamed or removed within one attempt.
func (d *dirTarget) abort(context.Context, *storage.ObjectState) error { return nil }

func (d *dirTarget) path(key string) string { return filepath.Join(d.root, filepath.FromSlash(key)) }

func (d *dirTarget) classify(op string, err error) error {
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		return &TerminalError{Op: op, Err: err}
	}
	return fmt.Errorf("%s: %w", op, err)
}

func (d *dirTarget) checkRoot() error {
	st, err := os.Stat(d.root)
	if err != nil {
		return &TerminalError{Op: "check target dir", Err: err}
	}
	if !st.IsDir() {
		return &TerminalError{Op: "check target dir", Err: fmt.Errorf("%s is not a directory", d.root)}
	}
	return nil
}

func (d *dirTarget) stat(ctx context.Context, key string) (objInfo, error) {
	if err := d.checkRoot(); err != nil {
		return objInfo{}, err
	}
	st, err := os.Stat(d.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return objInfo{}, errNotExist
	}
	if err != nil {
		return objInfo{}, d.classify("stat "+key, err)
	}
	return objInfo{Size: st.Size()}, nil
}

func (d *dirTarget) get(ctx context.Context, key string, max int64) ([]byte, error) {
	f, err := os.Open(d.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNotExist
	}
	if err != nil {
		return nil, d.classify("read "+key, err)
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}

// writeAtomic writes key from r atomically (bucket.WriteFileAtomic: temp
// file, fsync, rename, fsync the directory). It returns the sha256 of what
// was written.
func (d *dirTarget) writeAtomic(ctx context.Context, key string, r io.Reader) (string, int64, error) {
	sum, n, err := bucket.WriteFileAtomic(d.path(key), &ctxReader{ctx: ctx, r: r})
	if err != nil {
		return "", 0, d.classify("write "+key, err)
	}
	return sum, n, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func (d *dirTarget) putBytes(ctx context.Context, key string, data []byte, _ string) error {
	if err := d.checkRoot(); err != nil {
		return err
	}
	_, _, err := d.writeAtomic(ctx, key, &limitedReader{ctx: ctx, u: d.u, r: bytes.NewReader(data)})
	return err
}

func (d *dirTarget) putFile(ctx context.Context, path string, obj *storage.ObjectState, save func() error, cont func() error) error {
	if err := d.checkRoot(); err != nil {
		return err
	}
	if err := cont(); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open staged %s: %w", path, err)
	}
	defer f.Close()
	if _, _, err := d.writeAtomic(ctx, obj.Key, &limitedReader{ctx: ctx, u: d.u, r: f}); err != nil {
		return err
	}
	// Verify: read back what landed and compare size and sha256.
	g, err := os.Open(d.path(obj.Key))
	if err != nil {
		return d.classify("verify "+obj.Key, err)
	}
	defer g.Close()
	h := sha256.New()
	n, err := io.Copy(h, g)
	if err != nil {
		return d.classify("verify "+obj.Key, err)
	}
	if n != obj.Size || hex.EncodeToString(h.Sum(nil)) != obj.SHA256 {
		return fmt.Errorf("verify %s: wrote %d bytes with sha256 %x, want %d bytes %s", obj.Key, n, h.Sum(nil), obj.Size, obj.SHA256)
	}
	obj.Done = true
	return save()
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// limitedReader passes reads through the uploader's bandwidth limiter and
// byte counter.
type limitedReader struct {
	ctx context.Context
	u   *Uploader
	r   io.Reader
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if max := l.u.readChunk(); len(p) > max {
		p = p[:max]
	}
	n, err := l.r.Read(p)
	if n > 0 {
		if werr := l.u.throttle(l.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}
