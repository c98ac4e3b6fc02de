package mqtt

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/episoded/episoded/sample"
)

// ErrTooLarge is returned by Decode for a payload over MaxPayload. Such a
// payload is not stored.
var ErrTooLarge = errors.New("mqtt: payload over max_payload")

// DecodeError says why a payload could not be decoded as its declared
// format. The sample that comes with it is kept, flagged
// sample.DecodeError, with its bytes as they arrived.
type DecodeError struct {
	Format string
	Reason string
}

func (e *DecodeError) Error() string { return "mqtt: " + e.Format + " payload: " + e.Reason }

// CBOR resource limits. A payload that exceeds them is kept as a
// DecodeError sample; it is never expanded in memory.
const (
	cborMaxNestedLevels  = 32
	cborMaxArrayElements = 65536
	cborMaxMapPairs      = 65536
)

var cborDec = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		MaxNestedLevels:  cborMaxNestedLevels,
		MaxArrayElements: cborMaxArrayElements,
		MaxMapPairs:      cborMaxMapPairs,
		IndefLength:      cbor.IndefLengthAllowed,
		DupMapKey:        cbor.DupMapKeyQuiet,
		IntDec:           cbor.IntDecConvertNone,
	}.DecMode()
	if err != nil {
		panic(err) // constant options; covered by tests
	}
	return dm
}()

// decoder is DeviceOptions compiled for the hot path.
type decoder struct {
	format     string
	path       []string
	unitExp    int // 9 s, 6 ms, 3 us, 0 ns, -1 rfc3339
	maxPayload int64
	layout     *sample.PointLayout
	timeOffset int
}

func newDecoder(o DeviceOptions) decoder {
	d := decoder{format: o.Format, maxPayload: o.MaxPayload, layout: o.Layout, timeOffset: o.TimeOffset}
	if o.TimeField != "" {
		d.path = strings.Split(o.TimeField, ".")
		d.unitExp = timeUnits[o.TimeUnit]
	}
	return d
}

// Decode turns one MQTT payload into a sample (Stream, Seq and T unset). It
// is a pure function of its arguments, safe for fuzzing.
//
//   - A payload over o.MaxPayload returns ErrTooLarge and no sample.
//   - A payload that is not valid for o.Format (bad JSON or CBOR, a missing
//     or unreadable time field, a point-cloud frame whose length is not
//     HeaderSize + k*Stride) returns the sample flagged sample.DecodeError,
//     SrcT 0, with a *DecodeError saying why.
//   - Otherwise the sample carries SrcT (payload time in ns) when the device
//     has a time field or a point-cloud time offset, else SrcT 0 for arrival
//     stamping by the pipeline.
//
// The payload slice is kept, not copied. o gets its defaults applied; an
// invalid o is reported as an error before any decoding.
func Decode(o DeviceOptions, payload []byte, recvT int64) (sample.Sample, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return sample.Sample{}, fmt.Errorf("mqtt: decode options: %w", err)
	}
	o = o.onClock()
	dec := newDecoder(o)
	return dec.decode(payload, recvT)
}

func (d *decoder) decode(payload []byte, recvT int64) (sample.Sample, error) {
	if int64(len(payload)) > d.maxPayload {
		return sample.Sample{}, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(payload), d.maxPayload)
	}
	s := sample.Sample{RecvT: recvT, Payload: payload}
	var err error
	switch d.format {
	case FormatJSON:
		s.SrcT, err = d.jsonTime(payload)
	case FormatCBOR:
		s.SrcT, err = d.cborTime(payload)
	case FormatPointCloud:
		s.SrcT, err = d.pointTime(payload)
	}
	if err != nil {
		s.SrcT = 0
		s.Flags |= sample.DecodeError
		return s, &DecodeError{Format: d.format, Reason: err.Error()}
	}
	return s, nil
}

func (d *decoder) pointTime(p []byte) (int64, error) {
	l := d.layout
	if len(p) < l.HeaderSize {
		return 0, fmt.Errorf("frame of %d bytes is shorter than its %d-byte header", len(p), l.HeaderSize)
	}
	if rem := (len(p) - l.HeaderSize) % l.Stride; rem != 0 {
		return 0, fmt.Errorf("frame of %d bytes is not %d + k*%d (%d bytes left over)", len(p), l.HeaderSize, l.Stride, rem)
	}
	if d.timeOffset < 0 {
		return 0, nil
	}
	t := int64(binary.LittleEndian.Uint64(p[d.timeOffset:]))
	if t <= 0 {
		return 0, fmt.Errorf("header time %d at offset %d is not a time after the Unix epoch", t, d.timeOffset)
	}
	return t, nil
}

// ---- JSON ----

func (d *decoder) jsonTime(p []byte) (int64, error) {
	if !validJSON(p) {
		var v any
		err := json.Unmarshal(p, &v) // only for the reason; p is bad anyway
		if err == nil {
			err = errors.New("invalid JSON")
		}
		return 0, fmt.Errorf("not valid JSON: %v", err)
	}
	if d.path == nil {
		return 0, nil
	}
	raw, err := jsonLookup(p, d.path)
	if err != nil {
		return 0, err
	}
	return d.jsonValueTime(raw)
}

