package mqtt

import "testing"

func TestMatchFilter(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a/", true},
		{"a/+/c", "a/b/c", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"+", "a", true},
		{"+", "a/b", false},
		{"+/+", "/a", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/+/#", "a", false},
		{"a/b/c", "a/b", false},
	} {
		if got := matchFilter(tc.filter, tc.topic); got != tc.want {
			t.Errorf("matchFilter(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestValidFilter(t *testing.T) {
	for f, want := range map[string]bool{
		"a/b": true, "a/+/c": true, "#": true, "a/#": true, "+": true,
		"": false, "a/#/b": false, "a#": false, "a/b+": false, "a\x00b": false,
	} {
		if got := validFilter(f); got != want {
			t.Errorf("validFilter(%q) = %v, want %v", f, got, want)
		}
	}
}

func TestTemplate(t *testing.T) {
	for _, tc := range []struct {
		tmpl, topic, want string
	}{
		{"{topic}", "cell1/robot1/joints", "cell1/robot1/joints"},
		{"{1}/{2}", "cell1/robot1/joints", "cell1/robot1"},
		{"cell1/{2}/{3}", "factory/robot1/joints", "cell1/robot1/joints"},
		{"x/{topic}", "a/b", "x/a/b"},
		{"fixed", "a/b", "fixed"},
		{"{5}", "a/b", "a/b"}, // empty expansion falls back to the topic
		{"{1}-{4}", "a/b", "a-"},
	} {
		tp, err := parseTemplate(tc.tmpl)
		if err != nil {
			t.Fatalf("parseTemplate(%q): %v", tc.tmpl, err)
		}
		if got := tp.expand(tc.topic); got != tc.want {
			t.Errorf("%q.expand(%q) = %q, want %q", tc.tmpl, tc.topic, got, tc.want)
		}
	}
	for _, bad := range []string{"", "{", "}", "{0}", "{x}", "a{1", "{-1}"} {
		if _, err := parseTemplate(bad); err == nil {
			t.Errorf("parseTemplate(%q): no error", bad)
		}
	}
}
