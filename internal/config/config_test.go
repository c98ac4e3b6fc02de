package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/devices/mqtt"
	"github.com/episoded/episoded/devices/rtsp"
	"github.com/episoded/episoded/internal/config/configtest"
	"github.com/episoded/episoded/internal/lifecycle"
	"github.com/episoded/episoded/storage"
	"github.com/episoded/episoded/sync/upload"
)

// noEnv is an environment with nothing in it but what the test names.
func env(vars map[string]string) Env {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestBadConfigs(t *testing.T) {
	configtest.EachBad(t, "testdata", 10, func(t *testing.T, f string, data []byte, want string) {
		_, err := Parse(f, data, env(nil))
		if err == nil {
			t.Fatalf("Parse accepted a bad config; want error containing %q", want)
		}
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error does not mention %q:\n%v", want, err)
		}
	})
}

func TestAllProblemsAtOnce(t *testing.T) {
	data := []byte(`
gateway: {id: "bad id!", site: s}
storage: {sync_interval: 1h, colour: blue}
devices:
  - {id: cam, type: rtsp, url: "http://x/y", transport: carrier-pigeon}
  - {id: cam, type: telepathy}
cells:
  - {id: c1, devices: [ghost]}
`)
	_, err := Parse("x.yaml", data, env(nil))
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{
		`line 3: unknown key "colour"`,
		`gateway: id "bad id!" may use only`,
		`storage.sync_interval: must be between 0 and 10s`,
		`devices[cam].url: "http://x/y" is not an rtsp:// or rtsps:// URL`,
		`devices[cam].transport: "carrier-pigeon" is not one of tcp, udp, auto`,
		`devices[1]: duplicate device id "cam"`,
		`devices[cam].type: "telepathy" is not one of rtsp, mqtt, whip`,
		`cells[c1].devices: device "ghost" is not defined under devices`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing problem %q in:\n%v", want, err)
		}
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	if err := os.Mkdir(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	const filePass, envPass, tokenVal = "file-pass-9f8e7d", "env-pass-1a2b3c", "tok-5551234"
	if err := os.WriteFile(filepath.Join(creds, "cam-password"), []byte(filePass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := []byte(`
gateway: {id: gw1, site: plant}
api: {token: "${TOKEN}"}
brokers:
  - {id: b1, url: "tcp://127.0.0.1:1883", username: u, password: "${MQTT_PASS}"}
devices:
  - {id: cam, type: rtsp, url: "rtsp://10.0.0.1/s", username: admin, password_file: cam-password}
storage: {quota: "${QUOTA}"}
`)
	e := env(map[string]string{"TOKEN": tokenVal, "MQTT_PASS": envPass, "CREDENTIALS_DIRECTORY": creds, "QUOTA": "2GiB"})
	cfg, err := Parse(filepath.Join(dir, "c.yaml"), data, e)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Devices[0].Password.Value(); got != filePass {
		t.Fatalf("file secret = %q", got)
	}
	if got := cfg.Brokers[0].Password.Value(); got != envPass {
		t.Fatalf("env secret = %q", got)
	}
	if cfg.Storage.Quota != 2<<30 {
		t.Fatalf("quota from env = %d", cfg.Storage.Quota)
	}
	out, err := cfg.Print()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{filePass, envPass, tokenVal} {
		if strings.Contains(string(out), s) {
			t.Fatalf("--print output leaks a secret:\n%s", out)
		}
	}
	if !strings.Contains(string(out), "password: "+Redacted) || !strings.Contains(string(out), "password_file: cam-password") {
		t.Fatalf("--print output should show redacted inline secrets and keep *_file keys:\n%s", out)
	}
	for _, s := range []string{cfg.Brokers[0].Password.String(), cfg.API.Token.GoString()} {
		if strings.Contains(s, envPass) || strings.Contains(s, tokenVal) {
			t.Fatalf("String/GoString leaks: %s", s)
		}
	}

	// The printed config parses again to the same effective config, with
	// inline secrets replaced by the redaction marker.
	again, err := Parse(filepath.Join(dir, "c.yaml"), out, e)
	if err != nil {
		t.Fatalf("printed config does not parse: %v\n%s", err, out)
	}
	want := *cfg
	want.API.Token = NewSecret(Redacted)
	want.Brokers = append([]Broker(nil), cfg.Brokers...)
	want.Brokers[0].Password = NewSecret(Redacted)
	if !reflect.DeepEqual(&want, again) {
		t.Fatalf("round trip differs:\nfirst  %+v\nsecond %+v", want, *again)
	}
}

func TestSecretScrubbedFromErrors(t *testing.T) {
	const pass = "s3cr3t-value-77"
	data := []byte(`
gateway: {id: gw1, site: plant}
storage: {sync_interval: "${PASS}"}
`)
	_, err := Parse("c.yaml", data, env(map[string]string{"PASS": pass}))
	if err == nil {
		t.Fatal("want error")
	}
	if strings.Contains(err.Error(), pass) {
		t.Fatalf("error leaks secret: %v", err)
	}
	if !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("error should still name the line: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte("gateway: {id: gw1, site: s}\n"+`
brokers: [{id: b, url: "tcp://127.0.0.1:1883"}]
devices:
  - {id: cam, type: rtsp, url: "rtsp://10.0.0.1/s"}
  - {id: arm, type: mqtt, broker: b, topics: ["arm/#"], time_field: t}
cells: [{id: c1, devices: [cam, arm]}]
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.API.Listen != "127.0.0.1:7480" || cfg.ShutdownTimeout != 10*time.Second || cfg.Storage.SyncInterval != 100*time.Millisecond {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
	if cfg.Devices[0].Stream != "c1/cam" || cfg.Devices[0].Transport != "tcp" || cfg.Devices[0].Clock != "rtcp" {
		t.Fatalf("rtsp defaults: %+v", cfg.Devices[0])
	}
	if cfg.Devices[1].Clock != "payload" || cfg.Devices[1].TimeUnit != "ns" || cfg.Devices[1].MaxPayload != 16<<20 {
		t.Fatalf("mqtt defaults: %+v", cfg.Devices[1])
	}
	if cfg.Brokers[0].ClientID != "episoded-gw1-b" {
		t.Fatalf("client id default: %q", cfg.Brokers[0].ClientID)
	}
}

// TestDefaultsDocumented keeps docs/CONFIG.md, the reference for users, in
// step with the defaults: the components' exported constants (where each
// default is defined) and the effective config EnsureDefaults makes from
// them.
func TestDefaultsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	var cfg Config
	cfg.EnsureDefaults()
	size := func(n int64) string { return ByteSize(n).String() }
	for _, v := range []string{
		cfg.Log.Level, cfg.Log.Format, cfg.ShutdownTimeout.String(), cfg.API.Listen, cfg.Storage.Dir,
		// storage
		storage.DefaultSyncInterval.String(), DefaultMinFree.String(), storage.DefaultFullPolicy,
		storage.DefaultRetention.String(), storage.DefaultTimelineRetention.String(), storage.MaxSyncInterval.String(),
		// brokers and devices
		mqtt.DefaultKeepAlive.String(), size(mqtt.DefaultMaxPendingBytes), devices.DefaultBackoffMin.String(), devices.DefaultBackoffMax.String(),
		rtsp.DefaultTransport, rtsp.DefaultClock, rtsp.DefaultReadTimeout.String(),
		mqtt.DefaultStream, mqtt.DefaultFormat, mqtt.DefaultTimeUnit, size(mqtt.DefaultMaxPayload), size(mqtt.MaxMaxPayload),
		strconv.Itoa(mqtt.DefaultMaxStreams), strconv.Itoa(mqtt.MaxMaxStreams),
		// cells
		strconv.FormatFloat(lifecycle.DefaultGapFactor, 'g', -1, 64),
		strconv.FormatFloat(lifecycle.DefaultMinCoverage, 'g', -1, 64), lifecycle.DefaultMaxAlignmentBound.String(),
		// sync
		strconv.Itoa(upload.DefaultMaxAttempts), size(upload.DefaultPartSize), upload.DefaultRetryMin.String(), upload.DefaultRetryMax.String(),
		upload.DefaultTimezone, upload.DefaultPriorityLabel, DefaultSyncMode, strconv.Itoa(upload.DefaultConcurrency),
	} {
		if !strings.Contains(string(doc), "`"+v+"`") {
			t.Errorf("docs/CONFIG.md does not mention the default `%s`", v)
		}
	}
	// The effective config is made of those constants.
	d := Config{Gateway: Gateway{ID: "g"}, Cells: []Cell{{ID: "c"}}, Devices: []Device{{ID: "c", Type: DeviceRTSP}, {ID: "m", Type: DeviceMQTT, TimeField: "t"}}, Brokers: []Broker{{ID: "b"}}}
	d.EnsureDefaults()
	if d.Storage.SyncInterval != storage.DefaultSyncInterval || d.Storage.FullPolicy != storage.DefaultFullPolicy ||
		d.Brokers[0].KeepAlive != mqtt.DefaultKeepAlive || d.Brokers[0].Backoff.Max != devices.DefaultBackoffMax ||
		d.Devices[0].ReadTimeout != rtsp.DefaultReadTimeout || d.Devices[0].Transport != rtsp.DefaultTransport ||
		d.Devices[1].TimeUnit != mqtt.DefaultTimeUnit || d.Devices[1].Clock != mqtt.ClockPayload || d.Devices[1].MaxStreams != mqtt.DefaultMaxStreams ||
		d.Cells[0].GapFactor != lifecycle.DefaultGapFactor || d.Cells[0].Quality.MinCoverage != lifecycle.DefaultMinCoverage ||
		d.Sync.Concurrency != upload.DefaultConcurrency || d.Sync.Retry.Min != upload.DefaultRetryMin || d.Sync.Timezone != upload.DefaultTimezone {
		t.Errorf("EnsureDefaults does not give the components' defaults: %+v", d)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"1024": 1024, "16MiB": 16 << 20, "5MB/s": 5e6, "1.5GiB": 3 << 29, "200 kb": 200e3} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MB", "-5MB", "12 parsecs"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", in)
		}
	}
}

// TestOpenListen: a non-loopback listen address without a token is an
// error unless insecure_open says so; loopback needs nothing.
func TestOpenListen(t *testing.T) {
	for _, c := range []struct {
		api string
		ok  bool
	}{
		{`{listen: "127.0.0.1:7480"}`, true},
		{`{listen: "[::1]:7480"}`, true},
		{`{listen: "localhost:7480"}`, true},
		{`{listen: ":7480"}`, false},
		{`{listen: "10.0.0.7:7480"}`, false},
		{`{listen: "gateway.lan:7480"}`, false},
		{`{listen: "0.0.0.0:7480", insecure_open: true}`, true},
		{`{listen: "0.0.0.0:7480", token: "admin-token-1"}`, true},
	} {
		_, err := Parse("t.yaml", []byte("gateway: {id: gw1, site: s}\napi: "+c.api+"\n"), env(nil))
		if (err == nil) != c.ok {
			t.Errorf("api %s: err %v, want ok=%v", c.api, err, c.ok)
		}
		if err != nil && strings.Count(err.Error(), "\n") > 0 {
			t.Errorf("api %s: the reason is not one line: %v", c.api, err)
		}
	}
}

// TestPrintRedactsURLs: --print masks credentials in every URL.
func TestPrintRedactsURLs(t *testing.T) {
	cfg, err := Parse("t.yaml", []byte(`gateway: {id: gw1, site: s}
devices:
  - {id: cam1, type: rtsp, url: "rtsp://admin:cam-pass-777@10.0.0.5:554/s1"}
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	out, err := cfg.Print()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "cam-pass-777") || strings.Contains(string(out), "admin:") {
		t.Fatalf("--print shows URL credentials:\n%s", out)
	}
	if cfg.Devices[0].URL != "rtsp://admin:cam-pass-777@10.0.0.5:554/s1" {
		t.Fatalf("Print changed the config itself: %s", cfg.Devices[0].URL)
	}
	if _, err := Parse("again.yaml", out, env(nil)); err != nil {
		t.Fatalf("--print output does not parse again: %v", err)
	}
}
