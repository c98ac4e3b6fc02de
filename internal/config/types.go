package config

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/episoded/episoded/internal/redact"
)

// Secret is a credential. It is read from the YAML value (with ${ENV}
// expansion) or from the matching *_file key, and it never prints: String,
// MarshalYAML and MarshalJSON all give "<redacted>".
type Secret struct {
	value    string
	fromFile bool
}

// Redacted is what a secret prints as.
const Redacted = redact.Mask

// NewSecret returns a secret holding v.
func NewSecret(v string) Secret { return Secret{value: v} }

// Value returns the secret itself. Pass it only to the library that needs it.
func (s Secret) Value() string { return s.value }

// IsSet reports whether the secret has a value.
func (s Secret) IsSet() bool { return s.value != "" }

// String implements fmt.Stringer without revealing the value.
func (s Secret) String() string {
	if s.value == "" {
		return ""
	}
	return Redacted
}

// GoString keeps %#v from revealing the value.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// IsZero lets `omitempty` drop secrets that are unset or came from a file
// (the *_file key is printed instead), so --print output parses again.
func (s Secret) IsZero() bool { return s.value == "" || s.fromFile }

// MarshalYAML implements yaml.Marshaler.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.String())), nil }

// UnmarshalYAML implements yaml.Unmarshaler. ${ENV} expansion has already
// been applied to the node.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeErr(n, "a secret must be a string")
	}
	s.value = n.Value
	return nil
}

// ByteSize is a size in bytes. YAML accepts a plain integer or a number with
// a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers
// of 1024). A trailing "/s" is allowed, for rates.
type ByteSize int64

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

// ParseByteSize parses a size such as "16MiB", "500MB", "5MB/s" or "1024".
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(t, "/s")
	i := strings.IndexFunc(t, func(r rune) bool { return !unicode.IsDigit(r) && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	mult, ok := sizeUnits[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("bad size %q (use e.g. 512KiB, 16MiB, 5MB, 2GiB)", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("bad size %q (use e.g. 512KiB, 16MiB, 5MB, 2GiB)", s)
	}
	return ByteSize(f * float64(mult)), nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeErr(n, "a size must be a scalar")
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return typeErr(n, err.Error())
	}
	*b = v
	return nil
}

// MarshalYAML prints the size with the largest binary unit that divides it.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

// String formats the size, for example "16MiB".
func (b ByteSize) String() string {
	for _, u := range []struct {
		s string
		n int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.n == 0 {
			return strconv.FormatInt(int64(b)/u.n, 10) + u.s
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

func typeErr(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
}
