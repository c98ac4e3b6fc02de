package api

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
)

// TLSFiles names the server's certificate and key (PEM) and, for mutual
// TLS, the CA bundle that client certificates must chain to.
type TLSFiles struct {
	CertFile, KeyFile string
	// ClientCAFile, when set, makes a client certificate signed by one of
	// its CAs mandatory on every connection.
	ClientCAFile string
}

// certs serves the TLS configuration from files that may be replaced while
// the daemon runs. Every handshake compares the files' size, mtime and inode
// with those last loaded (a few stat calls) and reloads when they differ;
// Reload forces it (SIGHUP). A pair that does not load (say, the key
// written but not yet the certificate) keeps the previous one serving and
// is tried again on the next handshake.
type certs struct {
	files TLSFiles
	log   *slog.Logger
	cur   atomic.Pointer[certState]
	// tried is the stamp of the files last attempted, so a broken pair
	// is logged once, not on every handshake.
	tried atomic.Pointer[string]
}

type certState struct {
	stamp string
	cfg   *tls.Config
}

func newCerts(f TLSFiles, log *slog.Logger) (*certs, error) {
	c := &certs{files: f, log: log}
	st, err := c.load()
	if err != nil {
		return nil, err
	}
	c.cur.Store(st)
	return c, nil
}

// stamp fingerprints the files without reading them.
func (c *certs) stamp() string {
	var b strings.Builder
	for _, p := range []string{c.files.CertFile, c.files.KeyFile, c.files.ClientCAFile} {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			fmt.Fprintf(&b, "%s:missing;", p)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d:%v;", p, fi.Size(), fi.ModTime().UnixNano(), inode(fi))
	}
	return b.String()
}

func (c *certs) load() (*certState, error) {
	stamp := c.stamp()
	cert, err := tls.LoadX509KeyPair(c.files.CertFile, c.files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("api.tls: load certificate %s and key %s: %w", c.files.CertFile, c.files.KeyFile, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
	}
	if c.files.ClientCAFile != "" {
		pem, err := os.ReadFile(c.files.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("api.tls: read client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("api.tls: client_ca_file %s holds no PEM certificate", c.files.ClientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return &certState{stamp: stamp, cfg: cfg}, nil
}

// Reload loads the files again now; on error the previous certificate
// keeps serving.
func (c *certs) Reload() error {
	st, err := c.load()
	if err != nil {
		return err
	}
	c.cur.Store(st)
	c.log.Info("tls certificate loaded", "cert_file", c.files.CertFile, "not_after", notAfter(st.cfg))
	return nil
}

// config is tls.Config.GetConfigForClient.
func (c *certs) config(*tls.ClientHelloInfo) (*tls.Config, error) {
	cur := c.cur.Load()
	if s := c.stamp(); s != cur.stamp {
		if last := c.tried.Load(); last == nil || *last != s {
			c.tried.Store(&s)
			if err := c.Reload(); err != nil {
				c.log.Warn("tls files changed but do not load; still serving the previous certificate", "err", err)
			}
		}
	}
	return c.cur.Load().cfg, nil
}

func notAfter(cfg *tls.Config) string {
	if len(cfg.Certificates) == 0 || cfg.Certificates[0].Leaf == nil {
		return ""
	}
	return cfg.Certificates[0].Leaf.NotAfter.UTC().Format("2006-01-02T15:04:05Z")
}

// errNoTLS is returned by Server.ReloadTLS when the server has no TLS.
var errNoTLS = errors.New("api: TLS is not configured")
