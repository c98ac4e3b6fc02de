package lifecycle

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/episoded/episoded/sample"
	"github.com/episoded/episoded/storage"
)

// TestStatusStreamsBounded: /v1/status lists at most StatusMaxStreams
// streams (the first by name) and counts them all, so that its size does
// not grow with whatever number of streams devices create.
func TestStatusStreamsBounded(t *testing.T) {
	st, err := storage.Open(storage.Options{Dir: t.TempDir(), MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p := NewSink(st, SinkOptions{Logger: slog.New(slog.DiscardHandler)})
	const n = StatusMaxStreams + 100
	for i := range n {
		d := sample.Descriptor{Stream: fmt.Sprintf("cell1/s%04d", i), Kind: sample.KindTelemetry, Codec: sample.CodecJSON,
			Device: "fleet", Clock: sample.ClockArrival}
		if err := p.Describe(d); err != nil {
			t.Fatal(err)
		}
	}
	rows := p.Status()
	if len(rows) != StatusMaxStreams || p.StreamCount() != n {
		t.Fatalf("%d rows of %d streams; want %d of %d", len(rows), p.StreamCount(), StatusMaxStreams, n)
	}
	if rows[0].Stream != "cell1/s0000" || rows[len(rows)-1].Stream != fmt.Sprintf("cell1/s%04d", StatusMaxStreams-1) {
		t.Fatalf("rows from %s to %s; want the first by name", rows[0].Stream, rows[len(rows)-1].Stream)
	}
}
