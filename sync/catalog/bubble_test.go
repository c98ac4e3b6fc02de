package catalog

import (
	"testing"
	"testing/synctest"
)

// TestEncodeInSeparateBubbles: the uploader's timing tests encode catalog
// rows inside testing/synctest bubbles, one bubble per test. A zstd
// encoder kept between calls (parquet-go's shared codec pools them) owns
// goroutines and channels of the bubble that made it, and the next bubble
// to use it dies with "receive on synctest channel from outside bubble"
// (seen in a CI run under a CPU hog). Encode must keep nothing between
// calls, so every bubble here can encode. (Decode still uses the shared
// decoders: nothing decodes inside a bubble.)
func TestEncodeInSeparateBubbles(t *testing.T) {
	rows := []Row{{ID: "e1", Gateway: "g", Cell: "c"}}
	var first []byte
	for i := range 3 {
		synctest.Test(t, func(t *testing.T) {
			b, err := Encode(rows)
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				first = b
			} else if string(b) != string(first) {
				t.Fatalf("bubble %d encoded %d bytes, the first %d: not the same file", i, len(b), len(first))
			}
		})
	}
	// Decoding (outside any bubble: Decode pools parquet-go's shared
	// decoders, and nothing decodes inside a bubble) checks the file.
	got, err := Decode(first)
	if err != nil || len(got) != 1 || got[0].ID != "e1" {
		t.Fatalf("decode: %v %+v", err, got)
	}
}
