package glob

import "testing"

func TestMatchAcrossSlash(t *testing.T) {
	for _, c := range []struct {
		pat, name string
		want      bool
	}{
		{"cell1/*", "cell1/robot1/joint_states", true},
		{"cell1/*", "cell1/cam0", true},
		{"cell1/*", "cell2/cam0", false},
		{"*/joint_states", "cell1/robot1/joint_states", true},
		{"cell?/cam[0-1]", "cell1/cam1", true},
		{"cell1/cam[2-3]", "cell1/cam1", false},
		{"[", "x", false},
	} {
		if got := Match(c.pat, c.name); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pat, c.name, got, c.want)
		}
	}
	if Validate("[") == nil {
		t.Error(`Validate("[") = nil, want an error`)
	}
}
