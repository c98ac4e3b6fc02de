// Command mkdeb builds episoded's Debian package with nfpm used as a Go
// library (pinned in go.mod; no nfpm binary to install). `make deb` runs it:
//
//	go run ./internal/tools/mkdeb --binary bin/episoded --version 1.2.3 --out bin/
//
// The package holds:
//
//	/usr/bin/episoded                             the binary
//	/usr/lib/systemd/system/episoded.service      the recorder
//	/usr/lib/systemd/system/episoded-upload.service, .timer   the nightly upload (sync.mode: oneshot)
//	/etc/episoded/episoded.yaml                   the example config (a conffile: kept on upgrade)
//	/etc/episoded/credentials/                    one file per secret (mode 0700, empty)
//	/usr/share/doc/episoded/README.md             what the units' Documentation= points to
//
// The units run with DynamicUser= and StateDirectory=, so systemd creates
// the state directory; the package creates no user and starts nothing.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
)

func main() {
	binary := flag.String("binary", "bin/episoded", "the episoded binary to package")
	root := flag.String("root", ".", "the repository root (configs/, README.md)")
	version := flag.String("version", "0.0.0", "package version (a leading v and a git describe suffix are fine)")
	arch := flag.String("arch", runtime.GOARCH, "Debian architecture (Go names: amd64, arm64)")
	out := flag.String("out", "bin", "directory to write episoded_VERSION_ARCH.deb to")
	flag.Parse()
	path, err := build(*binary, *root, *version, *arch, *out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkdeb: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

// debVersion turns `git describe` output (v1.2.3-4-gabc, or a bare hash)
// into a version dpkg accepts.
func debVersion(v string) string {
	v = strings.TrimPrefix(v, "v")
	if v == "" || v[0] < '0' || v[0] > '9' {
		v = "0.0.0~" + v
	}
	return strings.NewReplacer("-", "~", "_", "~").Replace(v)
}

func build(binary, root, version, arch, outDir string) (string, error) {
	if _, err := os.Stat(binary); err != nil {
		return "", fmt.Errorf("binary: %w (run make build first)", err)
	}
	cfg := func(name string) string { return filepath.Join(root, "configs", name) }
	mode := func(m os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Mode: m, Owner: "root", Group: "root"}
	}
	info := &nfpm.Info{
		Name:          "episoded",
		Arch:          arch,
		Platform:      "linux",
		Version:       debVersion(version),
		VersionSchema: "none",
		Section:       "misc",
		Priority:      "optional",
		Maintainer:    "episoded maintainers <episoded@localhost>",
		Description:   "time-aligned camera, lidar and robot-telemetry episode recorder\nRecords RTSP/WebRTC cameras and MQTT telemetry into aligned episodes,\nexports MCAP and uploads to S3-compatible storage.",
		License:       "Proprietary",
		MTime:         time.Unix(0, 0).UTC(), // reproducible
		Overridables: nfpm.Overridables{
			Contents: files.Contents{
				{Source: binary, Destination: "/usr/bin/episoded", FileInfo: mode(0o755)},
				{Source: cfg("episoded.service"), Destination: "/usr/lib/systemd/system/episoded.service", FileInfo: mode(0o644)},
				{Source: cfg("episoded-upload.service"), Destination: "/usr/lib/systemd/system/episoded-upload.service", FileInfo: mode(0o644)},
				{Source: cfg("episoded-upload.timer"), Destination: "/usr/lib/systemd/system/episoded-upload.timer", FileInfo: mode(0o644)},
				{Source: cfg("episoded.yaml"), Destination: "/etc/episoded/episoded.yaml", Type: files.TypeConfigNoReplace, FileInfo: mode(0o644)},
				{Destination: "/etc/episoded", Type: files.TypeDir, FileInfo: mode(0o755)},
				{Destination: "/etc/episoded/credentials", Type: files.TypeDir, FileInfo: mode(0o700)},
				{Source: filepath.Join(root, "README.md"), Destination: "/usr/share/doc/episoded/README.md", FileInfo: mode(0o644)},
			},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("package contents: %w", err)
	}
	pkgr, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(outDir, pkgr.ConventionalFileName(info))
	tmp, err := os.CreateTemp(outDir, ".mkdeb-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if err := pkgr.Package(info, tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("build deb: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return path, nil
}
