package export

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"sort"

	"github.com/fxamacker/cbor/v2"
)

// cborDec decodes telemetry with bounds, so a hostile payload cannot blow
// up the export; maps decode with string keys where possible.
var cborDec = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		MaxNestedLevels:  64,
		MaxArrayElements: 1 << 20,
		MaxMapPairs:      1 << 20,
		DefaultMapType:   nil,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// cborToJSON converts one CBOR item to JSON. Map keys become strings (text
// keys as is, other keys formatted with %v); byte strings become base64
// strings; tags are unwrapped to their content; NaN and infinities, which
// JSON cannot carry, become null. json.Marshal sorts map keys, so the output
// is deterministic.
func cborToJSON(payload []byte) ([]byte, error) {
	var v any
	if err := cborDec.Unmarshal(payload, &v); err != nil {
		return nil, fmt.Errorf("decode cbor: %w", err)
	}
	return json.Marshal(jsonable(v))
}

func jsonable(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(x))
		keys := make([]string, 0, len(x))
		vals := make(map[string]any, len(x))
		for k, val := range x {
			ks, ok := k.(string)
			if !ok {
				ks = fmt.Sprintf("%v", k)
			}
			keys = append(keys, ks)
			vals[ks] = val
		}
		sort.Strings(keys)
		for _, k := range keys {
			m[k] = jsonable(vals[k])
		}
		return m
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, val := range x {
			m[k] = jsonable(val)
		}
		return m
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonable(e)
		}
		return out
	case cbor.Tag:
		return jsonable(x.Content)
	case cbor.RawTag:
		return nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil
		}
		return x
	case float32:
		f := float64(x)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil
		}
		return f
	case big.Int:
		return json.Number(x.String())
	case *big.Int:
		return json.Number(x.String())
	case cbor.SimpleValue:
		return int(x)
	default:
		return v
	}
}
