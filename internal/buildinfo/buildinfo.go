// Package buildinfo reports the version and commit the binary was built
// from. The Makefile sets them with -ldflags -X; a plain `go build` falls
// back to the module and VCS data Go embeds, or "dev" / "unknown".
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Set by the linker: -X github.com/episoded/episoded/internal/buildinfo.Version=...
var (
	Version = ""
	Commit  = ""
)

// Info is what `episoded version` prints and episoded_build_info exports.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
}

// Get returns the build information.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && i.Commit == "" {
				i.Commit = s.Value
			}
		}
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	return i
}
