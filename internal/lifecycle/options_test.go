package lifecycle

import (
	"strings"
	"testing"
	"time"
)

// TestOptionsValidate: every problem is reported at once; defaults fill
// the quality thresholds and are idempotent.
func TestOptionsValidate(t *testing.T) {
	o := Options{
		Cells:   []CellOptions{{ID: "c1", Postroll: -time.Second, MinCoverage: 2, GapFactor: 0.5, MaxDuration: time.Millisecond}, {ID: "c1"}, {ID: ""}},
		Devices: []Device{{ID: "cam", Cell: "c9"}, {ID: "cam"}, {Rate: -1}},
	}
	o.EnsureDefaults()
	err := o.Validate()
	if err == nil {
		t.Fatal("invalid options accepted")
	}
	for _, want := range []string{`cell "c1": postroll: must not be negative`, "quality.min_coverage: 2 is not between 0 and 1", "gap_factor: must be at least 1 (got 0.5)",
		"max_duration: must be at least 1s", `cell "c1": duplicate id`, "id: is required",
		`device "cam": unknown cell "c9"`, `device "cam": duplicate id`, "device: id required", "rate -1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	var c CellOptions
	c.EnsureDefaults()
	c.EnsureDefaults()
	if c.GapFactor != DefaultGapFactor || c.MinCoverage != DefaultMinCoverage || c.MaxAlignmentBound != DefaultMaxAlignmentBound {
		t.Fatalf("defaults %+v", c)
	}
	good := Options{Cells: []CellOptions{{ID: "c1"}}, Devices: []Device{{ID: "cam", Cell: "c1", Stream: "c1/cam"}}}
	good.EnsureDefaults()
	if err := good.Validate(); err != nil || good.Devices[0].Conn != "cam" || good.SyncInterval != DefaultSyncInterval {
		t.Fatalf("good options: %v %+v", err, good)
	}
}
