package mqtt

import (
	"context"
	"testing"
	"time"

	"github.com/episoded/episoded/devices"
)

// The set-up of the client tests that run against a real broker and a
// memSink (harness_test.go has the broker, the sink and runClient).

// newTestClient returns a client of the broker at url, logging to the
// buffer it also returns, with a short backoff changed by mut and the
// devices devs added.
func newTestClient(t testing.TB, url, clientID string, mut func(*ClientOptions), devs ...DeviceOptions) (*Client, *logBuf) {
	t.Helper()
	log, lb := newTestLogger()
	o := ClientOptions{ID: "test", URL: url, ClientID: clientID, Logger: log,
		Backoff: devices.BackoffPolicy{Min: 200 * time.Millisecond, Max: time.Second}}
	if mut != nil {
		mut(&o)
	}
	b, err := NewClient(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if err := b.AddDevice(d); err != nil {
			t.Fatal(err)
		}
	}
	return b, lb
}

// startSink runs sink's commit loop (everything written is reported
// durable every interval) until the test ends, and returns sink.
func startSink(t testing.TB, sink *memSink) *memSink {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go sink.run(ctx)
	return sink
}

// runConnected runs b against sink until the test ends (runClient) and
// returns once b has a session with its broker; stop ends it earlier.
func runConnected(t testing.TB, b *Client, sink *memSink) (stop func()) {
	t.Helper()
	stop = runClient(t, b, sink)
	waitFor(t, 10*time.Second, "a session with the broker", func() bool { return b.Stats().Connected })
	return stop
}
