// Package configtest walks internal/config's bad-config fixtures
// (testdata/*.bad.yaml) for the tests that check who rejects them:
// config.Parse in internal/config, and `episoded config check` against
// `episoded run` in cmd/episoded. Only tests use it.
//
// Each fixture holds one kind of mistake and names, on its first line
// "# want: <text>", the text its error message must contain.
package configtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// EachBad runs check as a subtest, named after the file, for every
// *.bad.yaml in dir with the file's path, its content and its "# want:"
// text. It fails the test if dir has fewer than atLeast such files, and a
// subtest if its file cannot be read or does not start with the want line.
func EachBad(t *testing.T, dir string, atLeast int, check func(t *testing.T, path string, data []byte, want string)) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.bad.yaml"))
	if err != nil || len(files) < atLeast {
		t.Fatalf("want at least %d bad configs, got %d (%v)", atLeast, len(files), err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(data), "\n")
			want, ok := strings.CutPrefix(first, "# want: ")
			if !ok {
				t.Fatalf("%s must start with a '# want: <error text>' line", f)
			}
			check(t, f, data, want)
		})
	}
}
