// Package bucket reads and writes the central store from its side: list,
// get, put and delete objects of an S3-compatible bucket or of a directory
// laid out the same way. `episoded verify` and `episoded catalog compact`
// use it; the gateway's uploader has its own resumable, throttled targets
// (sync/upload).
//
// A location is "s3://bucket/prefix" or a directory path (optionally
// "dir:" or "file://" in front). Dir writes go through a temp file, fsync
// and rename, so a reader sees a whole object or none.
package bucket

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/episoded/episoded/internal/atomicfile"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/episoded/episoded/internal/redact"
)

// ErrNotExist is returned for a missing object.
var ErrNotExist = errors.New("bucket: object does not exist")

// Object is a listed object.
type Object struct {
	Key  string
	Size int64
}

// Bucket is a flat key space of objects.
type Bucket interface {
	// List returns the objects whose keys start with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]Object, error)
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	Put(ctx context.Context, key string, data []byte) error
	Delete(ctx context.Context, key string) error
	String() string
}

// S3Options reach an S3-compatible server.
type S3Options struct {
	// Endpoint is host:port, or a URL with http:// or https://.
	Endpoint, Region string
	// AccessKey and SecretKey; empty means AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY.
	AccessKey, SecretKey string
	PathStyle            bool
}

// Open parses a location ("s3://bucket/prefix" or a directory) and returns
// the bucket and the key prefix inside it ("" or ending without a slash).
func Open(loc string, o S3Options) (Bucket, string, error) {
	if rest, ok := strings.CutPrefix(loc, "s3://"); ok {
		name, prefix, _ := strings.Cut(rest, "/")
		if name == "" {
			return nil, "", fmt.Errorf("location %s: no bucket name", loc)
		}
		b, err := NewS3(name, o)
		return b, strings.Trim(prefix, "/"), err
	}
	dir := strings.TrimPrefix(strings.TrimPrefix(loc, "dir:"), "file://")
	if dir == "" {
		return nil, "", errors.New("location: empty path")
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, "", fmt.Errorf("location %s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, "", fmt.Errorf("location %s: not a directory", dir)
	}
	return &Dir{Root: dir}, "", nil
}

// Dir is a directory holding objects as files.
type Dir struct{ Root string }

func (d *Dir) String() string { return "dir " + d.Root }

func (d *Dir) path(key string) string { return filepath.Join(d.Root, filepath.FromSlash(key)) }

// List implements Bucket. Temp files (dot files) are skipped.
func (d *Dir) List(ctx context.Context, prefix string) ([]Object, error) {
	var out []Object
	start := d.Root
	// Walk only below the deepest directory of the prefix.
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = d.path(prefix[:i])
	}
	err := filepath.WalkDir(start, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(de.Name(), ".") && p != start {
			if de.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if de.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(d.Root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := de.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		out = append(out, Object{Key: key, Size: info.Size()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s in %s: %w", prefix, d.Root, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Open implements Bucket.
func (d *Dir) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	f, err := os.Open(d.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotExist
	}
	return f, err
}

// Put implements Bucket through WriteFileAtomic.
func (d *Dir) Put(ctx context.Context, key string, data []byte) error {
	if _, _, err := WriteFileAtomic(d.path(key), bytes.NewReader(data)); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// WriteFileAtomic writes the file at path from r through a temp file in the
// same directory (created if missing): write, fsync, rename, fsync the
// directory. It returns the hex sha256 and the length of what was written.
// On error the file at path is unchanged and no temp file is left. It is
// the one atomic file write behind Dir and sync/upload's directory target.
func WriteFileAtomic(path string, r io.Reader) (string, int64, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", 0, fmt.Errorf("create directory: %w", err)
	}
	h := sha256.New()
	var n int64
	err := atomicfile.Write(path, 0o644, func(f *os.File) error {
		var err error
		n, err = io.Copy(io.MultiWriter(f, h), r)
		return err
	})
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Delete implements Bucket; a missing object is not an error.
func (d *Dir) Delete(ctx context.Context, key string) error {
	if err := os.Remove(d.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// S3 is a bucket on an S3-compatible server.
type S3 struct {
	c      *minio.Client
	bucket string
	desc   string
}

// NewS3 returns the bucket name on the server o names.
func NewS3(name string, o S3Options) (*S3, error) {
	endpoint, secure := o.Endpoint, true
	if endpoint == "" {
		endpoint = os.Getenv("AWS_ENDPOINT_URL")
	}
	if endpoint == "" {
		return nil, errors.New("s3: no endpoint (--endpoint or AWS_ENDPOINT_URL)")
	}
	if rest, ok := strings.CutPrefix(endpoint, "http://"); ok {
		endpoint, secure = rest, false
	} else {
		endpoint = strings.TrimPrefix(endpoint, "https://")
	}
	endpoint = strings.TrimSuffix(endpoint, "/")
	access, secret := o.AccessKey, o.SecretKey
	if access == "" && secret == "" {
		access, secret = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
	}
	lookup := minio.BucketLookupAuto
	if o.PathStyle {
		lookup = minio.BucketLookupPath
	}
	c, err := minio.New(endpoint, &minio.Options{Creds: credentials.NewStaticV4(access, secret, ""), Secure: secure, Region: o.Region, BucketLookup: lookup})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", redact.URL(o.Endpoint), err)
	}
	scheme := "https"
	if !secure {
		scheme = "http"
	}
	return &S3{c: c, bucket: name, desc: redact.URL(fmt.Sprintf("s3 %s://%s/%s", scheme, endpoint, name))}, nil
}

func (s *S3) String() string { return s.desc }

// List implements Bucket.
func (s *S3) List(ctx context.Context, prefix string) ([]Object, error) {
	var out []Object
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, o.Err)
		}
		out = append(out, Object{Key: o.Key, Size: o.Size})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Open implements Bucket.
func (s *S3) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	o, err := s.c.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	// GetObject is lazy: Stat makes the request and tells a missing key.
	if _, err := o.Stat(); err != nil {
		o.Close()
		if minio.ToErrorResponse(err).StatusCode == http.StatusNotFound {
			return nil, ErrNotExist
		}
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return o, nil
}

// Put implements Bucket.
func (s *S3) Put(ctx context.Context, key string, data []byte) error {
	_, err := s.c.PutObject(ctx, s.bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{SendContentMd5: true})
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// Delete implements Bucket.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := s.c.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// ReadAll reads a whole object.
func ReadAll(ctx context.Context, b Bucket, key string) ([]byte, error) {
	r, err := b.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// Join joins key parts with slashes, leaving out empty ones.
func Join(parts ...string) string {
	var nz []string
	for _, p := range parts {
		if p = strings.Trim(p, "/"); p != "" {
			nz = append(nz, p)
		}
	}
	return path.Join(nz...)
}
