package dataset

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/api"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/sync/upload"
)

// ErrTampered is wrapped by the error for an object whose sha256 or size
// does not match its manifest.
var ErrTampered = errors.New("dataset: object does not match its manifest")

// Ref is one source episode, listed but not yet fetched.
type Ref struct {
	ID      string
	Start   int64
	Task    string
	Quality string // verdict when the source states one
	// Where names the object or URL, for messages.
	Where string
	// SHA256 and Size, when known (uploaded episodes), are checked before use.
	SHA256 string
	Size   int64
	open   func(ctx context.Context) (io.ReadCloser, error)
}

// Source lists the episodes a build may take.
type Source interface {
	List(ctx context.Context) ([]Ref, error)
}

// fetch copies the episode's MCAP to a temporary file in dir, checking
// its size and sha256 against the manifest before anyone reads it.
func (r Ref) fetch(ctx context.Context, dir string) (string, error) {
	rc, err := r.open(ctx)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", r.Where, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(dir, "episode-*.mcap")
	if err != nil {
		return "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), rc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("fetch %s: %w", r.Where, err)
	}
	if r.SHA256 != "" {
		got := hex.EncodeToString(h.Sum(nil))
		if !strings.EqualFold(got, r.SHA256) || (r.Size > 0 && n != r.Size) {
			os.Remove(f.Name())
			return "", fmt.Errorf("%w: %s has sha256 %s and %d bytes, manifest says %s and %d bytes",
				ErrTampered, r.Where, got, n, r.SHA256, r.Size)
		}
	}
	return f.Name(), nil
}

// refFromManifest makes a Ref from an upload manifest; get opens an
// object by its key (relative to the manifest's directory for dir
// sources, the bucket for S3).
func refFromManifest(m upload.Manifest, verdict, where string, get func(ctx context.Context, obj upload.ManifestObject) (io.ReadCloser, error)) (Ref, error) {
	if m.Format != upload.ManifestFormat {
		return Ref{}, fmt.Errorf("%s: manifest format %q is not %s", where, m.Format, upload.ManifestFormat)
	}
	for _, o := range m.Objects {
		if o.Name != upload.ObjectMCAP {
			continue
		}
		if o.SHA256 == "" {
			return Ref{}, fmt.Errorf("%s: manifest gives no sha256 for %s", where, o.Name)
		}
		obj := o
		return Ref{ID: m.Episode, Start: m.Start, Task: m.Task, Where: o.Key, SHA256: o.SHA256, Size: o.Size,
			Quality: verdict,
			open:    func(ctx context.Context) (io.ReadCloser, error) { return get(ctx, obj) }}, nil
	}
	return Ref{}, fmt.Errorf("%s: manifest lists no %s", where, upload.ObjectMCAP)
}

// verdictOf reads the quality verdict's status from a manifest.json or an
// episode record ({"verdict": {"status": "ok"}}); "" when it has none.
func verdictOf(b []byte) string {
	var v struct {
		Verdict *struct {
			Status string `json:"status"`
		} `json:"verdict"`
	}
	if json.Unmarshal(b, &v) != nil || v.Verdict == nil {
		return ""
	}
	return v.Verdict.Status
}

// DirSource reads uploaded episodes below a directory (a dir target's
// root or any part of it): every manifest.json found, with the
// episode.mcap beside it.
type DirSource struct{ Root string }

// List implements Source.
func (s DirSource) List(ctx context.Context) ([]Ref, error) {
	var refs []Ref
	err := filepath.WalkDir(s.Root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || d.Name() != upload.ObjectManifest {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var m upload.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		dir := filepath.Dir(p)
		ref, err := refFromManifest(m, verdictOf(b), p, func(_ context.Context, o upload.ManifestObject) (io.ReadCloser, error) {
			return os.Open(filepath.Join(dir, filepath.FromSlash(path.Base(o.Key))))
		})
		if err != nil {
			return err
		}
		ref.Where = filepath.Join(dir, upload.ObjectMCAP)
		refs = append(refs, ref)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.Root, err)
	}
	return refs, nil
}

// S3Source reads uploaded episodes from s3://bucket/prefix. Credentials
// come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
type S3Source struct {
	Endpoint string // http(s)://host:port
	Bucket   string
	Prefix   string
	Region   string
}

// ParseS3URL splits s3://bucket/prefix.
func ParseS3URL(u string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(u, "s3://")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("%q is not s3://bucket/prefix", u)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	return bucket, strings.Trim(prefix, "/"), nil
}

func (s S3Source) client() (*minio.Client, error) {
	pu, err := url.Parse(s.Endpoint)
	if err != nil || pu.Host == "" || (pu.Scheme != "http" && pu.Scheme != "https") {
		return nil, fmt.Errorf("s3 endpoint %s: want http(s)://host:port", redact.URL(s.Endpoint))
	}
	return minio.New(pu.Host, &minio.Options{
		Creds:  credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Secure: pu.Scheme == "https", Region: s.Region, BucketLookup: minio.BucketLookupPath,
	})
}

