package mqtt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/episoded/episoded/sample"
)

const recvT = int64(1_800_000_000_000_000_000)

func jsonDev(field, unit string) DeviceOptions {
	return DeviceOptions{Device: "robot1", Topics: []string{"r/#"}, Format: FormatJSON, TimeField: field, TimeUnit: unit}
}

func TestDecodeJSON(t *testing.T) {
	for _, tc := range []struct {
		name    string
		o       DeviceOptions
		payload string
		srcT    int64
		bad     string // substring of the decode error; "" = decodes cleanly
	}{
		{"ns int", jsonDev("header.stamp", "ns"), `{"header":{"stamp":1732650000123456789},"q":[1,2]}`, 1732650000123456789, ""},
		{"default unit ns", jsonDev("t", ""), `{"t":1732650000123456789}`, 1732650000123456789, ""},
		{"s decimal exact", jsonDev("t", "s"), `{"t":1732650000.123456789}`, 1732650000123456789, ""},
		{"s exponent", jsonDev("t", "s"), `{"t":1.7326500001e9}`, 1732650000100000000, ""},
		{"ms", jsonDev("t", "ms"), `{"t":1732650000123}`, 1732650000123000000, ""},
		{"us fraction truncated", jsonDev("t", "us"), `{"t":1732650000123456.7891}`, 1732650000123456789, ""},
		{"rfc3339", jsonDev("header.stamp", "rfc3339"), `{"header":{"stamp":"2024-11-26T19:40:00.123456789Z"}}`, time.Date(2024, 11, 26, 19, 40, 0, 123456789, time.UTC).UnixNano(), ""},
		{"ros2 stamp", jsonDev("header.stamp", "s"), `{"header":{"stamp":{"sec":1732650000,"nanosec":5}}}`, 1732650000000000005, ""},
		{"ros1 stamp", jsonDev("header.stamp", "s"), `{"header":{"stamp":{"secs":1732650000,"nsecs":7}}}`, 1732650000000000007, ""},
		{"array index", jsonDev("stamps.1", "ns"), `{"stamps":[5,1732650000000000001]}`, 1732650000000000001, ""},
		{"escaped key", jsonDev("header.stamp", "ns"), `{"he\u0061der":{"x":"}\"{","stamp":1732650000000000002}}`, 1732650000000000002, ""},
		{"whitespace", jsonDev("a.b", "ns"), " { \"a\" : { \"z\" : [ {}, [] ] , \"b\" : 1732650000000000003 } } ", 1732650000000000003, ""},
		{"no time field", jsonDev("", ""), `{"x":1}`, 0, ""},
		{"no time field bad json", jsonDev("", ""), `{"x":`, 0, "not valid JSON"},
		{"truncated", jsonDev("t", "ns"), `{"t":17326500`, 0, "not valid JSON"},
		{"random bytes", jsonDev("t", "ns"), "\x00\xff\x13garbage", 0, "not valid JSON"},
		{"missing", jsonDev("header.stamp", "ns"), `{"header":{"seq":1}}`, 0, "missing"},
		{"missing parent", jsonDev("header.stamp", "ns"), `{"body":{}}`, 0, "missing"},
		{"parent scalar", jsonDev("header.stamp", "ns"), `{"header":5}`, 0, "missing"},
		{"top-level array", jsonDev("header.stamp", "ns"), `[1,2]`, 0, "array"},
		{"bool", jsonDev("t", "ns"), `{"t":true}`, 0, "boolean"},
		{"null", jsonDev("t", "ns"), `{"t":null}`, 0, "null"},
		{"string for numeric unit", jsonDev("t", "ns"), `{"t":"1732650000"}`, 0, "not rfc3339"},
		{"number for rfc3339", jsonDev("t", "rfc3339"), `{"t":1732650000}`, 0, "rfc3339"},
		{"bad rfc3339", jsonDev("t", "rfc3339"), `{"t":"yesterday"}`, 0, "RFC 3339"},
		{"zero", jsonDev("t", "ns"), `{"t":0}`, 0, "after the Unix epoch"},
		{"negative", jsonDev("t", "ns"), `{"t":-5}`, 0, "after the Unix epoch"},
		{"overflow", jsonDev("t", "s"), `{"t":1e300}`, 0, "overflow"},
		{"ros stamp bad nsec", jsonDev("t", "s"), `{"t":{"sec":1,"nanosec":2000000000}}`, 0, "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Decode(tc.o, []byte(tc.payload), recvT)
			if tc.bad == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if s.Flags != 0 {
					t.Fatalf("flags %v, want none", s.Flags)
				}
			} else {
				var de *DecodeError
				if !errors.As(err, &de) || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("err = %v, want a DecodeError containing %q", err, tc.bad)
				}
				if !s.Flags.Has(sample.DecodeError) {
					t.Fatalf("flags %v, want DecodeError", s.Flags)
				}
			}
			if s.SrcT != tc.srcT {
				t.Fatalf("SrcT = %d, want %d", s.SrcT, tc.srcT)
			}
			if s.RecvT != recvT || string(s.Payload) != tc.payload {
				t.Fatalf("sample = %+v: payload or RecvT not kept", s)
			}
		})
	}
}

