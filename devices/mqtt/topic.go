package mqtt

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// validFilter reports whether f is a valid MQTT topic filter: '#' only as
// the whole last level, '+' only as a whole level.
func validFilter(f string) bool {
	if f == "" || strings.IndexByte(f, 0) >= 0 {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if l == "#" && i != len(levels)-1 {
			return false
		}
		if l != "#" && l != "+" && strings.ContainsAny(l, "+#") {
			return false
		}
	}
	return true
}

// matchFilter reports whether topic matches filter (MQTT 3.1.1 §4.7). Topics
// starting with '$' are not matched by a leading wildcard.
func matchFilter(filter, topic string) bool {
	if filter == topic {
		return true
	}
	if topic != "" && topic[0] == '$' && filter != "" && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		if !fmore || !tmore {
			// "a/#" also matches "a".
			return fmore == tmore || (!tmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}

// template is a compiled stream-name template.
type template struct {
	parts []tmplPart
	// fixed is true when the template has no placeholder.
	fixed bool
	// perTopic is true when every topic gives its own stream ({topic}).
	perTopic bool
}

type tmplPart struct {
	lit   string
	level int // 0: lit; -1: {topic}; n: level n (1-based)
}

func parseTemplate(s string) (template, error) {
	var t template
	if s == "" {
		return t, errors.New("template is empty")
	}
	rest := s
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if cl := strings.IndexByte(rest, '}'); cl >= 0 && (open < 0 || cl < open) {
			return t, fmt.Errorf("template %q: '}' without '{'", s)
		}
		if open < 0 {
			t.parts = append(t.parts, tmplPart{lit: rest})
			break
		}
		if open > 0 {
			t.parts = append(t.parts, tmplPart{lit: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return t, fmt.Errorf("template %q: '{' without '}'", s)
		}
		name := rest[open+1 : open+end]
		switch n, err := strconv.Atoi(name); {
		case name == "topic":
			t.parts = append(t.parts, tmplPart{level: -1})
			t.perTopic = true
		case err == nil && n >= 1 && n <= 1000:
			t.parts = append(t.parts, tmplPart{level: n})
		default:
			return t, fmt.Errorf("template %q: unknown placeholder {%s} (use {topic} or {1}, {2}, ...)", s, name)
		}
		rest = rest[open+end+1:]
	}
	t.fixed = true
	for _, p := range t.parts {
		if p.level != 0 {
			t.fixed = false
		}
	}
	return t, nil
}

// expand returns the stream name for topic. A level beyond the topic's depth
// expands to the empty string. If the result is empty the topic itself is
// used, so that a stream always has a name.
func (t template) expand(topic string) string {
	if len(t.parts) == 1 && t.parts[0].level == -1 {
		return topic
	}
	var b strings.Builder
	var levels []string
	for _, p := range t.parts {
		switch {
		case p.level == 0:
			b.WriteString(p.lit)
		case p.level == -1:
			b.WriteString(topic)
		default:
			if levels == nil {
				levels = strings.Split(topic, "/")
			}
			if p.level <= len(levels) {
				b.WriteString(levels[p.level-1])
			}
		}
	}
	if b.Len() == 0 {
		return topic
	}
	return b.String()
}
