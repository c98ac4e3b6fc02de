package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/internal/api"
	"github.com/episoded/episoded/internal/lifecycle"
)

// What the external tests (package daemon_test, which run the daemon with
// internal/daemon/daemontest) look at inside a running daemon.

// Routes returns the routes d's API has registered.
func Routes(d *Daemon) []api.Route { return d.api.Routes() }

// CellStatus returns the status of d's cells.
func CellStatus(d *Daemon) []lifecycle.CellStatus { return d.cells.Status() }

// Registry returns d's metrics registry.
func Registry(d *Daemon) *prometheus.Registry { return d.reg }

// HistoryJSON is what GET /v1/history answers.
type HistoryJSON = historyJSON
