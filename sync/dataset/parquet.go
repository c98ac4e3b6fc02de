package dataset

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/parquet-go/parquet-go"
)

// colType is a parquet column type used by the dataset tables.
type colType int

const (
	tFloat32 colType = iota
	tFloat64
	tInt64
	tBool
	tString
	tListFloat32
	tListFloat64
	tListString
)

type column struct {
	name string
	typ  colType
}

func (t colType) node() parquet.Node {
	switch t {
	case tFloat32:
		return parquet.Leaf(parquet.FloatType)
	case tFloat64:
		return parquet.Leaf(parquet.DoubleType)
	case tInt64:
		return parquet.Int(64)
	case tBool:
		return parquet.Leaf(parquet.BooleanType)
	case tString:
		return parquet.String()
	case tListFloat32:
		return parquet.List(parquet.Leaf(parquet.FloatType))
	case tListFloat64:
		return parquet.List(parquet.Leaf(parquet.DoubleType))
	case tListString:
		return parquet.List(parquet.String())
	}
	panic("dataset: unknown column type")
}

// writeParquet writes rows (one map per row, every column present)
// atomically to path, with optional key-value metadata.
func writeParquet(path string, cols []column, rows []map[string]any, kv map[string]string) error {
	g := parquet.Group{}
	for _, c := range cols {
		g[c.name] = c.typ.node()
	}
	schema := parquet.NewSchema("schema", g)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	opts := []parquet.WriterOption{schema, parquet.Compression(&parquet.Snappy), parquet.CreatedBy("episoded", "", "")}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		opts = append(opts, parquet.KeyValueMetadata(k, kv[k]))
	}
	w := parquet.NewGenericWriter[any](f, opts...)
	batch := make([]any, 0, 1024)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := w.Write(batch)
		batch = batch[:0]
		return err
	}
	for _, r := range rows {
		if len(r) != len(cols) {
			err = fmt.Errorf("row has %d columns, schema %d", len(r), len(cols))
			break
		}
		batch = append(batch, r)
		if len(batch) == cap(batch) {
			if err = flush(); err != nil {
				break
			}
		}
	}
	if err == nil {
		err = flush()
	}
	if err == nil {
		err = w.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

// readParquet reads every row of a file as maps, converting values to
// the column types the dataset writes (lists come back as slices).
func readParquet(path string) ([]map[string]any, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	types := map[string]colType{}
	for _, fl := range pf.Schema().Fields() {
		types[fl.Name()] = typeOfNode(fl)
	}
	r := parquet.NewGenericReader[any](f, pf.Schema())
	defer r.Close()
	var out []map[string]any
	buf := make([]any, 256)
	for {
		n, err := r.Read(buf)
		for _, v := range buf[:n] {
			m, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("read %s: row is %T", path, v)
			}
			for k, x := range m {
				m[k] = convert(x, types[k])
			}
			out = append(out, m)
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if n == 0 {
			return out, nil
		}
	}
}

func typeOfNode(n parquet.Field) colType {
	if n.Leaf() {
		switch n.Type().Kind() {
		case parquet.Float:
			return tFloat32
		case parquet.Double:
			return tFloat64
		case parquet.Int64:
			return tInt64
		case parquet.Boolean:
			return tBool
		}
		return tString
	}
	// LIST: list.element
	el := n.Fields()[0].Fields()[0]
	switch el.Type().Kind() {
	case parquet.Float:
		return tListFloat32
	case parquet.Double:
		return tListFloat64
	}
	return tListString
}

func convert(x any, t colType) any {
	switch t {
	case tListFloat32, tListFloat64, tListString:
		var items []any
		switch v := x.(type) {
		case []any:
			items = v
		case map[string]any: // {"list": [{"element": v}...]}
			if l, ok := v["list"].([]any); ok {
				for _, e := range l {
					if em, ok := e.(map[string]any); ok {
						items = append(items, em["element"])
					} else {
						items = append(items, e)
					}
				}
			}
		}
		switch t {
		case tListFloat32:
			out := make([]float32, len(items))
			for i, e := range items {
				out[i] = toF32(e)
			}
			return out
		case tListFloat64:
			out := make([]float64, len(items))
			for i, e := range items {
				out[i] = float64(toF64(e))
			}
			return out
		default:
			out := make([]string, len(items))
			for i, e := range items {
				out[i] = fmt.Sprint(e)
			}
			return out
		}
	case tFloat32:
		return toF32(x)
	case tFloat64:
		return toF64(x)
	case tInt64:
		switch v := x.(type) {
		case int64:
			return v
		case int32:
			return int64(v)
		case int:
			return int64(v)
		}
	case tString:
		switch v := x.(type) {
		case []byte:
			return string(v)
		case string:
			return v
		}
	}
	return x
}

func toF32(x any) float32 {
	switch v := x.(type) {
	case float32:
		return v
	case float64:
		return float32(v)
	}
	return 0
}

func toF64(x any) float64 {
	switch v := x.(type) {
	case float32:
		return float64(v)
	case float64:
		return v
	}
	return 0
}
