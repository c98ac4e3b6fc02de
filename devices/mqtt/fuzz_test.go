package mqtt

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/episoded/episoded/sample"
)

// fuzzDevices are the device configurations FuzzDecode exercises; mode
// selects one.
var fuzzDevices = []DeviceOptions{
	jsonDev("header.stamp", "ns"),
	jsonDev("t", "s"),
	jsonDev("t", "rfc3339"),
	jsonDev("", ""),
	cborDevice("header.stamp", "ms"),
	cborDevice("t", "rfc3339"),
	cborDevice("", ""),
	lidarDev(8),
	lidarDev(-1),
	{Device: "raw", Topics: []string{"r"}, Format: FormatRaw, MaxPayload: 1 << 10},
}

// FuzzDecode checks that no payload panics the decoder and that its
// contract holds: oversize is rejected, everything else is kept byte for
// byte, and a sample is flagged DecodeError exactly when an error comes
// back. The seed corpus (testdata/fuzz/FuzzDecode) runs in every go test.
//
//	go test -run '^$' -fuzz FuzzDecode -fuzztime 60s ./devices/mqtt/
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, mode uint8, payload []byte) {
		o := defaulted(fuzzDevices[int(mode)%len(fuzzDevices)])
		s, err := Decode(o, payload, recvT)
		if int64(len(payload)) > o.MaxPayload {
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("%d bytes over %d: err %v", len(payload), o.MaxPayload, err)
			}
			return
		}
		if errors.Is(err, ErrTooLarge) {
			t.Fatalf("ErrTooLarge for %d bytes", len(payload))
		}
		if !bytes.Equal(s.Payload, payload) || s.RecvT != recvT {
			t.Fatal("payload or RecvT not kept")
		}
		var de *DecodeError
		if (err != nil) != s.Flags.Has(sample.DecodeError) || (err != nil && !errors.As(err, &de)) {
			t.Fatalf("err %v with flags %v", err, s.Flags)
		}
		if s.Flags&^sample.DecodeError != 0 {
			t.Fatalf("unexpected flags %v", s.Flags)
		}
		if err != nil && s.SrcT != 0 {
			t.Fatalf("SrcT %d on a decode error", s.SrcT)
		}
		if err == nil {
			timed := o.TimeField != "" || (o.Format == FormatPointCloud && o.TimeOffset >= 0)
			if timed != (s.SrcT > 0) {
				t.Fatalf("SrcT %d, time configured %v", s.SrcT, timed)
			}
			if o.Format == FormatJSON && !json.Valid(payload) {
				t.Fatal("invalid JSON accepted")
			}
			if o.Format == FormatCBOR && cborDec.Wellformed(payload) != nil {
				t.Fatal("malformed CBOR accepted")
			}
		}
	})
}

// FuzzValidJSON checks that validJSON accepts exactly what encoding/json's
// Valid accepts. The seeds below run in every go test.
//
//	go test -run '^$' -fuzz FuzzValidJSON -fuzztime 60s ./devices/mqtt/
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{
		``, ` `, `{}`, `[]`, `{"a":1}`, ` {"a" : [1, 2.5e-3, -0, true, false, null, "x\u00e9\n"]} `,
		`{"header":{"stamp":1700000000123456789,"frame":"r"},"joint":[0.1,-2.5678],"io":255}`,
		`01`, `-`, `1.`, `1e`, `.5`, `+1`, `[1,]`, `{"a":1,}`, `{"a"}`, `{1:2}`, `"\x"`, `"\u12"`, `"a` + "\x01" + `"`,
		"\"\xff\xfe\"", `tru`, `nulll`, `[1 2]`, `{"a":1 "b":2}`, `"a"x`, `[[[[]]]]`, `]`, `}`, `{"a":[}]`,
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000), strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid = %v", b, got, want)
		}
	})
}

func BenchmarkValidJSON(b *testing.B) {
	p := []byte(`{"header":{"stamp":1700000000123456789,"seq":12345,"frame":"bench/robot0"},"joint":[0.1234,0.2345,0.3456,1.4567,-2.5678,3.6789],"tool":{"x":0.51,"y":-0.22,"z":1.03},"io":255,"alarm":0}`)
	b.Run("validJSON", func(b *testing.B) {
		for range b.N {
			validJSON(p)
		}
	})
	b.Run("json.Valid", func(b *testing.B) {
		for range b.N {
			json.Valid(p)
		}
	})
}