func (d *decoder) jsonValueTime(raw []byte) (int64, error) {
	switch c := raw[0]; {
	case c == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, fmt.Errorf("time field: %v", err)
		}
		return d.stringTime(s)
	case c == '-' || (c >= '0' && c <= '9'):
		return d.numberTime(string(raw))
	case c == '{':
		return jsonStamp(raw)
	default:
		return 0, fmt.Errorf("time field %s is %s, not a number or string", strings.Join(d.path, "."), jsonKind(c))
	}
}

// jsonStamp reads a ROS-style stamp object {"sec"|"secs": int,
// "nanosec"|"nsec"|"nsecs": int}.
func jsonStamp(obj []byte) (int64, error) {
	get := func(names ...string) (int64, bool, error) {
		for _, n := range names {
			raw, err := jsonLookup(obj, []string{n})
			if err != nil {
				continue
			}
			v, err := strconv.ParseInt(string(raw), 10, 64)
			if err != nil {
				return 0, true, fmt.Errorf("time field stamp %s: %q is not an integer", n, raw)
			}
			return v, true, nil
		}
		return 0, false, nil
	}
	sec, ok, err := get("sec", "secs")
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, errors.New("time field is an object without sec/secs (ROS stamp)")
	}
	nsec, _, err := get("nanosec", "nsec", "nsecs")
	if err != nil {
		return 0, err
	}
	return stampTime(sec, nsec)
}

func stampTime(sec, nsec int64) (int64, error) {
	if sec < 0 || sec > math.MaxInt64/1_000_000_000-1 || nsec < 0 || nsec >= 1e9 {
		return 0, fmt.Errorf("time field stamp %d s %d ns is out of range", sec, nsec)
	}
	return checkTime(sec*1e9 + nsec)
}

func jsonKind(c byte) string {
	switch c {
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "not a scalar"
}

// jsonLookup returns the raw value at path inside the valid JSON document
// doc. Path elements select object members, or array elements when they are
// decimal indexes.
func jsonLookup(doc []byte, path []string) ([]byte, error) {
	i := skipWS(doc, 0)
	for depth, key := range path {
		if i >= len(doc) {
			return nil, errors.New("time field: unexpected end of JSON")
		}
		switch doc[i] {
		case '{':
			found := false
			i = skipWS(doc, i+1)
			for i < len(doc) && doc[i] != '}' {
				ks := i
				i = skipString(doc, i)
				k := doc[ks:i]
				i = skipWS(doc, i)
				i = skipWS(doc, i+1) // ':'
				if jsonKeyEqual(k, key) {
					found = true
					break
				}
				i = skipValue(doc, i)
				i = skipWS(doc, i)
				if i < len(doc) && doc[i] == ',' {
					i = skipWS(doc, i+1)
				}
			}
			if !found {
				return nil, missingField(path, depth)
			}
		case '[':
			n, err := strconv.Atoi(key)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("time field %s: %s is an array, not an object", strings.Join(path, "."), strings.Join(path[:depth], "."))
			}
			i = skipWS(doc, i+1)
			for ; n > 0 && i < len(doc) && doc[i] != ']'; n-- {
				i = skipValue(doc, i)
				i = skipWS(doc, i)
				if i < len(doc) && doc[i] == ',' {
					i = skipWS(doc, i+1)
				}
			}
			if i >= len(doc) || doc[i] == ']' {
				return nil, missingField(path, depth)
			}
		default:
			return nil, missingField(path, depth)
		}
	}
	end := skipValue(doc, i)
	if i >= end {
		return nil, missingField(path, len(path)-1)
	}
	return doc[i:end], nil
}

func missingField(path []string, depth int) error {
	return fmt.Errorf("time field %s: missing (no %q)", strings.Join(path, "."), strings.Join(path[:depth+1], "."))
}