func TestDecodeOversize(t *testing.T) {
	o := jsonDev("t", "ns")
	o.MaxPayload = 10
	_, err := Decode(o, []byte(`{"t":1732650000123456789}`), recvT)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	if _, err := Decode(o, []byte(`{"t":17}`), recvT); errors.Is(err, ErrTooLarge) {
		t.Fatalf("8 bytes rejected by a 10-byte limit")
	}
	// Default is 16 MiB.
	big := append(append([]byte(`{"pad":"`), bytes.Repeat([]byte("x"), 16<<20)...), `"}`...)
	if _, err := Decode(jsonDev("", ""), big, recvT); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("16 MiB + 10 bytes: err = %v, want ErrTooLarge", err)
	}
}

func cborDevice(field, unit string) DeviceOptions {
	o := jsonDev(field, unit)
	o.Format = FormatCBOR
	return o
}

func mustCBOR(t *testing.T, v any) []byte {
	t.Helper()
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cborHead encodes a CBOR head of major type mt with argument n.
func cborHead(mt byte, n uint64) []byte {
	switch {
	case n < 24:
		return []byte{mt<<5 | byte(n)}
	case n < 1<<32:
		b := []byte{mt<<5 | 26, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], uint32(n))
		return b
	default:
		b := []byte{mt<<5 | 27, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint64(b[1:], n)
		return b
	}
}

func TestDecodeCBOR(t *testing.T) {
	tagged := mustCBOR(t, map[string]any{"t": cbor.Tag{Number: 1, Content: uint64(1732650000)}})
	deep := append(bytes.Repeat([]byte{0x81}, 100), 0x01) // 100 nested one-element arrays
	indefDeep := append(bytes.Repeat([]byte{0x9f}, 100), bytes.Repeat([]byte{0xff}, 100)...)
	hugeArray := cborHead(4, 1<<62)                                                 // declares 2^62 elements, carries none
	hugeMap := cborHead(5, 1<<40)                                                   // declares 2^40 pairs
	longArray := append(cborHead(4, 100000), bytes.Repeat([]byte{0x01}, 100000)...) // over MaxArrayElements
	hugeString := append(cborHead(3, 1<<62), 'a')
	for _, tc := range []struct {
		name    string
		o       DeviceOptions
		payload []byte
		srcT    int64
		bad     string
	}{
		{"uint ns", cborDevice("header.stamp", "ns"), mustCBOR(t, map[string]any{"header": map[string]any{"stamp": uint64(1732650000123456789)}}), 1732650000123456789, ""},
		{"float s", cborDevice("t", "s"), mustCBOR(t, map[string]any{"t": 1732650000.5}), 1732650000500000000, ""},
		{"epoch tag", cborDevice("t", "s"), tagged, 1732650000000000000, ""},
		{"rfc3339 string", cborDevice("t", "rfc3339"), mustCBOR(t, map[string]any{"t": "2024-11-26T19:40:00Z"}), time.Date(2024, 11, 26, 19, 40, 0, 0, time.UTC).UnixNano(), ""},
		{"int keys", cborDevice("7", "ms"), mustCBOR(t, map[int]any{7: 1732650000123}), 1732650000123000000, ""},
		{"array index", cborDevice("a.1", "ns"), mustCBOR(t, map[string]any{"a": []any{1, 1732650000000000009}}), 1732650000000000009, ""},
		{"ros stamp", cborDevice("stamp", "s"), mustCBOR(t, map[string]any{"stamp": map[string]any{"sec": 1732650000, "nanosec": 3}}), 1732650000000000003, ""},
		{"no time field", cborDevice("", ""), mustCBOR(t, []int{1, 2}), 0, ""},
		{"missing", cborDevice("t", "ns"), mustCBOR(t, map[string]any{"u": 1}), 0, "missing"},
		{"wrong type", cborDevice("t", "ns"), mustCBOR(t, map[string]any{"t": []byte{1}}), 0, "not a number"},
		{"truncated", cborDevice("t", "ns"), mustCBOR(t, map[string]any{"t": 1732650000})[:4], 0, "well-formed"},
		{"trailing bytes", cborDevice("", ""), append(mustCBOR(t, 1), 0x01), 0, "well-formed"},
		{"random", cborDevice("", ""), []byte{0xff, 0xfe, 0x1c}, 0, "well-formed"},
		{"bomb: deep nesting", cborDevice("", ""), deep, 0, "well-formed"},
		{"bomb: deep indefinite", cborDevice("", ""), indefDeep, 0, "well-formed"},
		{"bomb: huge declared array", cborDevice("t", "ns"), hugeArray, 0, "well-formed"},
		{"bomb: huge declared map", cborDevice("t", "ns"), hugeMap, 0, "well-formed"},
		{"bomb: array over limit", cborDevice("", ""), longArray, 0, "well-formed"},
		{"bomb: huge declared string", cborDevice("", ""), hugeString, 0, "well-formed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			s, err := Decode(tc.o, tc.payload, recvT)
			runtime.ReadMemStats(&ms1)
			if tc.bad == "" {
				if err != nil || s.Flags != 0 {
					t.Fatalf("Decode: err %v flags %v", err, s.Flags)
				}
			} else if !s.Flags.Has(sample.DecodeError) || err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Fatalf("err = %v flags %v, want a DecodeError containing %q", err, s.Flags, tc.bad)
			}
			if s.SrcT != tc.srcT {
				t.Fatalf("SrcT = %d, want %d", s.SrcT, tc.srcT)
			}
			if !bytes.Equal(s.Payload, tc.payload) {
				t.Fatal("payload not kept")
			}
			if grew := ms1.TotalAlloc - ms0.TotalAlloc; grew > 4<<20 {
				t.Fatalf("decoding %d bytes allocated %d bytes", len(tc.payload), grew)
			}
		})
	}
}

