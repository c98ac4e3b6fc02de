// Package redact hides credentials in strings meant for logs, status and
// errors.
//
// Three tools, from the most to the least specific:
//   - URL masks the user name and password of one URL;
//   - String replaces known secret values wherever they occur;
//   - Scrubber does both over any text: every secret it was given (and the
//     password of every URL it was given) and the userinfo of every URL it
//     finds in the text. The daemon runs every log line, error and status
//     answer through one, so that a library that prints a URL it was handed
//     cannot leak what the config held.
package redact

import (
	"encoding/json"
	"log/slog"
	"net/url"
	"regexp"
	"sort"
	"strings"
)

// Mask is what a hidden credential prints as.
const Mask = "<redacted>"

// URL returns u with any user name and password replaced by Mask. A string
// that does not parse as a URL, or that has an '@' the parser did not take
// as userinfo (say, a password holding '?' or '/'), is cut after its last
// '@': over-redacting is the safe side.
func URL(u string) string {
	parsed, err := url.Parse(u)
	if err != nil || (parsed.User == nil && strings.Contains(u, "@")) {
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

// userinfoRE finds "scheme://userinfo@" in free text.
var userinfoRE = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@"'<>]+@`)

// Scrubber hides a fixed set of secrets, and URL credentials, in any text.
// The zero value hides URL credentials only. It is safe for concurrent use.
type Scrubber struct {
	secrets []string // longest first
}

// NewScrubber returns a scrubber for secrets, which may include URLs: their
// user names and passwords (raw and percent-decoded) become secrets too.
// Values shorter than 3 bytes are ignored.
func NewScrubber(secrets ...string) *Scrubber {
	seen := map[string]bool{}
	add := func(v string) {
		if len(v) >= 3 {
			seen[v] = true
		}
	}
	for _, s := range secrets {
		add(s)
		if u, err := url.Parse(s); err == nil && u.User != nil {
			p, _ := u.User.Password()
			add(p)
			add(u.User.String())
		}
		if i := strings.Index(s, "://"); i >= 0 {
			if j := strings.LastIndexByte(s, '@'); j > i+3 {
				info := s[i+3 : j]
				add(info)
				if _, pw, ok := strings.Cut(info, ":"); ok {
					add(pw)
					if d, err := url.PathUnescape(pw); err == nil {
						add(d)
					}
				}
			}
		}
	}
	sc := &Scrubber{}
	for v := range seen {
		sc.secrets = append(sc.secrets, v)
		// The same value as it appears inside a JSON string.
		if b, err := json.Marshal(v); err == nil {
			if q := string(b[1 : len(b)-1]); q != v {
				sc.secrets = append(sc.secrets, q)
			}
		}
	}
	sort.Slice(sc.secrets, func(i, j int) bool { return len(sc.secrets[i]) > len(sc.secrets[j]) })
	return sc
}

// Text returns s with every known secret and every URL's userinfo masked.
func (sc *Scrubber) Text(s string) string {
	if sc != nil {
		s = String(s, sc.secrets...)
	}
	if strings.Contains(s, "@") {
		s = userinfoRE.ReplaceAllString(s, "${1}"+Mask+"@")
	}
	return s
}

// ReplaceAttr is a slog.HandlerOptions.ReplaceAttr that scrubs the message
// and every string, error and Stringer attribute.
func (sc *Scrubber) ReplaceAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); s != "" {
			a.Value = slog.StringValue(sc.Text(s))
		}
	case slog.KindAny:
		switch v := a.Value.Any().(type) {
		case error:
			a.Value = slog.StringValue(sc.Text(v.Error()))
		case interface{ String() string }:
			a.Value = slog.StringValue(sc.Text(v.String()))
		case []string:
			out := make([]string, len(v))
			for i, s := range v {
				out[i] = sc.Text(s)
			}
			a.Value = slog.AnyValue(out)
		}
	}
	return a
}
