package rtsp

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"

	"github.com/episoded/episoded/devices"
	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/sample"
)

// junkServer accepts TCP connections and answers every one with bytes that
// are not RTSP. A fake is the point here: no real server sends garbage.
func junkServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				c.Read(buf) //nolint:errcheck // the request, ignored
				junk := []byte("\x00\xffHELLO garbage \x13\x37 not rtsp at all\r\n\r\n\x01\x02")
				for range 50 {
					if _, err := c.Write(junk); err != nil {
						return
					}
				}
				// Keep the connection open: the client must reject the
				// bytes themselves, not a closed socket.
				c.SetReadDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
				c.Read(buf)                                        //nolint:errcheck
			}()
		}
	}()
	return l.Addr().String()
}

func TestBadInput(t *testing.T) {
	const secret = "S3cr3t-Pa55word"
	h264 := loadClip(t, sample.CodecH264)

	closed := freeAddr(t) // nothing listens here any more
	auth := startServer(t, "", h264.desc, "admin", "right-password")
	mjpeg := &description.Session{Medias: []*description.Media{{
		Type: description.MediaTypeVideo, Formats: []format.Format{&format.MJPEG{}},
	}}}
	noCodec := startServer(t, "", mjpeg, "", "")
	interleaved := &description.Session{Medias: []*description.Media{{
		Type: description.MediaTypeVideo, Formats: []format.Format{&format.H264{PayloadTyp: 96, PacketizationMode: 2}},
	}}}
	mode2 := startServer(t, "", interleaved, "", "")
	junk := junkServer(t)

	for _, tc := range []struct {
		name     string
		opts     Options
		want     string // in Status().LastError
		sentinel error
	}{
		{name: "unreachable", opts: Options{URL: "rtsp://viewer:" + secret + "@" + closed + "/cam"},
			want: "connection refused"},
		{name: "wrong-password-inline", opts: Options{URL: "rtsp://admin:" + secret + "@" + auth.addr + "/cam"},
			want: "unauthorized", sentinel: ErrUnauthorized},
		{name: "wrong-password-option", opts: Options{URL: auth.url("cam"), Username: "admin", Password: secret},
			want: "unauthorized", sentinel: ErrUnauthorized},
		{name: "no-supported-codec", opts: Options{URL: noCodec.url("cam")},
			want: "no supported H.264 or H.265", sentinel: ErrNoSupportedCodec},
		{name: "interleaved-h264", opts: Options{URL: mode2.url("cam")},
			want: "PacketizationMode >= 2 is not supported", sentinel: ErrNoSupportedCodec},
		{name: "garbage", opts: Options{URL: "rtsp://u:" + secret + "@" + junk + "/cam"}, want: "request timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &logBuffer{}
			o := tc.opts
			o.Device = "bad-" + tc.name
			o.Logger = logs.logger()
			o.ReadTimeout = 2 * time.Second
			o.Backoff = devices.BackoffPolicy{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond}
			cam, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			if tc.sentinel != nil {
				// The session error itself classifies.
				err := cam.session(t.Context(), make(chan frame, 1), func() {})
				if !errors.Is(err, tc.sentinel) {
					t.Errorf("session error %v is not %v", err, tc.sentinel)
				}
			}
			sink := newMemSink()
			stop, done := runCamera(t, cam, sink)
			waitFor(t, 10*time.Second, "two reconnects", func() bool { return cam.Status().Reconnects >= 2 })
			st := cam.Status()
			select {
			case <-done:
				t.Fatal("Run returned on a bad device")
			default:
			}
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if !strings.Contains(st.LastError, tc.want) {
				t.Errorf("last error %q does not contain %q", st.LastError, tc.want)
			}
			if st.State == devices.Streaming || sink.count() != 0 {
				t.Errorf("state %s with %d samples", st.State, sink.count())
			}
			if strings.Contains(st.LastError, secret) || strings.Contains(logs.String(), secret) {
				t.Errorf("credential leaked:\nstatus: %s\nlogs: %s", st.LastError, logs.String())
			}
			if !strings.Contains(logs.String(), "camera session ended") {
				t.Errorf("failure not logged: %s", logs.String())
			}
			t.Logf("last error: %s", st.LastError)
		})
	}
}

func TestScrubRemovesCredentials(t *testing.T) {
	cam, err := New(Options{Device: "d", URL: "rtsp://admin:in-url-pw@10.0.0.5:554/s1", Username: "admin", Password: "opt/pw&x"})
	if err != nil {
		t.Fatal(err)
	}
	e := cam.scrub("describe", errors.New("dial rtsp://admin:opt%2Fpw&x@10.0.0.5:554/s1: opt/pw&x and in-url-pw failed"))
	msg := e.Error()
	for _, bad := range []string{"in-url-pw", "opt/pw&x", "opt%2Fpw", "opt%2Fpw%26x"} {
		if strings.Contains(msg, bad) {
			t.Errorf("%q leaks %q", msg, bad)
		}
	}
	if !strings.Contains(msg, redact.Mask) || !strings.HasPrefix(msg, "rtsp describe: ") {
		t.Errorf("unexpected message %q", msg)
	}
	if cam.source != "rtsp://%3Credacted%3E@10.0.0.5:554/s1" {
		t.Errorf("source %q", cam.source)
	}
}
