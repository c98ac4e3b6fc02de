// Package api is episoded's HTTP server: the probes (/healthz, /readyz),
// Prometheus /metrics, the JSON API under /v1, WebRTC under /whip and
// /whep, and the dashboard at /.
//
// Components add their routes with Handle before Run; the server owns no
// business logic. Lifecycle: New binds nothing; Listen binds the socket and
// loads the TLS certificate (so a port in use or a bad certificate is a
// start-up failure); Run serves until its context is cancelled, then shuts
// down gracefully.
//
// Access (see docs/SECURITY.md). Every request passes one filter before its
// route, in this order:
//   - Host: a request whose Host is not an IP literal, localhost, the listen
//     host or one of Options.AllowedHosts gets 421 (DNS rebinding), except
//     the probes /healthz and /readyz.
//   - Origin: a state-changing request (not GET, HEAD or OPTIONS) that a
//     browser marks as cross-origin (Sec-Fetch-Site, else Origin vs Host)
//     gets 403 (CSRF), with or without a token.
//   - Token: when Options.Token is set, every /v1, /whip and /whep request
//     needs `Authorization: Bearer <token>` (scheme case-insensitive), reads
//     included; 401 without a valid one. Options.ReadToken is accepted for
//     Read routes (AccessOf): GETs and WHEP viewing; on an Admin route it
//     gets 403. /metrics needs either token unless Options.MetricsOpen.
//     /healthz, /readyz and routes registered with HandleOpen (the
//     dashboard's static files, never a /v1, /whip or /whep path) are
//     open; any other route, whatever its path, needs a token. Without
//     a token every route is open: config validation allows that only on a
//     loopback listen address or with api.insecure_open.
//   - Body: over Options.MaxBody gets 413. Handlers take JSON bodies only
//     through ReadJSON (415 without Content-Type: application/json).
//
// Routes lists every registered route with its Access, so a test can prove
// that each one is guarded as intended.
package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/episoded/episoded/internal/httpjson"
	"github.com/episoded/episoded/internal/redact"
)

// Options configures the server.
type Options struct {
	// Listen is host:port; default 127.0.0.1:7480.
	Listen string
	// Token is the admin token; when non-empty every /v1, /whip and /whep
	// request needs a token.
	Token string
	// ReadToken, optional, is accepted on Read routes only. It needs Token.
	ReadToken string
	// MetricsOpen serves /metrics without a token.
	MetricsOpen bool
	// AllowedHosts are host names (no port) served besides IP literals,
	// localhost and the listen host.
	AllowedHosts []string
	// TLS, when set, serves HTTPS only; the files are reloaded when they
	// change and on ReloadTLS.
	TLS *TLSFiles
	// MaxBody caps request bodies; default DefaultMaxBody.
	MaxBody int64
	// Secrets are credentials (values, or URLs holding them) masked in
	// /v1/status answers, besides any URL userinfo.
	Secrets []string
	// Gatherer serves /metrics; nil means prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	// Registerer takes the server's own metrics
	// (episoded_api_refused_total); nil registers nothing.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Info is static data merged into /v1/status (version, gateway id).
	Info map[string]any
	// ShutdownTimeout bounds the graceful shutdown; default 5s.
	ShutdownTimeout time.Duration
}

// Server is the HTTP server.
type Server struct {
	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	ready   atomic.Bool
	started time.Time
	ln      net.Listener
	certs   *certs // nil without TLS
	scrub   *redact.Scrubber
	refused *prometheus.CounterVec
	mu      struct {
		sync.Mutex
		status map[string]func() any
		routes []Route
		open   map[string]bool // patterns registered with HandleOpen
	}
}

// New returns a server with the probe, metrics and status routes.
func New(o Options) *Server {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:7480"
	}
	if o.Gatherer == nil {
		o.Gatherer = prometheus.DefaultGatherer
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 5 * time.Second
	}
	if o.MaxBody <= 0 {
		o.MaxBody = DefaultMaxBody
	}
	s := &Server{opts: o, log: o.Logger.With("component", "api"), mux: http.NewServeMux(), started: time.Now(), scrub: redact.NewScrubber(o.Secrets...)}
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "episoded_api_refused_total",
		Help: "API requests refused before reaching a route, by reason: host (421), origin (403 cross-site), token (401), role (403 read token), body (413).",
	}, []string{"reason"})
	if o.Registerer != nil {
		o.Registerer.MustRegister(s.refused)
	}
	s.mu.status = map[string]func() any{}
	s.mu.open = map[string]bool{}
	s.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting"})
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	s.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelError)}))
	s.HandleFunc("GET /v1/status", s.handleStatus)
	return s
}

// Handle registers a handler for a Go 1.22 mux pattern such as
// "POST /v1/cells/{cell}/episodes". Call it before Run.
// Its Access follows from the method and path (AccessOf): a token is
// needed unless it is a probe.
func (s *Server) Handle(pattern string, h http.Handler) { s.handle(pattern, h, false) }

// HandleOpen registers a route that needs no token even when one is
// configured (the dashboard's static files). It still never serves a path
// under /v1, /whip or /whep without one, and the Host and Origin checks
// still apply.
func (s *Server) HandleOpen(pattern string, h http.Handler) { s.handle(pattern, h, true) }

