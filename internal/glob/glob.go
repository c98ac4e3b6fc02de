// Package glob matches stream-id patterns where '*' matches across '/':
// "cell1/*" selects cell1/robot1/joint_states as well as cell1/cam0. The
// syntax is path.Match's (*, ?, [...], \ escapes); only '/' is no longer
// special.
package glob

import (
	"path"
	"strings"
)

// sep stands in for '/' so that path.Match treats it as an ordinary byte.
const sep = "\x00"

// Match reports whether name matches pattern; a malformed pattern
// matches nothing (check it with Validate).
func Match(pattern, name string) bool {
	ok, err := path.Match(strings.ReplaceAll(pattern, "/", sep), strings.ReplaceAll(name, "/", sep))
	return err == nil && ok
}

// Validate reports a malformed pattern.
func Validate(pattern string) error {
	_, err := path.Match(pattern, "")
	return err
}
