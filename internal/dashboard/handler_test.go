package dashboard

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string, hdr map[string]string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHandlerServesIndexAndAssets(t *testing.T) {
	h := Handler()
	res := get(t, h, "GET", "/", nil)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d", res.StatusCode)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("GET /: Content-Type %q", ct)
	}
	csp := res.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'self'", "script-src 'self'", "connect-src 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
		t.Errorf("CSP allows inline code: %q", csp)
	}
	index := body(t, res)
	if !strings.Contains(index, `<script type="module" src="app.js">`) {
		t.Errorf("index.html does not load app.js as a module")
	}
	if etag := res.Header.Get("ETag"); etag == "" {
		t.Errorf("no ETag")
	} else if res := get(t, h, "GET", "/", map[string]string{"If-None-Match": etag}); res.StatusCode != http.StatusNotModified {
		t.Errorf("GET / with If-None-Match: %d, want 304", res.StatusCode)
	}

	// Every local reference of the page and its modules resolves, with the
	// type a browser insists on for module scripts and stylesheets.
	refs := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(index, -1) {
		refs[m[1]] = true
	}
	files := Files()
	_ = fs.WalkDir(files, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(name, ".js") {
			return err
		}
		b, _ := fs.ReadFile(files, name)
		for _, m := range regexp.MustCompile(`(?m)^\s*(?:import|export)\b[^'"]*from\s+'([^']+)'`).FindAllStringSubmatch(string(b), -1) {
			refs[strings.TrimPrefix(m[1], "./")] = true
		}
		return nil
	})
	if len(refs) < 5 {
		t.Fatalf("found only %d references: %v", len(refs), refs)
	}
	wantType := map[string]string{".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
	for ref := range refs {
		res := get(t, h, "GET", "/"+ref, nil)
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET /%s: %d", ref, res.StatusCode)
			continue
		}
		for ext, typ := range wantType {
			if strings.HasSuffix(ref, ext) && !strings.HasPrefix(res.Header.Get("Content-Type"), typ) {
				t.Errorf("GET /%s: Content-Type %q, want %s", ref, res.Header.Get("Content-Type"), typ)
			}
		}
	}
}

func TestHandlerRefusesWhatIsNotAFile(t *testing.T) {
	h := Handler()
	for _, p := range []string{"/nope.js", "/v1/status", "/static/app.js", "/../dashboard.go", "/whep/cell1/cam1"} {
		if res := get(t, h, "GET", p, nil); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, res.StatusCode)
		}
	}
	if res := get(t, h, "POST", "/", nil); res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %d, want 405", res.StatusCode)
	}
	if res := get(t, h, "HEAD", "/app.js", nil); res.StatusCode != http.StatusOK {
		t.Errorf("HEAD /app.js: %d", res.StatusCode)
	}
}

// TestNoExternalURLs: the page must work on a gateway without internet, so
// no file may load anything from another origin: no absolute URL, no
// protocol-relative URL, no CSS import or font from elsewhere.
func TestNoExternalURLs(t *testing.T) {
	allowed := map[string]bool{"http://www.w3.org/2000/svg": true} // an XML namespace, never fetched
	abs := regexp.MustCompile(`(?i)\b(?:https?|wss?|ftp)://[^\s"'<>)]*`)
	protoRel := regexp.MustCompile(`(?i)(?:src|href|action)\s*=\s*["']//|url\(\s*["']?//|from\s+["']//|import\(\s*["']//`)
	cssImport := regexp.MustCompile(`(?i)@import|@font-face`)
	n := 0
	err := fs.WalkDir(Files(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := fs.ReadFile(Files(), name)
		if err != nil {
			return err
		}
		s := string(b)
		for _, u := range abs.FindAllString(s, -1) {
			if !allowed[u] {
				t.Errorf("%s: external URL %q", name, u)
			}
		}
		if m := protoRel.FindString(s); m != "" {
			t.Errorf("%s: protocol-relative URL at %q", name, m)
		}
		if m := cssImport.FindString(s); m != "" {
			t.Errorf("%s: %s (imports and web fonts are not allowed)", name, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 6 {
		t.Fatalf("walked only %d files", n)
	}
}
