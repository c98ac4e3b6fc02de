package storage

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/episoded/episoded/sample"
)

// The space watcher publishes Pebble's memory outside the Go heap: the
// memtable holding what was just written, and the block cache after a
// read of flushed data.
func TestPebbleMemoryGauges(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openRunning(t, Options{Dir: t.TempDir(), Registerer: reg})
	t0 := int64(1_800_000_000) * 1e9
	var in []sample.Sample
	for i := range 2000 {
		in = append(in, sample.Sample{Stream: "c/imu", Seq: uint64(i + 1), T: t0 + int64(i)*1e6, Payload: []byte(`{"q":[0.1,0.2,0.3,0.4,0.5,0.6]}`)})
	}
	appendWait(t, s, in)
	s.checkSpace()
	if v := gatherSum(t, reg, "episoded_storage_memtable_bytes"); v <= 0 {
		t.Errorf("episoded_storage_memtable_bytes = %v after 2000 samples, want > 0", v)
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, err := range s.Range("c/imu", t0, t0+int64(len(in))*1e6) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != len(in) {
		t.Fatalf("read %d samples, want %d", n, len(in))
	}
	s.checkSpace()
	if v := gatherSum(t, reg, "episoded_storage_block_cache_bytes"); v <= 0 {
		t.Errorf("episoded_storage_block_cache_bytes = %v after reading flushed data, want > 0", v)
	}
}
