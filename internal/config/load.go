package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/episoded/episoded/internal/redact"
)

// Error lists every problem found in a config file.
type Error struct {
	File     string
	Problems []string
}

func (e *Error) Error() string {
	if len(e.Problems) == 1 {
		return fmt.Sprintf("config %s: %s", e.File, e.Problems[0])
	}
	return fmt.Sprintf("config %s: %d problems:\n  %s", e.File, len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// Env looks up an environment variable, as os.LookupEnv does.
type Env func(name string) (string, bool)

// Load reads, parses, resolves secrets in, defaults and validates the
// config file at path, using the process environment.
func Load(path string) (*Config, error) {
	return LoadSecrets(path, SecretsAll)
}

// LoadSecrets is Load reading only the secret files of the kinds in want:
// a command resolves only the secrets it uses, so the upload timer runs
// with only the S3 credentials present. Secrets of other kinds stay unset
// (their *_file keys are still checked for form, not read).
func LoadSecrets(path string, want SecretKind) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return ParseSecrets(path, data, os.LookupEnv, want)
}

// Parse does what Load does on data already read; path names the file in
// errors and anchors relative *_file paths when $CREDENTIALS_DIRECTORY is
// unset.
func Parse(path string, data []byte, env Env) (*Config, error) {
	return ParseSecrets(path, data, env, SecretsAll)
}

// ParseSecrets is Parse resolving only the secret files of the kinds in want.
func ParseSecrets(path string, data []byte, env Env, want SecretKind) (*Config, error) {
	p := &parser{env: env, want: want}
	cfg := p.parse(data, filepath.Dir(path))
	if len(p.problems) > 0 {
		return nil, &Error{File: path, Problems: p.scrub(p.problems)}
	}
	return cfg, nil
}

type parser struct {
	env      Env
	want     SecretKind // which secret files to read
	problems []string
	// secrets are values taken from the environment or files; they are
	// scrubbed from every problem message.
	secrets []string
}

func (p *parser) addf(format string, args ...any) {
	p.problems = append(p.problems, fmt.Sprintf(format, args...))
}

func (p *parser) parse(data []byte, baseDir string) *Config {
	if len(bytes.TrimSpace(data)) == 0 {
		p.addf("the file is empty")
		return nil
	}
	// Pass 1: strict decoding of the raw text, for unknown keys with their
	// lines. Value errors are left to pass 2, which sees expanded values.
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var probe Config
	if err := dec.Decode(&probe); err != nil {
		if errors.Is(err, io.EOF) {
			p.addf("the file is empty")
			return nil
		}
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			p.addf("%s", strings.TrimPrefix(err.Error(), "yaml: "))
			return nil
		}
		for _, msg := range te.Errors {
			if m := unknownKeyRE.FindStringSubmatch(msg); m != nil {
				p.addf("line %s: unknown key %q", m[1], m[2])
			}
		}
	}

	// Pass 2: expand ${ENV} in the node tree and decode it.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		p.addf("%s", strings.TrimPrefix(err.Error(), "yaml: "))
		return nil
	}
	p.expand(&root)
	cfg := &Config{}
	if err := root.Decode(cfg); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			p.addf("%s", err)
			return nil
		}
		for _, msg := range te.Errors {
			if !unknownKeyRE.MatchString(msg) {
				p.addf("%s", friendlyTypeError(msg))
			}
		}
	}
	p.resolveSecrets(cfg, baseDir)
	cfg.EnsureDefaults()
	p.problems = append(p.problems, cfg.problems()...)
	return cfg
}

