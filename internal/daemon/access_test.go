package daemon_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/episoded/episoded/internal/api"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/daemon/daemontest"
)

// The tokens of the access tests.
const (
	adminToken = "admin-token-4f1c9e"
	readToken  = "read-token-77ab20"
	wrongToken = "wrong-token-000000"
)

// codes are the expected statuses with no token, the read token, the admin
// token and a wrong token, on a daemon that has both tokens. With no token
// configured at all (loopback), every route answers codes.admin.
type codes struct{ none, read, admin, wrong int }

// accessRow is one route of the API: a concrete request for its pattern
// and what each caller gets. The admin code is what the handler answers
// once past the access filter (ids that do not exist give 404, which shows
// the request got through without changing anything).
type accessRow struct {
	method, path string
	ctype, body  string
	want         codes
}

// Shorthands for the usual rows.
var (
	open      = func(c int) codes { return codes{c, c, c, c} }
	readable  = func(c int) codes { return codes{401, c, c, 401} }
	adminOnly = func(c int) codes { return codes{401, 403, c, 401} }
)

// accessTable has ONE ROW PER REGISTERED ROUTE, keyed by the pattern given
// to api.Server.Handle. TestAccessTable fails for a route without a row
// (and for a row without a route): when you add a route, add its row here.
var accessTable = map[string]accessRow{
	"GET /healthz":                         {"GET", "/healthz", "", "", open(200)},
	"GET /readyz":                          {"GET", "/readyz", "", "", open(200)},
	"GET /metrics":                         {"GET", "/metrics", "", "", readable(200)},
	"GET /v1/status":                       {"GET", "/v1/status", "", "", readable(200)},
	"POST /v1/cells/{cell}/episodes":       {"POST", "/v1/cells/no-such-cell/episodes", "application/json", `{"task":"t"}`, adminOnly(404)},
	"POST /v1/episodes/{id}/stop":          {"POST", "/v1/episodes/no-such-episode/stop", "", "", adminOnly(404)},
	"GET /v1/episodes":                     {"GET", "/v1/episodes", "", "", readable(200)},
	"GET /v1/episodes/{id}":                {"GET", "/v1/episodes/no-such-episode", "", "", readable(404)},
	"DELETE /v1/episodes/{id}":             {"DELETE", "/v1/episodes/no-such-episode", "", "", adminOnly(404)},
	"GET /v1/episodes/{id}/export":         {"GET", "/v1/episodes/no-such-episode/export", "", "", readable(404)},
	"POST /v1/episodes/{id}/retry":         {"POST", "/v1/episodes/no-such-episode/retry", "", "", adminOnly(404)},
	"GET /v1/uploads":                      {"GET", "/v1/uploads", "", "", readable(200)},
	"POST /v1/sync/run":                    {"POST", "/v1/sync/run", "", "", adminOnly(202)},
	"GET /v1/episodes/{id}/samples":        {"GET", "/v1/episodes/no-such-episode/samples", "", "", readable(404)},
	"GET /v1/history":                      {"GET", "/v1/history", "", "", readable(200)},
	"POST /whip/{stream...}":               {"POST", "/whip/cell1/cam1", "application/sdp", "v=0\r\n", adminOnly(400)},
	"DELETE /whip/sessions/{id}":           {"DELETE", "/whip/sessions/no-such-session", "", "", adminOnly(404)},
	"POST /whep/episodes/{id}/{stream...}": {"POST", "/whep/episodes/no-such-episode/cell1/cam1", "application/sdp", "v=0\r\n", readable(404)},
	"POST /whep/{stream...}":               {"POST", "/whep/cell1/cam1", "application/sdp", "v=0\r\n", readable(404)},
	"DELETE /whep/sessions/{id}":           {"DELETE", "/whep/sessions/no-such-session", "", "", readable(404)},
	"GET /debug/pprof/":                    {"GET", "/debug/pprof/", "", "", adminOnly(200)},
	"GET /debug/pprof/profile":             {"GET", "/debug/pprof/profile?seconds=1", "", "", adminOnly(200)},
	"GET /debug/pprof/trace":               {"GET", "/debug/pprof/trace?seconds=0.01", "", "", adminOnly(200)},
	"GET /debug/pprof/symbol":              {"GET", "/debug/pprof/symbol", "", "", adminOnly(200)},
	"GET /":                                {"GET", "/", "", "", open(200)},
}

