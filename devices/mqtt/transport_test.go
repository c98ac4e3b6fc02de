package mqtt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	mochipk "github.com/mochi-mqtt/server/v2/packets"

	"github.com/episoded/episoded/devices"
)

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA, as PEM files in dir.
type testPKI struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newTestPKI(t *testing.T, dir string) testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "episoded test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ip bool) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		}
		if ip {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		return write(cn+".crt", "CERTIFICATE", der), write(cn+".key", "EC PRIVATE KEY", kder)
	}
	p := testPKI{ca: write("ca.crt", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf(2, "server", x509.ExtKeyUsageServerAuth, true)
	p.clientCert, p.clientKey = leaf(3, "client", x509.ExtKeyUsageClientAuth, false)
	return p
}

// TestTLS: ssl:// to mosquitto with a private CA and a required client
// certificate records; without the client certificate, or without the CA,
// the connection fails and says so in the status.
func TestTLS(t *testing.T) {
	needBin(t, mosquittoBin)
	pki := newTestPKI(t, t.TempDir())
	port := freePort(t)
	m := startMosquitto(t, mosqConfig{inflight: 20, extra: fmt.Sprintf(
		"listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
		port, pki.ca, pki.serverCert, pki.serverKey)})
	url := fmt.Sprintf("ssl://127.0.0.1:%d", port)

	b, _ := newTestClient(t, url, "episoded-tls", func(o *ClientOptions) {
		o.TLS = TLSOptions{CAFile: pki.ca, CertFile: pki.clientCert, KeyFile: pki.clientKey}
	})
	if err := b.AddDevice(DeviceOptions{Device: "robot", Topics: []string{"tls/+"}, TimeField: "header.stamp"}); err != nil {
		t.Fatal(err)
	}
	sink := newMemSink(50 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sink.run(ctx)
	runClient(t, b, sink)
	waitFor(t, 10*time.Second, "TLS session", func() bool { return b.Stats().Connected })
	lines := []string{telemLine("tls/a", 0, 1732650000000000000), telemLine("tls/a", 1, 1732650000000000001)}
	if err := m.pubLines("tls/a", lines); err != nil { // plain listener of the same broker
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "2 samples over TLS", func() bool { return sink.count() == 2 })

	for name, tlsOpts := range map[string]TLSOptions{
		"no client certificate": {CAFile: pki.ca},
		"unknown CA":            {CertFile: pki.clientCert, KeyFile: pki.clientKey},
	} {
		t.Run(name, func(t *testing.T) {
			bad, _ := newTestClient(t, url, "episoded-tls-bad", func(o *ClientOptions) {
				o.ID, o.TLS = "bad", tlsOpts
				o.Backoff = devices.BackoffPolicy{Min: time.Hour, Max: time.Hour}
			})
			runClient(t, bad, newMemSink(time.Second))
			waitFor(t, 15*time.Second, "a failed attempt", func() bool { return bad.Status().State == devices.Backoff })
			if st := bad.Status(); !strings.Contains(st.LastError, "connect") {
				t.Fatalf("status %+v", st)
			}
		})
	}
}

// TestWebsocket: ws:// to mochi-mqtt's websocket listener. The Debian
// mosquitto here is built without websockets, so this uses mochi, a real
// MQTT broker (the one the demo embeds), in-process.
func TestWebsocket(t *testing.T) {
	port := freePort(t)
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: fmt.Sprintf("127.0.0.1:%d", port)})); err != nil {
		t.Fatal(err)
	}
	tcpPort := freePort(t)
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: fmt.Sprintf("127.0.0.1:%d", tcpPort)})); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	defer srv.Close()

	b, _ := newTestClient(t, fmt.Sprintf("ws://127.0.0.1:%d/mqtt", port), "episoded-ws", nil)
	if err := b.AddDevice(DeviceOptions{Device: "robot", Topics: []string{"ws/#"}, Format: FormatRaw}); err != nil {
		t.Fatal(err)
	}
	sink := newMemSink(50 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sink.run(ctx)
	runClient(t, b, sink)
	waitFor(t, 10*time.Second, "websocket session", func() bool { return b.Stats().Connected })
	pub, err := newTestPublisher(fmt.Sprintf("127.0.0.1:%d", tcpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.close()
	for i := range 50 {
		if err := pub.publish("ws/x", []byte(fmt.Sprintf("raw-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "50 samples over websocket", func() bool { return sink.count() == 50 })
	waitFor(t, 5*time.Second, "acks", func() bool { return b.Stats().AcksPending == 0 })
	samples, _ := sink.snapshot()
	for i, s := range samples {
		if string(s.Payload) != fmt.Sprintf("raw-%d", i) {
			t.Fatalf("sample %d = %q", i, s.Payload)
		}
	}
}

// allowAll lets every client connect and use every topic (mochi denies all
// by default; its own auth hook package needs a module this repo does not
// pin).
type allowAll struct{ mochi.HookBase }

func (h *allowAll) ID() string { return "allow-all" }
func (h *allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}
func (h *allowAll) OnConnectAuthenticate(*mochi.Client, mochipk.Packet) bool { return true }
func (h *allowAll) OnACLCheck(*mochi.Client, string, bool) bool              { return true }
