// Package redact hides credentials in strings meant for logs, status and
// errors.
package redact

import (
	"net/url"
	"strings"
)

// Mask is what a hidden credential prints as.
const Mask = "<redacted>"

// URL returns u with any user name and password replaced by Mask. A string
// that does not parse as a URL is cut after its last '@'.
func URL(u string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		if i := strings.LastIndexByte(u, '@'); i >= 0 {
			return Mask + "@" + u[i+1:]
		}
		return u
	}
	if parsed.User == nil {
		return u
	}
	parsed.User = url.User(Mask)
	return parsed.String()
}

// String replaces every occurrence of each secret (of 3 or more bytes) in s
// with Mask.
func String(s string, secrets ...string) string {
	for _, sec := range secrets {
		if len(sec) >= 3 {
			s = strings.ReplaceAll(s, sec, Mask)
		}
	}
	return s
}
