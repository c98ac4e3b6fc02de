package redact

import (
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"rtsp://admin:hunter22@10.0.0.5:554/s1": "rtsp://%3Credacted%3E@10.0.0.5:554/s1",
		"rtsp://10.0.0.5/s1":                    "rtsp://10.0.0.5/s1",
		"tcp://user@broker:1883":                "tcp://%3Credacted%3E@broker:1883",
		"rtsp://a:b c@%zz":                      "<redacted>@%zz",
	} {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestString(t *testing.T) {
	got := String("dial failed: password hunter22 rejected", "hunter22", "")
	if got != "dial failed: password <redacted> rejected" {
		t.Fatalf("got %q", got)
	}
}

func TestScrubber(t *testing.T) {
	sc := NewScrubber("rtsp://cam:p%40ss-w0rd@10.0.0.5/s1", "token-abc-123", "")
	for _, in := range []string{
		"dial rtsp://cam:p%40ss-w0rd@10.0.0.5/s1: refused",
		"password p@ss-w0rd rejected",
		"auth header Bearer token-abc-123",
		`{"err":"tcp://other:zzz-secret@broker:1883 down"}`,
	} {
		out := sc.Text(in)
		for _, bad := range []string{"p%40ss-w0rd", "p@ss-w0rd", "token-abc-123", "zzz-secret"} {
			if strings.Contains(out, bad) {
				t.Errorf("Text(%q) = %q still holds %q", in, out, bad)
			}
		}
	}
	if got := sc.Text("plain text, mail me at a@b.c"); got != "plain text, mail me at a@b.c" {
		t.Errorf("text without URLs changed: %q", got)
	}
	if got := URL("rtsp://u:123?x@host/s"); strings.Contains(got, "123") {
		t.Errorf("URL with '?' in the password: %q", got)
	}
}
