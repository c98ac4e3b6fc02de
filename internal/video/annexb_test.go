package video

import (
	"bytes"
	"testing"
)

func TestAnnexBRoundTrip(t *testing.T) {
	au := [][]byte{{0x67, 1, 2}, {0x68, 3}, {0x65, 0, 0, 9}}
	b := AnnexB(au)
	if !bytes.Equal(b[:4], []byte{0, 0, 0, 1}) || len(b) != 4*3+3+2+4 {
		t.Fatalf("AnnexB = %x", b)
	}
	got := SplitAnnexB(b)
	if len(got) != 3 || !bytes.Equal(got[2], []byte{0x65, 0, 0, 9}) || !bytes.Equal(got[0], au[0]) {
		t.Fatalf("SplitAnnexB = %x", got)
	}
	// 3-byte start codes and trailing zeros.
	if got := SplitAnnexB([]byte{0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x41, 7, 0, 0}); len(got) != 2 || !bytes.Equal(got[1], []byte{0x41, 7}) {
		t.Fatalf("SplitAnnexB with 3-byte codes = %x", got)
	}
	if SplitAnnexB([]byte{0x65, 1, 2}) != nil {
		t.Fatal("no start code must give nil")
	}
}

func TestH264AUStart(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    []byte
		want bool
	}{
		{"SPS", []byte{0x67, 0x42}, true},
		{"first IDR slice", []byte{0x65, 0x88}, true},
		{"second slice of a picture", []byte{0x41, 0x10}, false},
		{"STAP-A with SPS", []byte{24, 0, 2, 0x67, 0x42}, true},
		{"FU-A start of an IDR", []byte{0x7c, 0x85, 0x88}, true},
		{"FU-A continuation", []byte{0x7c, 0x05, 0x88}, false},
		{"too short", []byte{0x65}, false},
		{"STAP-A with a bad size", []byte{24, 0, 9, 0x67, 0x42}, false},
	} {
		if got := H264AUStart(tc.p); got != tc.want {
			t.Errorf("%s: H264AUStart(%x) = %v, want %v", tc.name, tc.p, got, tc.want)
		}
	}
}
