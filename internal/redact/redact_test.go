package redact

import "testing"

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