func lidarDev(timeOffset int) DeviceOptions {
	return DeviceOptions{
		Device: "lidar", Topics: []string{"cell1/lidar"}, Format: FormatPointCloud, TimeOffset: timeOffset,
		Layout: &sample.PointLayout{HeaderSize: 16, Stride: 16, Fields: []sample.PointField{
			{Name: "x", Offset: 0, Type: "float32"}, {Name: "y", Offset: 4, Type: "float32"},
			{Name: "z", Offset: 8, Type: "float32"}, {Name: "intensity", Offset: 12, Type: "float32"},
		}},
	}
}

func lidarFrame(points int, t int64) []byte {
	b := make([]byte, 16+16*points)
	binary.LittleEndian.PutUint64(b[8:], uint64(t))
	for i := 16; i < len(b); i++ {
		b[i] = byte(i * 7)
	}
	return b
}

func TestDecodePointCloud(t *testing.T) {
	const ts = int64(1732650000123456789)
	for _, tc := range []struct {
		name    string
		o       DeviceOptions
		payload []byte
		srcT    int64
		bad     string
	}{
		{"time in header", lidarDev(8), lidarFrame(100, ts), ts, ""},
		{"no points", lidarDev(8), lidarFrame(0, ts), ts, ""},
		{"arrival", lidarDev(-1), lidarFrame(3, 0), 0, ""},
		{"ragged", lidarDev(8), lidarFrame(3, ts)[:16+16*3-5], 0, "left over"},
		{"short header", lidarDev(8), make([]byte, 10), 0, "shorter than its"},
		{"zero time", lidarDev(8), lidarFrame(1, 0), 0, "after the Unix epoch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Decode(tc.o, tc.payload, recvT)
			if tc.bad == "" {
				if err != nil || s.Flags != 0 {
					t.Fatalf("Decode: err %v flags %v", err, s.Flags)
				}
			} else if !s.Flags.Has(sample.DecodeError) || err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Fatalf("err = %v flags %v, want DecodeError containing %q", err, s.Flags, tc.bad)
			}
			if s.SrcT != tc.srcT || !bytes.Equal(s.Payload, tc.payload) {
				t.Fatalf("SrcT %d (want %d), payload kept %v", s.SrcT, tc.srcT, bytes.Equal(s.Payload, tc.payload))
			}
		})
	}
}

func TestDescriptor(t *testing.T) {
	o := defaulted(lidarDev(8))
	d := o.descriptor("cell1/lidar", "cell1/lidar")
	if d.Kind != sample.KindPointCloud || d.Codec != sample.CodecRaw || d.Clock != sample.ClockDevice ||
		d.Layout == nil || !d.Layout.Equal(*o.Layout) || d.Device != "lidar" {
		t.Fatalf("descriptor %+v", d)
	}
	d.Layout.Fields[0].Name = "changed"
	if o.Layout.Fields[0].Name != "x" {
		t.Fatal("descriptor layout aliases the device's layout")
	}
	j := jsonDev("", "")
	j.Latency = 30 * time.Millisecond
	d = defaulted(j).descriptor("s", "r/a")
	if d.Kind != sample.KindTelemetry || d.Codec != sample.CodecJSON || d.Clock != sample.ClockArrival || d.Latency != int64(30*time.Millisecond) {
		t.Fatalf("descriptor %+v", d)
	}
	if d := defaulted(jsonDev("t", "ms")).descriptor("s", "r/a"); d.Clock != sample.ClockDevice {
		t.Fatalf("time field: clock %s", d.Clock)
	}
	if d := defaulted(cborDevice("", "")).descriptor("s", "r/a"); d.Codec != sample.CodecCBOR {
		t.Fatalf("codec %s", d.Codec)
	}
}

