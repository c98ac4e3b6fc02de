package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/episoded/episoded/internal/config"
)

// client talks to a running daemon's HTTP API. Its address and token come
// from --api and --token-file, else $EPISODED_API and $EPISODED_TOKEN, else
// the config file given with --config, else http://127.0.0.1:7480.
type client struct {
	base  string
	token string
	http  *http.Client
}

type clientFlags struct {
	api, tokenFile, config *string
}

func addClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		api:       fs.String("api", "", "daemon API base URL (default $EPISODED_API or http://127.0.0.1:7480)"),
		tokenFile: fs.String("token-file", "", "file holding the API bearer token (default $EPISODED_TOKEN)"),
		config:    fs.String("config", "", "read the API address and token from this daemon config"),
	}
}

func (f clientFlags) client() (*client, error) { return f.clientToken(false) }

// clientToken is client; with optionalToken, an API token file that cannot
// be read (the upload unit loads only the S3 credentials) leaves the token
// empty instead of failing: `sync run` then uploads from the store itself
// when no daemon answers.
func (f clientFlags) clientToken(optionalToken bool) (*client, error) {
	c := &client{base: "http://127.0.0.1:7480", http: &http.Client{}}
	if *f.config != "" {
		// The API token is the only secret a client uses.
		cfg, err := config.LoadSecrets(*f.config, config.SecretAPI)
		if err != nil && optionalToken {
			cfg, err = config.LoadSecrets(*f.config, config.SecretsNone)
		}
		if err != nil {
			return nil, err
		}
		c.base = "http://" + cfg.API.Listen
		c.token = cfg.API.Token.Value()
		if t := cfg.API.TLS; t.Enabled() {
			// Trust the daemon's own certificate (self-signed or from a
			// private CA) besides the system roots. With mutual TLS the
			// CLI has no client certificate: use curl with --cert.
			c.base = "https://" + cfg.API.Listen
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if pem, err := os.ReadFile(t.CertFile); err == nil {
				pool.AppendCertsFromPEM(pem)
			}
			c.http.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
		}
	}
	if v := os.Getenv("EPISODED_API"); v != "" {
		c.base = v
	}
	if *f.api != "" {
		c.base = *f.api
	}
	if v := os.Getenv("EPISODED_TOKEN"); v != "" {
		c.token = v
	}
	if *f.tokenFile != "" {
		b, err := os.ReadFile(*f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read token file: %w", err)
		}
		c.token = strings.TrimSpace(string(b))
	}
	if !strings.Contains(c.base, "://") {
		c.base = "http://" + c.base
	}
	c.base = strings.TrimRight(c.base, "/")
	return c, nil
}

// errUnreachable means no daemon answered.
var errUnreachable = errors.New("daemon not reachable")

// do sends a request and returns the response; a status of 400 or more
// becomes an error carrying the API's message.
func (c *client) do(method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %v", errUnreachable, c.base, err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, msg)
	}
	return resp, nil
}

// json sends a request and decodes the JSON answer into out.
func (c *client) json(method, path string, body, out any) error {
	resp, err := c.do(method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func fmtTime(ns int64) string {
	if ns == 0 {
		return "-"
	}
	return time.Unix(0, ns).Local().Format("2006-01-02 15:04:05")
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// decodeBody decodes a JSON answer and closes the body.
func decodeBody(resp *http.Response, out any) error {
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("bad answer: %w", err)
	}
	return nil
}

// addOutputFlag defines -o, the output format: the one meaning of -o in
// every command (docs: README "CLI").
func addOutputFlag(fs *flag.FlagSet, def string) *string {
	return fs.String("o", def, "output format: "+def+" or json")
}

// checkOutput reports whether format is one of valid, printing an error
// that lists the valid ones if not.
func checkOutput(format string, stderr io.Writer, valid ...string) bool {
	if err := oneOf("-o", format, valid...); err != nil {
		fmt.Fprintf(stderr, "episoded: %v\n", err)
		return false
	}
	return true
}

// oneOf returns an error naming what and listing the valid values when v
// is not one of them.
func oneOf(what, v string, valid ...string) error {
	for _, ok := range valid {
		if v == ok {
			return nil
		}
	}
	return fmt.Errorf("%s: unknown value %q; valid: %s", what, v, strings.Join(valid, ", "))
}
