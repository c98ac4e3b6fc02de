package mqtt

import (
	"bytes"
	"encoding/json"
	"errors"
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
