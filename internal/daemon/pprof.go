package daemon

import (
	"net/http/pprof"

	"github.com/episoded/episoded/internal/api"
)

// mountPprof serves Go's runtime profiles (net/http/pprof) under
// /debug/pprof/, for the admin only (api.AccessOf: every path under
// /debug/ needs the admin token when one is configured). A CPU profile of
// a running daemon:
//
//	go tool pprof 'http://127.0.0.1:7480/debug/pprof/profile?seconds=30'
//
// Nothing is collected until a profile is asked for; a CPU or trace
// profile costs the daemon a few percent of CPU while it runs.
func mountPprof(a *api.Server) {
	a.HandleFunc("GET /debug/pprof/", pprof.Index) // heap, allocs, goroutine, mutex, block, ...
	a.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	a.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	a.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
}
