package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDebPackage builds the package, installs it with dpkg -i on this
// machine (tests run as root here and in CI), runs systemd-analyze verify
// on the installed units and config check --no-secrets on the installed
// example config, then purges it. Nothing here is faked: the package is
// read by the real dpkg and the units by the real systemd-analyze.
func TestDebPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: installs a Debian package with dpkg")
	}
	for _, tool := range []string{"dpkg", "dpkg-deb", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (.ci/run installs systemd; dpkg is part of Debian): %v", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatal("dpkg -i needs root (tests run as root in CI)")
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	binary := filepath.Join(dir, "episoded")
	run(t, root, "go", "build", "-o", binary, "./cmd/episoded")
	deb, err := build(binary, root, "v1.2.3-4-gabcdef", "amd64", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(deb, "episoded_1.2.3~4~gabcdef_amd64.deb") {
		t.Errorf("package name %s", deb)
	}

	if out, err := exec.Command("dpkg-query", "-W", "episoded").CombinedOutput(); err == nil {
		t.Fatalf("episoded is already installed on this machine; not touching it: %s", out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("dpkg", "--purge", "episoded").CombinedOutput(); err != nil {
			t.Errorf("dpkg --purge: %v\n%s", err, out)
		}
		for _, p := range []string{"/etc/episoded", "/usr/bin/episoded", "/usr/lib/systemd/system/episoded.service"} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s is left after dpkg --purge", p)
			}
		}
	})
	run(t, root, "dpkg", "-i", deb)

	for path, mode := range map[string]os.FileMode{
		"/usr/bin/episoded":                               0o755,
		"/usr/lib/systemd/system/episoded.service":        0o644,
		"/usr/lib/systemd/system/episoded-upload.service": 0o644,
		"/usr/lib/systemd/system/episoded-upload.timer":   0o644,
		"/etc/episoded/episoded.yaml":                     0o644,
		"/etc/episoded/credentials":                       0o700 | os.ModeDir,
		"/usr/share/doc/episoded/README.md":               0o644,
	} {
		st, err := os.Stat(path)
		if err != nil {
			t.Errorf("installed: %v", err)
			continue
		}
		if st.Mode()&(os.ModePerm|os.ModeDir) != mode {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), mode)
		}
	}
	if out := run(t, root, "dpkg-query", "-W", "-f=${Conffiles}", "episoded"); !strings.Contains(out, "/etc/episoded/episoded.yaml") {
		t.Errorf("the example config is not a conffile (it would be overwritten on upgrade): %q", out)
	}

	// systemd-analyze verify exits non-zero on errors in the units,
	// including an ExecStart= binary that does not exist.
	out := run(t, root, "systemd-analyze", "verify",
		"/usr/lib/systemd/system/episoded.service",
		"/usr/lib/systemd/system/episoded-upload.service",
		"/usr/lib/systemd/system/episoded-upload.timer")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "episoded") {
			t.Errorf("systemd-analyze verify complains about our units: %s", line)
		}
	}

	out = run(t, root, "/usr/bin/episoded", "config", "check", "--no-secrets", "/etc/episoded/episoded.yaml")
	if !strings.Contains(out, "ok") {
		t.Errorf("config check --no-secrets: %s", out)
	}
	// Without --no-secrets the same check reads the (absent) secret files
	// and says which.
	cmd := exec.Command("/usr/bin/episoded", "config", "check", "/etc/episoded/episoded.yaml")
	cmd.Env = append(os.Environ(), "CREDENTIALS_DIRECTORY="+t.TempDir())
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "api.token_file") {
		t.Errorf("config check without secrets present: err %v, output %s", err, b)
	}
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