func TestDeviceOptionsValidate(t *testing.T) {
	layout := lidarDev(8).Layout
	for _, tc := range []struct {
		name string
		o    DeviceOptions
		want []string
	}{
		{"empty", DeviceOptions{}, []string{"id: is required", "topics: list at least one"}},
		{"bad filter", DeviceOptions{Device: "d", Topics: []string{"a/#/b", "a+"}}, []string{`"a/#/b" is not a valid`, `"a+" is not a valid`}},
		{"bad template", DeviceOptions{Device: "d", Topics: []string{"a"}, Stream: "{x}"}, []string{"unknown placeholder {x}"}},
		{"bad format", DeviceOptions{Device: "d", Topics: []string{"a"}, Format: "xml"}, []string{`"xml" is not one of`}},
		{"time field on raw", DeviceOptions{Device: "d", Topics: []string{"a"}, Format: "raw", TimeField: "t"}, []string{"only json and cbor"}},
		{"bad unit", DeviceOptions{Device: "d", Topics: []string{"a"}, TimeField: "t", TimeUnit: "min"}, []string{`"min" is not one of`}},
		{"empty path element", DeviceOptions{Device: "d", Topics: []string{"a"}, TimeField: "a..b"}, []string{"empty path element"}},
		{"negative", DeviceOptions{Device: "d", Topics: []string{"a"}, Latency: -1, MaxPayload: -1}, []string{"latency", "max_payload"}},
		{"layout on json", DeviceOptions{Device: "d", Topics: []string{"a"}, Layout: layout}, []string{"only format pointcloud"}},
		{"no layout", DeviceOptions{Device: "d", Topics: []string{"a"}, Format: "pointcloud"}, []string{"needs a layout"}},
		{"time offset outside header", DeviceOptions{Device: "d", Topics: []string{"a"}, Format: "pointcloud", Layout: layout, TimeOffset: 12}, []string{"does not fit in a 16-byte header"}},
		{"time offset 0 without header", DeviceOptions{Device: "d", Topics: []string{"a"}, Format: "pointcloud",
			Layout: &sample.PointLayout{Stride: 4, Fields: []sample.PointField{{Name: "x", Type: "float32"}}}}, []string{"use -1 for arrival"}},
		{"bad fields", DeviceOptions{Device: "d", Topics: []string{"a"}, Format: "pointcloud", TimeOffset: -1,
			Layout: &sample.PointLayout{Stride: 4, Fields: []sample.PointField{{Name: "x", Type: "float64"}, {Name: "y", Type: "int128"}, {Type: "uint8"}}}},
			[]string{"fields[x]: offset 0 does not fit in stride 4", `"int128" is not one of`, "every field needs a name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkOpts(tc.o)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	for _, o := range []DeviceOptions{jsonDev("header.stamp", "ms"), lidarDev(8), lidarDev(-1), cborDevice("", "")} {
		if err := checkOpts(o); err != nil {
			t.Errorf("valid options %+v: %v", o, err)
		}
	}
}

func TestScaleDecimal(t *testing.T) {
	for _, tc := range []struct {
		lit  string
		exp  int
		want int64
		err  bool
	}{
		{"0", 9, 0, false},
		{"1", 9, 1e9, false},
		{"1.5", 9, 1.5e9, false},
		{"0.000000001", 9, 1, false},
		{"0.0000000009", 9, 0, false},
		{"-2.5", 3, -2500, false},
		{"12e-1", 0, 1, false},
		{"1E3", 0, 1000, false},
		{"9223372036854775807", 0, 9223372036854775807, false},
		{"9223372036854775808", 0, 0, true},
		{"1e19", 0, 0, true},
		{"1e999999", 0, 0, true},
		{"00012", 0, 12, false},
		{"1.2.3", 0, 0, true},
		{"", 0, 0, true},
	} {
		got, err := scaleDecimal(tc.lit, tc.exp)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("scaleDecimal(%q, %d) = %d, %v; want %d, err %v", tc.lit, tc.exp, got, err, tc.want, tc.err)
		}
	}
}

// defaulted returns o with its defaults filled in.
func defaulted(o DeviceOptions) DeviceOptions {
	o.EnsureDefaults()
	return o
}

// checkOpts fills in o's defaults and validates it.
func checkOpts(o DeviceOptions) error {
	o.EnsureDefaults()
	return o.Validate()
}
