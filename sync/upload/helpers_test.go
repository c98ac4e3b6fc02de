package upload_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/episoded/episoded/sync/internal/synctest"
)

// proxy is a reverse proxy in front of versitygw that counts and observes
// requests: request body bytes, acknowledged parts and the order in which
// objects were committed. It is an observer on the real wire, not a fake.
type proxy struct {
	srv      *httptest.Server
	backend  *url.URL
	putBytes atomic.Int64 // body bytes of all PUT requests that reached the proxy
	mu       struct {
		sync.Mutex
		partsOK   map[string][]int // key -> part numbers acknowledged 200, in order
		partSends map[string]map[int]int
		commits   []string // keys, in the order their PUT/complete returned 200
		onPartOK  func(key string, part int)
	}
}

func newProxy(t *testing.T, backend string) *proxy {
	p := &proxy{}
	p.mu.partsOK = map[string][]int{}
	p.mu.partSends = map[string]map[int]int{}
	u, _ := url.Parse("http://" + backend)
	p.backend = u
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // keep the signed Host header
		},
		ModifyResponse: func(resp *http.Response) error {
			p.observe(resp)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.Body != nil {
			r.Body = &countBody{r: r.Body, n: &p.putBytes}
			if n, err := strconv.Atoi(r.URL.Query().Get("partNumber")); err == nil {
				key := keyOf(r.URL.Path)
				p.mu.Lock()
				if p.mu.partSends[key] == nil {
					p.mu.partSends[key] = map[int]int{}
				}
				p.mu.partSends[key][n]++
				p.mu.Unlock()
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func keyOf(path string) string {
	// path-style: /bucket/key
	parts := strings.SplitN(strings.TrimPrefix(path, "/"), "/", 2)
	if len(parts) < 2 {
		return ""
	}
	return parts[1]
}

func (p *proxy) observe(resp *http.Response) {
	r := resp.Request
	if resp.StatusCode != http.StatusOK {
		return
	}
	q := r.URL.Query()
	key := keyOf(r.URL.Path)
	p.mu.Lock()
	var hook func(string, int)
	var part int
	switch {
	case r.Method == http.MethodPut && q.Get("partNumber") != "":
		part, _ = strconv.Atoi(q.Get("partNumber"))
		p.mu.partsOK[key] = append(p.mu.partsOK[key], part)
		hook = p.mu.onPartOK
	case r.Method == http.MethodPut:
		p.mu.commits = append(p.mu.commits, key)
	case r.Method == http.MethodPost && q.Has("uploadId"):
		p.mu.commits = append(p.mu.commits, key)
	}
	p.mu.Unlock()
	if hook != nil {
		hook(key, part)
	}
}

func (p *proxy) setHook(f func(key string, part int)) {
	p.mu.Lock()
	p.mu.onPartOK = f
	p.mu.Unlock()
}

func (p *proxy) commits() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.mu.commits...)
}

func (p *proxy) partsOK(key string) []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.mu.partsOK[key]...)
}

func (p *proxy) partSends(key string) map[int]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[int]int{}
	for k, v := range p.mu.partSends[key] {
		out[k] = v
	}
	return out
}

func (p *proxy) endpoint() string { return "http://" + p.srv.Listener.Addr().String() }

type countBody struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (c *countBody) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}
func (c *countBody) Close() error { return c.r.Close() }

func s3Client(t testing.TB, s *synctest.S3) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.Access, s.Secret, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func makeBucket(t testing.TB, s *synctest.S3, bucket string) *minio.Client {
	t.Helper()
	c := s3Client(t, s)
	if err := c.MakeBucket(context.Background(), bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket: %v", err)
	}
	return c
}

func objectSHA(t testing.TB, c *minio.Client, bucket, key string) (string, int64) {
	t.Helper()
	o, err := c.GetObject(context.Background(), bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer o.Close()
	h := sha256.New()
	n, err := io.Copy(h, o)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}

func dirEntries(dir string) (int, error) {
	es, err := os.ReadDir(dir)
	return len(es), err
}