var (
	unknownKeyRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type`)
	envRE        = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
)

// friendlyTypeError rewrites yaml's messages, which name Go types, into
// ones that name what the user wrote.
func friendlyTypeError(msg string) string {
	r := strings.NewReplacer(
		"into time.Duration", "as a duration (use e.g. 500ms, 10s, 5m, 2h)",
		"into int64", "as a whole number",
		"into int", "as a whole number",
		"into float64", "as a number",
		"into bool", "as true or false",
		"into string", "as a string",
		"cannot unmarshal", "cannot read",
	)
	msg = r.Replace(msg)
	return regexp.MustCompile(` into \[\][\w.]+`).ReplaceAllString(msg, " as a list")
}

// expand replaces ${NAME} in every scalar with the environment variable.
func (p *parser) expand(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "${") {
		n.Value = envRE.ReplaceAllStringFunc(n.Value, func(m string) string {
			name := m[2 : len(m)-1]
			v, ok := p.env(name)
			if !ok {
				p.addf("line %d: environment variable %s is not set", n.Line, name)
				return ""
			}
			p.secrets = append(p.secrets, v)
			return v
		})
		// A value that came from the environment is always a string, even
		// if it looks like a number to YAML.
		n.Tag = ""
	}
	for _, c := range n.Content {
		p.expand(c)
	}
}

// secretRef ties a secret to its *_file key.
type secretRef struct {
	where  string // e.g. "brokers[0].password"
	kind   SecretKind
	secret *Secret
	file   string
}

func (c *Config) secretRefs() []secretRef {
	refs := []secretRef{{"api.token", SecretAPI, &c.API.Token, c.API.TokenFile}, {"api.read_token", SecretAPI, &c.API.ReadToken, c.API.ReadTokenFile}}
	for i := range c.Brokers {
		b := &c.Brokers[i]
		refs = append(refs, secretRef{fmt.Sprintf("brokers[%s].password", b.ID), SecretDevices, &b.Password, b.PasswordFile})
	}
	for i := range c.Devices {
		d := &c.Devices[i]
		refs = append(refs, secretRef{fmt.Sprintf("devices[%s].password", d.ID), SecretDevices, &d.Password, d.PasswordFile})
	}
	t := &c.Sync.Target
	refs = append(refs,
		secretRef{"sync.target.access_key", SecretSync, &t.AccessKey, t.AccessKeyFile},
		secretRef{"sync.target.secret_key", SecretSync, &t.SecretKey, t.SecretKeyFile})
	return refs
}

// resolveSecrets reads every *_file secret.
func (p *parser) resolveSecrets(c *Config, baseDir string) {
	for _, r := range c.secretRefs() {
		if r.secret.IsSet() {
			p.secrets = append(p.secrets, r.secret.value)
		}
		if r.file == "" {
			continue
		}
		if r.secret.IsSet() {
			p.addf("%s: set %s or %s_file, not both", r.where, lastPart(r.where), lastPart(r.where))
			continue
		}
		if p.want&r.kind == 0 {
			continue
		}
		path := p.credentialPath(r.file, baseDir)
		data, err := os.ReadFile(path)
		if err != nil {
			// The path is not secret; the error from os names only the path.
			p.addf("%s_file: cannot read secret file: %v", r.where, err)
			continue
		}
		v := strings.TrimRight(string(data), "\r\n")
		if v == "" {
			p.addf("%s_file: secret file %s is empty", r.where, path)
			continue
		}
		*r.secret = Secret{value: v, fromFile: true}
		p.secrets = append(p.secrets, v)
	}
}

// credentialPath resolves a relative *_file path in $CREDENTIALS_DIRECTORY
// if set, else next to the config file.
func (p *parser) credentialPath(file, baseDir string) string {
	if filepath.IsAbs(file) {
		return file
	}
	if dir, ok := p.env("CREDENTIALS_DIRECTORY"); ok && dir != "" {
		return filepath.Join(dir, file)
	}
	return filepath.Join(baseDir, file)
}

// scrub removes secret values and URL credentials from messages.
func (p *parser) scrub(msgs []string) []string {
	sc := redact.NewScrubber(p.secrets...)
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = sc.Text(m)
	}
	return out
}

// Secrets returns every credential the config holds: the secret values and
// every URL with credentials in it, for a redact.Scrubber that keeps them
// out of logs, errors and status.
func (c *Config) Secrets() []string {
	var out []string
	for _, r := range c.secretRefs() {
		if r.secret.IsSet() {
			out = append(out, r.secret.Value())
		}
	}
	urls := []string{c.Sync.Target.Endpoint}
	for _, b := range c.Brokers {
		urls = append(urls, b.URL)
	}
	for _, d := range c.Devices {
		urls = append(urls, d.URL)
	}
	for _, u := range urls {
		if strings.Contains(u, "@") {
			out = append(out, u)
		}
	}
	return out
}

func lastPart(s string) string {
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// Print writes the effective config as YAML, with secrets redacted, and
// with any credentials in a URL (camera, broker, S3 endpoint) replaced by
// redact.Mask. Its output parses again with Parse.
func (c *Config) Print() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c.redactedURLs()); err != nil {
		return nil, fmt.Errorf("print config: %w", err)
	}
	return buf.Bytes(), enc.Close()
}

// redactedURLs returns a copy of c whose every URL has its credentials
// replaced; c itself is left alone.
func (c *Config) redactedURLs() *Config {
	out := *c
	out.Brokers = slices.Clone(c.Brokers)
	for i := range out.Brokers {
		out.Brokers[i].URL = redact.URL(out.Brokers[i].URL)
	}
	out.Devices = slices.Clone(c.Devices)
	for i := range out.Devices {
		out.Devices[i].URL = redact.URL(out.Devices[i].URL)
	}
	out.Sync.Target.Endpoint = redact.URL(c.Sync.Target.Endpoint)
	return &out
}