// accessConfig is a small real daemon: one WHIP camera (no network
// device to wait for) in one cell, a dir target.
func accessConfig(t *testing.T, apiYAML string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	y := fmt.Sprintf(`gateway: {id: gw1, site: s}
log: {level: debug}
api: %s
storage: {dir: %q, min_free: 1MiB}
devices:
  - {id: cam1, type: whip}
cells:
  - {id: cell1, devices: [cam1]}
sync:
  target: {type: dir, path: %q}
`, apiYAML, filepath.Join(dir, "store"), filepath.Join(dir, "central"))
	cfg, err := config.Parse("access test", []byte(y), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// call sends row's request with the given Authorization header (none if
// "") and extra headers, and returns the status.
func call(t *testing.T, base string, row accessRow, auth string, hdr map[string]string) int {
	t.Helper()
	var body io.Reader
	if row.body != "" {
		body = strings.NewReader(row.body)
	}
	req, err := http.NewRequest(row.method, base+row.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if row.ctype != "" {
		req.Header.Set("Content-Type", row.ctype)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", row.method, row.path, err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	checkJSONError(t, row.method+" "+row.path, res, b)
	return res.StatusCode
}

// checkJSONError fails the test if res is an error (4xx, 5xx) under /v1,
// /whip or /whep that is not the API's one error format: Content-Type
// application/json and a body {"error": "<non-empty message>"}.
func checkJSONError(t *testing.T, what string, res *http.Response, body []byte) {
	t.Helper()
	p := res.Request.URL.Path
	if res.StatusCode < 400 || !(strings.HasPrefix(p, "/v1/") || strings.HasPrefix(p, "/whip/") || strings.HasPrefix(p, "/whep/")) {
		return
	}
	var e map[string]any
	err := json.Unmarshal(body, &e)
	if ct := res.Header.Get("Content-Type"); ct != "application/json" || err != nil || len(e) != 1 || e["error"] == nil || e["error"] == "" {
		t.Errorf("%s: %d error answered as %q %q, want application/json {\"error\": \"...\"}", what, res.StatusCode, ct, body)
	}
}

// TestAPIErrorsAreJSON: every error under /v1, /whip and /whep is the
// API's JSON error, also where no route serves the request (an unknown
// path, a method no route takes) and where a component's own handler
// refuses it (export, samples, WHIP/WHEP). The access, rebinding and CSRF
// tests check the same for every route through call.
func TestAPIErrorsAreJSON(t *testing.T) {
	_, base := daemontest.Start(t, accessConfig(t, fmt.Sprintf(`{listen: "127.0.0.1:0", token: %q}`, adminToken)), nil)
	auth := "Bearer " + adminToken
	for _, c := range []struct {
		row  accessRow
		want int
	}{
		{accessRow{method: "GET", path: "/v1/no-such-route"}, 404},
		{accessRow{method: "GET", path: "/v1/episodes/no-such-episode/no-such-part"}, 404},
		{accessRow{method: "PUT", path: "/v1/episodes"}, 405},
		{accessRow{method: "PATCH", path: "/v1/history"}, 405},
		{accessRow{method: "GET", path: "/whep/sessions/x/y"}, 404},
		{accessRow{method: "GET", path: "/v1/episodes/no-such-episode/export"}, 404},
		{accessRow{method: "GET", path: "/v1/episodes/no-such-episode/samples"}, 404},
		{accessRow{method: "POST", path: "/whip/cell1/cam1", ctype: "application/sdp", body: "not sdp"}, 400},
		{accessRow{method: "POST", path: "/whep/cell1/nope", ctype: "application/sdp", body: "v=0\r\n"}, 404},
		{accessRow{method: "POST", path: "/v1/cells/cell1/episodes", ctype: "application/json", body: "{"}, 400},
	} {
		if got := call(t, base, c.row, auth, nil); got != c.want {
			t.Errorf("%s %s: %d, want %d", c.row.method, c.row.path, got, c.want)
		}
	}
	// Refused by the access filter: no token, wrong host.
	if got := call(t, base, accessRow{method: "GET", path: "/v1/episodes"}, "", nil); got != 401 {
		t.Errorf("no token: %d, want 401", got)
	}
	if got := call(t, base, accessRow{method: "GET", path: "/v1/episodes"}, auth, map[string]string{"Host": "attacker.example"}); got != 421 {
		t.Errorf("wrong host: %d, want 421", got)
	}
}

// routesOf returns the daemon's registered patterns, sorted, and fails the
// test for any route without a row in accessTable or row without a route.
func routesOf(t *testing.T, d *daemon.Daemon) []api.Route {
	t.Helper()
	routes := daemon.Routes(d)
	seen := map[string]bool{}
	for _, r := range routes {
		seen[r.Pattern] = true
		if _, ok := accessTable[r.Pattern]; !ok {
			t.Errorf("route %q (access %s) has no row in accessTable: add one", r.Pattern, r.Access)
		}
	}
	for p := range accessTable {
		if !seen[p] {
			t.Errorf("accessTable row %q names no registered route: remove or fix it", p)
		}
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].Pattern < routes[j].Pattern })
	return routes
}

// TestAccessTable: every route × (no token, read token, admin token, wrong
// token) on a daemon with both tokens, and every route on a daemon without
// any (loopback), against the table.
func TestAccessTable(t *testing.T) {
	d, base := daemontest.Start(t, accessConfig(t, fmt.Sprintf(`{listen: "127.0.0.1:0", token: %q, read_token: %q}`, adminToken, readToken)), nil)
	_, openBase := daemontest.Start(t, accessConfig(t, `{listen: "127.0.0.1:0"}`), nil)
	for _, r := range routesOf(t, d) {
		row, ok := accessTable[r.Pattern]
		if !ok {
			continue
		}
		for _, c := range []struct {
			who, auth string
			want      int
		}{
			{"no token", "", row.want.none},
			{"read token", "Bearer " + readToken, row.want.read},
			{"admin token", "Bearer " + adminToken, row.want.admin},
			{"wrong token", "Bearer " + wrongToken, row.want.wrong},
		} {
			if got := call(t, base, row, c.auth, nil); got != c.want {
				t.Errorf("%s (%s %s) with %s: %d, want %d", r.Pattern, row.method, row.path, c.who, got, c.want)
			}
		}
		if got := call(t, openBase, row, "", nil); got != row.want.admin {
			t.Errorf("%s (%s %s) on a daemon without a token: %d, want %d", r.Pattern, row.method, row.path, got, row.want.admin)
		}
	}
}

// TestDNSRebinding: a request naming another host gets 421 on every route
// but the probes, whatever token it carries; the listen address, an IP
// literal, localhost and allowed_hosts are served.
func TestDNSRebinding(t *testing.T) {
	d, base := daemontest.Start(t, accessConfig(t, fmt.Sprintf(`{listen: "127.0.0.1:0", token: %q, allowed_hosts: [gw1.factory.lan]}`, adminToken)), nil)
	_, port, _ := strings.Cut(d.Addr(), ":")
	for _, r := range routesOf(t, d) {
		row, ok := accessTable[r.Pattern]
		if !ok {
			continue
		}
		want := http.StatusMisdirectedRequest
		if r.Path == "/healthz" || r.Path == "/readyz" {
			want = row.want.admin
		}
		for _, host := range []string{"attacker.example", "attacker.example:" + port, "gw1.factory.lan.attacker.example:" + port} {
			if got := call(t, base, row, "Bearer "+adminToken, map[string]string{"Host": host}); got != want {
				t.Errorf("%s with Host %s: %d, want %d", r.Pattern, host, got, want)
			}
		}
		for _, host := range []string{"localhost:" + port, "127.0.0.1:" + port, "gw1.factory.lan:" + port, "GW1.Factory.LAN"} {
			if got := call(t, base, row, "Bearer "+adminToken, map[string]string{"Host": host}); got != row.want.admin {
				t.Errorf("%s with Host %s: %d, want %d", r.Pattern, host, got, row.want.admin)
			}
		}
	}
}

// TestCSRF: with no token configured (the loopback default), the simple
// cross-origin POSTs a hostile page can send without a preflight
// (text/plain, form-encoded, multipart) are refused with 403 on every
// state-changing route, and the start request that the issue reproduced
// starts nothing.
func TestCSRF(t *testing.T) {
	d, base := daemontest.Start(t, accessConfig(t, `{listen: "127.0.0.1:0"}`), nil)
	simple := []map[string]string{
		{"Origin": "http://evil.example", "Content-Type": "text/plain"},
		{"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
		{"Origin": "http://evil.example", "Content-Type": "multipart/form-data; boundary=xyz"},
		{"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
		// Another port of the gateway is the same site but not the same
		// origin: refused too.
		{"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1", "Content-Type": "text/plain"},
	}
	n := 0
	for _, r := range routesOf(t, d) {
		row, ok := accessTable[r.Pattern]
		if !ok || row.method == "GET" {
			continue
		}
		n++
		for _, h := range simple {
			x := row
			x.ctype, x.body = "", `{"task":"csrf"}`
			if got := call(t, base, x, "", h); got != http.StatusForbidden {
				t.Errorf("%s %s with %v: %d, want 403", row.method, row.path, h, got)
			}
		}
	}
	if n < 8 {
		t.Fatalf("only %d state-changing routes checked", n)
	}
	start := accessRow{"POST", "/v1/cells/cell1/episodes", "", `{"task":"csrf"}`, codes{}}
	for _, h := range simple {
		if got := call(t, base, start, "", h); got != http.StatusForbidden {
			t.Errorf("cross-origin start with %v: %d, want 403", h, got)
		}
	}
	// Without an Origin (an old browser, a plugin), the body type still
	// stops a form or text/plain POST from starting an episode.
	if got := call(t, base, start, "", map[string]string{"Content-Type": "text/plain"}); got != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain start without Origin: %d, want 415", got)
	}
	if got := call(t, base, start, "", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); got != http.StatusUnsupportedMediaType {
		t.Errorf("form start without Origin: %d, want 415", got)
	}
	if st := daemon.CellStatus(d); fmt.Sprint(st) == "" {
		t.Fatal("no cell status")
	}
	for _, c := range daemon.CellStatus(d) {
		if c.Recording != nil {
			t.Fatalf("a refused request started episode %v", c.Recording)
		}
	}
	// The same request from the page itself (same origin, JSON) works.
	own := map[string]string{"Origin": base, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}
	if got := call(t, base, start, "", own); got != http.StatusCreated {
		t.Errorf("same-origin JSON start: %d, want 201", got)
	}
}

// TestStartBodyLimit: a start request over the body limit gets 413, with
// or without a declared length, and starts nothing.
func TestStartBodyLimit(t *testing.T) {
	d, base := daemontest.Start(t, accessConfig(t, `{listen: "127.0.0.1:0"}`), nil)
	big := `{"task":"` + strings.Repeat("x", api.DefaultMaxBody) + `"}`
	row := accessRow{"POST", "/v1/cells/cell1/episodes", "application/json", big, codes{}}
	if got := call(t, base, row, "", nil); got != http.StatusRequestEntityTooLarge {
		t.Errorf("start with a %d-byte body: %d, want 413", len(big), got)
	}
	// Without a declared length (chunked), the limit is hit while reading:
	// still 413, on the JSON route and on a WHIP offer.
	for _, r := range []accessRow{row, {"POST", "/whip/cell1/cam1", "application/sdp", "v=0\r\n" + strings.Repeat("a=x\r\n", api.DefaultMaxBody/5), codes{}}} {
		req, _ := http.NewRequest(r.method, base+r.path, io.MultiReader(strings.NewReader(r.body)))
		req.Header.Set("Content-Type", r.ctype)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("chunked %s %s over the limit: %s, want 413", r.method, r.path, res.Status)
		}
	}
	for _, c := range daemon.CellStatus(d) {
		if c.Recording != nil {
			t.Fatalf("an oversized request started episode %v", c.Recording)
		}
	}
}
