package dataset

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/api"
	"github.com/episoded/episoded/sync/bucket"
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
func refFromManifest(m upload.Manifest, where string, get func(ctx context.Context, obj upload.ManifestObject) (io.ReadCloser, error)) (Ref, error) {
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
			Quality: verdictStatus(m.Verdict),
			open:    func(ctx context.Context) (io.ReadCloser, error) { return get(ctx, obj) }}, nil
	}
	return Ref{}, fmt.Errorf("%s: manifest lists no %s", where, upload.ObjectMCAP)
}

// BucketSource reads uploaded episodes from the central store (an S3
// bucket or a directory laid out the same way; sync/bucket): every
// manifest.json under Prefix, with the episode.mcap beside it (looked up
// next to the manifest, as `episoded verify` does, so that an episode
// directory copied elsewhere reads as well).
type BucketSource struct {
	Bucket bucket.Bucket
	Prefix string
	// Name goes in front of object keys in messages: "s3://bucket/" or
	// "DIR/".
	Name string
}

// OpenLocation returns the source for "s3://bucket/prefix" or a directory.
func OpenLocation(loc string, o bucket.S3Options) (BucketSource, error) {
	b, prefix, err := bucket.Open(loc, o)
	if err != nil {
		return BucketSource{}, err
	}
	s := BucketSource{Bucket: b, Prefix: prefix}
	if d, ok := b.(*bucket.Dir); ok {
		s.Name = strings.TrimRight(d.Root, "/") + "/"
	} else {
		name, _, _ := strings.Cut(strings.TrimPrefix(loc, "s3://"), "/")
		s.Name = "s3://" + name + "/"
	}
	return s, nil
}

// DirSource is the source for the uploaded episodes below a directory.
func DirSource(root string) BucketSource {
	return BucketSource{Bucket: &bucket.Dir{Root: root}, Name: strings.TrimRight(root, "/") + "/"}
}

// List implements Source.
func (s BucketSource) List(ctx context.Context) ([]Ref, error) {
	prefix := s.Prefix
	if prefix != "" {
		prefix += "/"
	}
	objs, err := s.Bucket.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("list %s%s: %w", s.Name, prefix, err)
	}
	var refs []Ref
	for _, o := range objs {
		if path.Base(o.Key) != upload.ObjectManifest {
			continue
		}
		b, err := bucket.ReadAll(ctx, s.Bucket, o.Key)
		if err != nil {
			return nil, fmt.Errorf("read %s%s: %w", s.Name, o.Key, err)
		}
		var m upload.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("%s%s: %w", s.Name, o.Key, err)
		}
		dir := path.Dir(o.Key)
		ref, err := refFromManifest(m, s.Name+o.Key, func(ctx context.Context, mo upload.ManifestObject) (io.ReadCloser, error) {
			return s.Bucket.Open(ctx, path.Join(dir, path.Base(mo.Key)))
		})
		if err != nil {
			return nil, err
		}
		ref.Where = s.Name + path.Join(dir, upload.ObjectMCAP)
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
			Quality: e.QualityStatus(),
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

func verdictStatus(v *episode.Verdict) string {
	if v == nil {
		return ""
	}
	return v.Status
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
