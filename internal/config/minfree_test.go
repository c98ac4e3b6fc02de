package config

import "testing"

// TestMinFreeZeroIsZero: an explicit min_free of 0 stays 0; only a missing
// key takes the default.
func TestMinFreeZeroIsZero(t *testing.T) {
	for _, c := range []struct {
		yaml string
		want ByteSize
	}{
		{"gateway: {id: gw1, site: s}\nstorage: {min_free: 0}\n", 0},
		{"gateway: {id: gw1, site: s}\nstorage: {min_free: 10MiB}\n", 10 << 20},
		{"gateway: {id: gw1, site: s}\n", DefaultMinFree},
	} {
		cfg, err := Parse("t.yaml", []byte(c.yaml), env(nil))
		if err != nil {
			t.Fatal(err)
		}
		if got := *cfg.Storage.MinFree; got != c.want {
			t.Errorf("%q: min_free %s, want %s", c.yaml, got, c.want)
		}
	}
}