func jsonKeyEqual(quoted []byte, key string) bool {
	if len(quoted) < 2 {
		return false
	}
	inner := quoted[1 : len(quoted)-1]
	for _, c := range inner {
		if c == '\\' {
			var s string
			if json.Unmarshal(quoted, &s) != nil {
				return false
			}
			return s == key
		}
	}
	return string(inner) == key
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index after the value starting at b[i]; b is valid
// JSON.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default:
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// ---- CBOR ----

func (d *decoder) cborTime(p []byte) (int64, error) {
	if err := cborDec.Wellformed(p); err != nil {
		return 0, fmt.Errorf("not well-formed CBOR: %v", err)
	}
	if d.path == nil {
		return 0, nil
	}
	cur := cbor.RawMessage(p)
	for depth, key := range d.path {
		next, err := cborStep(cur, key)
		if err != nil {
			return 0, err
		}
		if next == nil {
			return 0, missingField(d.path, depth)
		}
		cur = next
	}
	var v any
	if err := cborDec.Unmarshal(cur, &v); err != nil {
		return 0, fmt.Errorf("time field: %v", err)
	}
	return d.anyTime(v)
}

// cborStep returns the member key of map m (or element of array m), nil if
// absent.
func cborStep(m cbor.RawMessage, key string) (cbor.RawMessage, error) {
	if len(m) == 0 {
		return nil, nil
	}
	switch m[0] >> 5 {
	case 5: // map
		var mm map[any]cbor.RawMessage
		if err := cborDec.Unmarshal(m, &mm); err != nil {
			return nil, fmt.Errorf("time field: %v", err)
		}
		if v, ok := mm[key]; ok {
			return v, nil
		}
		if n, err := strconv.ParseInt(key, 10, 64); err == nil {
			if v, ok := mm[uint64(n)]; ok && n >= 0 {
				return v, nil
			}
			if v, ok := mm[n]; ok {
				return v, nil
			}
		}
		return nil, nil
	case 4: // array
		n, err := strconv.Atoi(key)
		if err != nil || n < 0 {
			return nil, nil
		}
		var arr []cbor.RawMessage
		if err := cborDec.Unmarshal(m, &arr); err != nil {
			return nil, fmt.Errorf("time field: %v", err)
		}
		if n >= len(arr) {
			return nil, nil
		}
		return arr[n], nil
	}
	return nil, nil
}

func (d *decoder) anyTime(v any) (int64, error) {
	switch x := v.(type) {
	case uint64:
		if x > math.MaxInt64 {
			return 0, fmt.Errorf("time field %d overflows int64", x)
		}
		return d.numberTime(strconv.FormatUint(x, 10))
	case int64:
		return d.numberTime(strconv.FormatInt(x, 10))
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return 0, fmt.Errorf("time field is %v", x)
		}
		return d.numberTime(strconv.FormatFloat(x, 'g', -1, 64))
	case big.Int:
		return d.numberTime(x.String())
	case *big.Int:
		return d.numberTime(x.String())
	case string:
		return d.stringTime(x)
	case time.Time:
		return checkTime(x.UnixNano())
	case map[any]any:
		sec, okS := stampInt(x, "sec", "secs")
		nsec, _ := stampInt(x, "nanosec", "nsec", "nsecs")
		if !okS {
			return 0, errors.New("time field is a map without sec/secs (ROS stamp)")
		}
		return stampTime(sec, nsec)
	default:
		return 0, fmt.Errorf("time field is a %T, not a number or string", v)
	}
}

func stampInt(m map[any]any, names ...string) (int64, bool) {
	for _, n := range names {
		switch x := m[n].(type) {
		case uint64:
			if x <= math.MaxInt64 {
				return int64(x), true
			}
		case int64:
			return x, true
		}
	}
	return 0, false
}

// ---- time values ----

func (d *decoder) stringTime(s string) (int64, error) {
	if d.unitExp != -1 {
		return 0, fmt.Errorf("time field is the string %q, but time unit is not rfc3339", truncate(s, 40))
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, fmt.Errorf("time field %q is not RFC 3339", truncate(s, 40))
	}
	if t.Year() < 1678 || t.Year() > 2261 {
		return 0, fmt.Errorf("time field %q is out of the int64 ns range", truncate(s, 40))
	}
	return checkTime(t.UnixNano())
}

func (d *decoder) numberTime(lit string) (int64, error) {
	if d.unitExp == -1 {
		return 0, fmt.Errorf("time field is the number %s, but time unit is rfc3339", truncate(lit, 40))
	}
	ns, err := scaleDecimal(lit, d.unitExp)
	if err != nil {
		return 0, fmt.Errorf("time field: %v", err)
	}
	return checkTime(ns)
}

func checkTime(ns int64) (int64, error) {
	if ns <= 0 {
		return 0, fmt.Errorf("time field %d ns is not a time after the Unix epoch", ns)
	}
	return ns, nil
}

// scaleDecimal returns the decimal number literal lit (JSON number syntax)
// times 10^exp10, truncated toward zero to an integer, without going
// through float64: a time in seconds with nine decimals keeps every
// nanosecond.
func scaleDecimal(lit string, exp10 int) (int64, error) {
	s := lit
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	mant, expPart, hasExp := s, "", false
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mant, expPart, hasExp = s[:i], s[i+1:], true
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	digits := intPart + frac
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a decimal number", truncate(lit, 40))
	}
	point := len(intPart) + exp10
	if hasExp {
		e, err := strconv.Atoi(expPart)
		if err != nil || e > 1000 || e < -1000 {
			return 0, fmt.Errorf("%q: exponent out of range", truncate(lit, 40))
		}
		point += e
	}
	digits = strings.TrimLeft(digits, "0")
	point -= len(intPart+frac) - len(digits)
	if digits == "" || point <= 0 {
		return 0, nil
	}
	if point > 19 {
		return 0, fmt.Errorf("%q overflows int64 ns", truncate(lit, 40))
	}
	var whole string
	if point >= len(digits) {
		whole = digits + strings.Repeat("0", point-len(digits))
	} else {
		whole = digits[:point]
	}
	v, err := strconv.ParseInt(whole, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q overflows int64 ns", truncate(lit, 40))
	}
	if neg {
		v = -v
	}
	return v, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
