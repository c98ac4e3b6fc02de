package upload_test

import (
	"context"
	"encoding/pem"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/sync/internal/synctest"
	"github.com/episoded/episoded/sync/upload"
)

// TestS3OverTLS puts a TLS-terminating reverse proxy (net/http/httptest's
// TLS server) in front of versitygw, which serves plain HTTP here: the
// uploader must trust it through ca_file, refuse it without, and take
// credentials from the environment when none are configured.
func TestS3OverTLS(t *testing.T) {
	s := synctest.StartS3(t)
	cl := makeBucket(t, s, bucket)
	backend, _ := url.Parse("http://" + s.Endpoint)
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(backend)
		r.Out.Host = r.In.Host
	}}
	srv := httptest.NewTLSServer(rp)
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	st := synctest.OpenStore(t)
	fx := synctest.Build(t, st, synctest.Spec{ID: "0193a1b2-0000-7000-8000-0000000000f2", Telemetry: true, RawBytes: 12 << 20})

	endpoint := "https://" + srv.Listener.Addr().String()
	// Without the CA the certificate is refused: a transient error (the
	// CA may be fixed), so the episode stays queued.
	o := s3Options(t, s, endpoint)
	o.OnceAttempts = 1
	u, err := upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err == nil || !strings.Contains(err.Error(), fx.Episode.ID) {
		t.Fatalf("upload without the CA: %v", err)
	}
	if us, _ := st.UploadState(fx.Episode.ID); !strings.Contains(us.LastError, "certificate") {
		t.Fatalf("last error %q", us.LastError)
	}

	t.Setenv("AWS_ACCESS_KEY_ID", s.Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s.Secret)
	o = s3Options(t, s, endpoint)
	o.Target.CAFile = ca
	o.Target.AccessKey, o.Target.SecretKey = "", ""
	reg := prometheus.NewRegistry()
	o.Registerer = reg
	u, err = upload.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e := state(t, st, fx.Episode.ID); e.State != episode.Uploaded {
		t.Fatalf("state %s (%s)", e.State, e.Reason)
	}
	want, size := exportSHA(t, st, fx.Episode.ID)
	if got, n := objectSHA(t, cl, bucket, upload.Dir("episodes", "plant1", "gw7", fx.Episode)+"/episode.mcap"); got != want || n != size {
		t.Fatalf("object %s/%d, want %s/%d", got, n, want, size)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "," + l.GetName() + "=" + l.GetValue()
			}
			got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	if got["episoded_upload_episodes_total,result=uploaded"] != 1 || got["episoded_upload_bytes_total"] < float64(size) {
		t.Errorf("metrics %v", got)
	}
	for _, name := range []string{"episoded_upload_backlog_bytes", "episoded_upload_backlog_seconds", "episoded_upload_backlog_episodes", "episoded_upload_window_open"} {
		if _, ok := got[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
}
