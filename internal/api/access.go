package api

import (
	"crypto/subtle"
	"net"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Access is what a route needs from the caller.
type Access int

const (
	// Open routes need no token: the probes, and routes registered with
	// HandleOpen (the dashboard's static files).
	Open Access = iota
	// Metrics is /metrics: like Read, unless Options.MetricsOpen.
	Metrics
	// Read routes take the read token or the admin token: every GET under
	// /v1, /whep and /whip, and WHEP viewing (POST and DELETE under /whep).
	Read
	// Admin routes take only the admin token: every other method, and
	// every method under /debug/ (runtime profiles).
	Admin
)

func (a Access) String() string {
	switch a {
	case Open:
		return "open"
	case Metrics:
		return "metrics"
	case Read:
		return "read"
	}
	return "admin"
}

// AccessOf classifies a request (or a route pattern's method and path) by
// what it needs. An empty method (a pattern without one) is treated as the
// most demanding. Nothing but the probes is Open by path: a route is open
// only when registered with HandleOpen, so a new route needs a token by
// default.
func AccessOf(method, path string) Access {
	switch path {
	case "/healthz", "/readyz":
		return Open
	case "/metrics":
		return Metrics
	}
	if strings.HasPrefix(path, "/debug/") {
		return Admin
	}
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return Read
	}
	if strings.HasPrefix(path, "/whep/") && method != "" {
		// Watching a live or recorded stream: the offer (POST), its ICE
		// updates (PATCH) and hanging up (DELETE).
		return Read
	}
	return Admin
}

// probe reports whether path is a liveness or readiness probe, which skips
// the Host check so that load balancers and kubelets reach it by any name.
func probe(path string) bool { return path == "/healthz" || path == "/readyz" }

// Route is one registered route.
type Route struct {
	// Pattern is as given to Handle, e.g. "POST /v1/cells/{cell}/episodes".
	Pattern string
	// Method and Path are the pattern's parts; Method is "" for a pattern
	// that matches every method.
	Method, Path string
	// Access is what the route needs (AccessOf the method and path).
	Access Access
}

func parseRoute(pattern string, open bool) Route {
	r := Route{Pattern: pattern, Path: pattern}
	if m, p, ok := strings.Cut(pattern, " "); ok {
		r.Method, r.Path = m, strings.TrimSpace(p)
	}
	r.Access = AccessOf(r.Method, r.Path)
	if open {
		r.Access = Open
	}
	return r
}

// apiPath reports whether a request path is under /v1, /whip or /whep,
// which no open route may serve.
func apiPath(p string) bool {
	return p == "/v1" || strings.HasPrefix(p, "/v1/") || strings.HasPrefix(p, "/whip/") || strings.HasPrefix(p, "/whep/")
}

// guard is the request filter in front of every route, in this order:
//  1. Host (421): DNS rebinding makes a hostile name resolve to the
//     gateway; only names the operator expects are served.
//  2. Origin (403): a state-changing request a browser sends on behalf of
//     another site is refused (http.CrossOriginProtection).
//  3. Token (401 missing or wrong, 403 read token on an admin route).
//  4. Body size (413).
type guard struct {
	o *Options
	// open reports whether r is routed to a route registered with
	// HandleOpen.
	open  func(r *http.Request) bool
	hosts map[string]bool
	cop   *http.CrossOriginProtection
	next  http.Handler
	admin []byte
	read  []byte
	// refused counts refused requests by reason: host, origin, token,
	// role, body.
	refused *prometheus.CounterVec
}

func newGuard(o *Options, next http.Handler, open func(*http.Request) bool, refused *prometheus.CounterVec) *guard {
	g := &guard{o: o, next: next, open: open, refused: refused, cop: http.NewCrossOriginProtection(), hosts: map[string]bool{"localhost": true}}
	if h, _, err := net.SplitHostPort(o.Listen); err == nil && h != "" {
		g.hosts[normHost(h)] = true
	}
	for _, h := range o.AllowedHosts {
		g.hosts[normHost(h)] = true
	}
	if o.Token != "" {
		g.admin = []byte(o.Token)
	}
	if o.ReadToken != "" {
		g.read = []byte(o.ReadToken)
	}
	return g
}

func normHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".")
}

// hostAllowed reports whether the Host header names this daemon: an IP
// literal, localhost, the listen host or an allowed_hosts entry. A request
// without a Host (HTTP/1.0) comes from no browser and is let through.
func (g *guard) hostAllowed(host string) bool {
	if host == "" {
		return true
	}
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = normHost(h)
	if net.ParseIP(h) != nil {
		return true
	}
	return g.hosts[h]
}

// role is what the request's bearer token grants.
type role int

const (
	roleNone  role = iota // no Authorization header
	roleWrong             // a token, but not one of ours
	roleRead
	roleAdmin
)

// bearer returns the token of an "Authorization: Bearer <token>" header;
// the scheme is case-insensitive (RFC 9110 section 11.1).
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

func (g *guard) role(r *http.Request) role {
	h := r.Header.Get("Authorization")
	if h == "" {
		return roleNone
	}
	tok, ok := bearer(h)
	if !ok {
		return roleWrong
	}
	b := []byte(tok)
	// Compare with both, always, so the timing says nothing about which.
	isAdmin := g.admin != nil && subtle.ConstantTimeCompare(b, g.admin) == 1
	isRead := g.read != nil && subtle.ConstantTimeCompare(b, g.read) == 1
	switch {
	case isAdmin:
		return roleAdmin
	case isRead:
		return roleRead
	}
	return roleWrong
}

// msgNoToken is the 401 message; it never echoes what was sent.
const msgNoToken = "missing or wrong bearer token (send Authorization: Bearer <api.token or api.read_token>)"

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !probe(r.URL.Path) && !g.hostAllowed(r.Host) {
		g.refused.WithLabelValues("host").Inc()
		WriteError(w, http.StatusMisdirectedRequest, "unknown host name: add it to api.allowed_hosts to serve it")
		return
	}
	if err := g.cop.Check(r); err != nil {
		g.refused.WithLabelValues("origin").Inc()
		WriteError(w, http.StatusForbidden, "cross-origin request refused: a page from another site may not change this daemon")
		return
	}
	need := AccessOf(r.Method, r.URL.Path)
	if !apiPath(r.URL.Path) && g.open(r) {
		need = Open
	}
	if need == Metrics {
		need = Read
		if g.o.MetricsOpen {
			need = Open
		}
	}
	if need != Open && g.admin != nil {
		switch ro := g.role(r); {
		case ro == roleNone || ro == roleWrong:
			g.refused.WithLabelValues("token").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="episoded"`)
			WriteError(w, http.StatusUnauthorized, msgNoToken)
			return
		case need == Admin && ro != roleAdmin:
			g.refused.WithLabelValues("role").Inc()
			WriteError(w, http.StatusForbidden, "the read-only token cannot change anything: use api.token")
			return
		}
	}
	if max := g.o.MaxBody; r.ContentLength > max {
		g.refused.WithLabelValues("body").Inc()
		WriteError(w, http.StatusRequestEntityTooLarge, "request body too large")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, g.o.MaxBody)
	g.next.ServeHTTP(w, r)
}
