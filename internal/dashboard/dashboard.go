// Package dashboard is episoded's web UI: a few static files (HTML, CSS and
// plain JavaScript modules) embedded in the binary and served at /. It has
// no server-side logic of its own: the page polls the same JSON API as every
// other client (GET /v1/status, /v1/episodes, /v1/uploads), starts and stops
// episodes with POST /v1/cells/{cell}/episodes and /v1/episodes/{id}/stop,
// and previews cameras over WHEP (POST /whep/{stream}).
//
// Design notes:
//   - No CDN and no external URL at all: every byte the page loads comes
//     from this package, and the Content-Security-Policy header says so
//     ('self' only), so a gateway without internet shows the full page.
//   - Rates and bitrates are computed in the browser from successive counter
//     samples of /v1/status; the daemon keeps no per-viewer state.
//   - Auth: the page itself loads without a token, but with a token
//     configured every data call needs one (internal/api). The token is
//     typed into a field, kept in the tab's sessionStorage only, and sent as
//     "Authorization: Bearer" on every request; a 401 shows a prompt asking
//     for it, a 403 says the token is read-only. Exports are fetched with
//     the token and saved from a blob, since a plain link cannot send it.
//   - The handler serves only the embedded files: "/" is index.html, any
//     other unknown path is 404, so mounting it as "GET /" hides nothing of
//     the API registered on more specific patterns.
//
// Mount it on the API server with
//
//	srv.Handle("GET /", dashboard.Handler())
package dashboard

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

//go:embed static
var static embed.FS

// csp allows nothing but this origin: scripts, styles, images and fetches
// from 'self'; media from WebRTC streams (srcObject) needs no source. No
// inline script or style, no framing.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; " +
	"form-action 'self'; frame-ancestors 'none'"

// Files returns the embedded static files, rooted at the directory the
// dashboard is served from (index.html, app.js, ...).
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		// "static" is a constant directory embedded above.
		panic("dashboard: " + err.Error())
	}
	return sub
}

// Handler serves the dashboard: GET or HEAD of "/" answers index.html, of
// "/name" the embedded file name; anything else is 404 (405 for other
// methods). Responses carry a strict Content-Security-Policy,
// "Cache-Control: no-cache" and a content-hash ETag, so a browser
// revalidates cheaply and an upgraded daemon serves its new page at once.
func Handler() http.Handler {
	files := Files()
	etags := map[string]string{}
	_ = fs.WalkDir(files, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(files, name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		etags[name] = `"` + hex.EncodeToString(sum[:8]) + `"`
		return nil
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
		if name == "" {
			name = "index.html"
		}
		etag, ok := etags[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", etag)
		// ServeFileFS sets the Content-Type from the extension, answers
		// If-None-Match with 304, and redirects "/index.html" to "/".
		http.ServeFileFS(w, r, files, name)
	})
}
