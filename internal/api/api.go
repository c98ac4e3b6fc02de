// Package api is episoded's HTTP server: the probes (/healthz, /readyz),
// Prometheus /metrics, the JSON API under /v1, WebRTC under /whip and
// /whep, and the dashboard at /.
//
// Components add their routes with Handle before Run; the server owns no
// business logic. Lifecycle: New binds nothing; Listen binds the socket (so
// a port in use is a start-up failure); Run serves until its context is
// cancelled, then shuts down gracefully.
//
// Auth: when a token is configured, every request that can change state
// (any method but GET, HEAD and OPTIONS under /v1/, /whip/ and /whep/) needs
// `Authorization: Bearer <token>`; otherwise it gets 401. Reads stay open on
// the loopback-only default bind.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options configures the server.
type Options struct {
	// Listen is host:port; default 127.0.0.1:7480.
	Listen string
	// Token, when non-empty, is required on mutating requests.
	Token string
	// Gatherer serves /metrics; nil means prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
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
	mu      struct {
		sync.Mutex
		status map[string]func() any
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
	s := &Server{opts: o, log: o.Logger.With("component", "api"), mux: http.NewServeMux(), started: time.Now()}
	s.mu.status = map[string]func() any{}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting"})
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelError)}))
	s.mux.HandleFunc("GET /v1/status", s.handleStatus)
	return s
}

// Handle registers a handler for a Go 1.22 mux pattern such as
// "POST /v1/cells/{cell}/episodes". Call it before Run.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// HandleFunc is Handle for a function.
func (s *Server) HandleFunc(pattern string, h http.HandlerFunc) { s.mux.HandleFunc(pattern, h) }

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

// Listen binds the socket.
func (s *Server) Listen() error {
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
		Handler:           s.auth(s.mux),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.ln) }()
	s.log.Info("serving", "addr", s.ln.Addr().String())
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

// mutating reports whether r can change state and so needs the token.
func mutating(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	p := r.URL.Path
	return strings.HasPrefix(p, "/v1/") || strings.HasPrefix(p, "/whip/") || strings.HasPrefix(p, "/whep/")
}

func (s *Server) auth(next http.Handler) http.Handler {
	if s.opts.Token == "" {
		return next
	}
	want := []byte("Bearer " + s.opts.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mutating(r) && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="episoded"`)
			WriteError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
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
	WriteJSON(w, http.StatusOK, out)
}

// WriteJSON writes v as JSON with the given status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteError writes {"error": msg} with the given status code.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, map[string]string{"error": msg})
}