func (s *Server) handle(pattern string, h http.Handler, open bool) {
	s.mux.Handle(pattern, h)
	s.mu.Lock()
	s.mu.routes = append(s.mu.routes, parseRoute(pattern, open))
	s.mu.open[pattern] = open
	s.mu.Unlock()
}

// routedOpen reports whether r goes to a route registered with HandleOpen.
func (s *Server) routedOpen(r *http.Request) bool {
	_, pattern := s.mux.Handler(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.open[pattern]
}

// HandleFunc is Handle for a function.
func (s *Server) HandleFunc(pattern string, h http.HandlerFunc) { s.Handle(pattern, h) }

// Routes returns every registered route, in registration order.
func (s *Server) Routes() []Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Route(nil), s.mu.routes...)
}

// Handler returns the server's whole handler, filter included, for tests
// that serve it themselves.
func (s *Server) Handler() http.Handler {
	return newGuard(&s.opts, http.HandlerFunc(s.route), s.routedOpen, s.refused)
}

// route is the mux, except that a request under /v1, /whip or /whep that
// no API route serves gets the API's JSON error like every route: 404, or
// 405 with the mux's Allow header, instead of the mux's plain text or the
// dashboard's catch-all "GET /".
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	if apiPath(r.URL.Path) {
		h, pattern := s.mux.Handler(r)
		s.mu.Lock()
		open := s.mu.open[pattern]
		s.mu.Unlock()
		switch {
		case pattern == "":
			// The mux's own 404 or 405: keep its status and Allow.
			rec := &statusOnly{header: http.Header{}}
			h.ServeHTTP(rec, r)
			if a := rec.header.Get("Allow"); a != "" {
				w.Header().Set("Allow", a)
			}
			if rec.code == http.StatusMethodNotAllowed {
				WriteError(w, rec.code, "method "+r.Method+" not allowed here (allowed: "+rec.header.Get("Allow")+")")
				return
			}
			WriteError(w, http.StatusNotFound, "no API route at this path")
			return
		case open:
			WriteError(w, http.StatusNotFound, "no API route at this path")
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// statusOnly records the status and headers a handler writes and discards
// its body.
type statusOnly struct {
	header http.Header
	code   int
}

func (s *statusOnly) Header() http.Header { return s.header }
func (s *statusOnly) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
}
func (s *statusOnly) Write(b []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return len(b), nil
}

// AddStatus adds a section to /v1/status; fn is called on every request and
// must be safe for concurrent use.
func (s *Server) AddStatus(name string, fn func() any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.status[name] = fn
}

// SetReady flips /readyz to 200 (or back to 503).
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Addr returns the bound address once Listen has succeeded.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Scheme is "https" with TLS, else "http".
func (s *Server) Scheme() string {
	if s.opts.TLS != nil {
		return "https"
	}
	return "http"
}

// ReloadTLS reloads the certificate, key and client CAs now (SIGHUP). On
// error the previous ones keep serving.
func (s *Server) ReloadTLS() error {
	if s.certs == nil {
		return errNoTLS
	}
	return s.certs.Reload()
}

// Listen loads the TLS files, if any, and binds the socket.
func (s *Server) Listen() error {
	if s.opts.TLS != nil && s.certs == nil {
		c, err := newCerts(*s.opts.TLS, s.log)
		if err != nil {
			return err
		}
		s.certs = c
	}
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.opts.Listen, err)
	}
	s.ln = ln
	return nil
}

// Run serves until ctx is cancelled, then shuts down gracefully. It calls
// Listen first if that has not been done.
func (s *Server) Run(ctx context.Context) error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	if s.certs != nil {
		srv.TLSConfig = &tls.Config{GetConfigForClient: s.certs.config}
		go func() { errc <- srv.ServeTLS(s.ln, "", "") }()
	} else {
		go func() { errc <- srv.Serve(s.ln) }()
	}
	s.log.Info("serving", "addr", s.ln.Addr().String(), "scheme", s.Scheme(),
		"token", s.opts.Token != "", "read_token", s.opts.ReadToken != "")
	select {
	case err := <-errc:
		return fmt.Errorf("serve http: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve http: %w", err)
	}
	return nil
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	out := map[string]any{}
	for k, v := range s.opts.Info {
		out[k] = v
	}
	out["ready"] = s.ready.Load()
	out["uptime_seconds"] = int64(time.Since(s.started).Seconds())
	s.mu.Lock()
	fns := make(map[string]func() any, len(s.mu.status))
	for n, fn := range s.mu.status {
		fns[n] = fn
	}
	s.mu.Unlock()
	for n, fn := range fns {
		out[n] = fn()
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "encode status: "+err.Error())
		return
	}
	// Status carries device errors and sources, which come from libraries
	// that may quote a URL they were given: scrub the whole answer.
	b = []byte(s.scrub.Text(string(b)))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(b, '\n'))
}

// WriteJSON writes v as JSON with the given status code (httpjson.Write).
func WriteJSON(w http.ResponseWriter, code int, v any) { httpjson.Write(w, code, v) }

// WriteError writes {"error": msg} with the given status code
// (httpjson.Error, the one error format of the API).
func WriteError(w http.ResponseWriter, code int, msg string) { httpjson.Error(w, code, msg) }
