package video

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestHasStartCode checks hasStartCode against bytes.Contains on random
// bytes rich in zeros and ones, with start codes at every position.
func TestHasStartCode(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := range 2000 {
		b := make([]byte, n%200)
		for i := range b {
			switch rng.IntN(4) {
			case 0, 1:
				b[i] = 0
			case 2:
				b[i] = 1
			default:
				b[i] = byte(rng.IntN(256))
			}
		}
		if got, want := hasStartCode(b), bytes.Contains(b, annexBCode); got != want {
			t.Fatalf("hasStartCode(%x) = %v, want %v", b, got, want)
		}
	}
	for _, b := range [][]byte{nil, {1}, {0, 0, 1}, {0, 0, 0, 1}, {9, 0, 0, 0, 1}, {0, 0, 0, 0, 1, 5}, {0, 0, 2, 1}, {0, 1, 0, 0, 0}} {
		if got, want := hasStartCode(b), bytes.Contains(b, annexBCode); got != want {
			t.Fatalf("hasStartCode(%x) = %v, want %v", b, got, want)
		}
	}
}