// List implements Source.
func (s S3Source) List(ctx context.Context) ([]Ref, error) {
	cl, err := s.client()
	if err != nil {
		return nil, err
	}
	prefix := s.Prefix
	if prefix != "" {
		prefix += "/"
	}
	var refs []Ref
	for obj := range cl.ListObjects(ctx, s.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return nil, fmt.Errorf("list s3://%s/%s: %w", s.Bucket, prefix, obj.Err)
		}
		if path.Base(obj.Key) != upload.ObjectManifest {
			continue
		}
		o, err := cl.GetObject(ctx, s.Bucket, obj.Key, minio.GetObjectOptions{})
		if err != nil {
			return nil, fmt.Errorf("get s3://%s/%s: %w", s.Bucket, obj.Key, err)
		}
		b, err := io.ReadAll(io.LimitReader(o, 64<<20))
		o.Close()
		var m upload.Manifest
		if err == nil {
			err = json.Unmarshal(b, &m)
		}
		if err != nil {
			return nil, fmt.Errorf("s3://%s/%s: %w", s.Bucket, obj.Key, err)
		}
		ref, err := refFromManifest(m, verdictOf(b), "s3://"+s.Bucket+"/"+obj.Key, func(ctx context.Context, mo upload.ManifestObject) (io.ReadCloser, error) {
			return cl.GetObject(ctx, s.Bucket, mo.Key, minio.GetObjectOptions{})
		})
		if err != nil {
			return nil, err
		}
		ref.Where = "s3://" + s.Bucket + "/" + ref.Where
		refs = append(refs, ref)
	}
	return refs, nil
}

// APISource reads a running daemon's finished episodes through its HTTP
// API (GET /v1/episodes with the filters, then each one's MCAP export).
// There is no manifest to check against: the export is made on request.
type APISource struct {
	Base, Token string
	HTTP        *http.Client
	// IDs, if set, are the only episodes taken.
	IDs []string
	// Filters, passed to the API (cell, label, since, until) or applied
	// here (task).
	Cell, Task, Since, Until string
	Labels                   []string
}

func (s APISource) get(ctx context.Context, p string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(s.Base, "/")+p, nil)
	if err != nil {
		return nil, err
	}
	if s.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.Token)
	}
	cl := s.HTTP
	if cl == nil {
		cl = http.DefaultClient
	}
	resp, err := cl.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s: %s", p, resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// List implements Source.
func (s APISource) List(ctx context.Context) ([]Ref, error) {
	var raws []json.RawMessage
	if len(s.IDs) > 0 {
		for _, id := range s.IDs {
			resp, err := s.get(ctx, "/v1/episodes/"+url.PathEscape(id))
			if err != nil {
				return nil, err
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return nil, fmt.Errorf("episode %s: %w", id, err)
			}
			raws = append(raws, b)
		}
	} else {
		q := url.Values{}
		for k, v := range map[string]string{"cell": s.Cell, "since": s.Since, "until": s.Until} {
			if v != "" {
				q.Set(k, v)
			}
		}
		for _, l := range s.Labels {
			q.Add("label", l)
		}
		// The list is paged: follow the cursor to the last page.
		q.Set("limit", strconv.Itoa(api.MaxPageLimit))
		for {
			resp, err := s.get(ctx, "/v1/episodes?"+q.Encode())
			if err != nil {
				return nil, err
			}
			var page []json.RawMessage
			err = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			if err != nil {
				return nil, fmt.Errorf("list episodes: %w", err)
			}
			raws = append(raws, page...)
			next := resp.Header.Get(api.NextCursorHeader)
			if next == "" || len(page) == 0 {
				break
			}
			q.Set("cursor", next)
		}
	}
	var refs []Ref
	for _, raw := range raws {
		var e episode.Episode
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("list episodes: %w", err)
		}
		if !e.State.Finished() || e.Stop == 0 {
			continue
		}
		if s.Task != "" && e.Task != s.Task {
			continue
		}
		id := e.ID
		refs = append(refs, Ref{ID: id, Start: e.Start, Task: e.Task, Where: s.Base + "/v1/episodes/" + id + "/export",
			Quality: verdictOf(raw),
			open: func(ctx context.Context) (io.ReadCloser, error) {
				resp, err := s.get(ctx, "/v1/episodes/"+url.PathEscape(id)+"/export")
				if err != nil {
					return nil, err
				}
				return resp.Body, nil
			}})
	}
	return refs, nil
}

// sortRefs orders episodes by start time, then id, so that a dataset's
// episode order does not depend on how a source lists them.
func sortRefs(refs []Ref) {
	sort.SliceStable(refs, func(i, j int) bool {
		if refs[i].Start != refs[j].Start {
			return refs[i].Start < refs[j].Start
		}
		return refs[i].ID < refs[j].ID
	})
}
