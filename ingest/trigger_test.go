package ingest

import (
	"errors"
	"strings"
	"testing"
)

func TestParseTrigger(t *testing.T) {
	good := []struct {
		in   string
		want Trigger
	}{
		{`{"action":"start"}`, Trigger{Action: "start"}},
		{`{"action":"stop"}`, Trigger{Action: "stop"}},
		{` {"action":"start","task":"pick","operator":"ana","robot":"r1","labels":{"shift":"a","line":"3"},"priority":true} `,
			Trigger{Action: "start", Task: "pick", Operator: "ana", Robot: "r1", Labels: map[string]string{"shift": "a", "line": "3"}, Priority: true}},
	}
	for _, tc := range good {
		got, err := ParseTrigger([]byte(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if got.Action != tc.want.Action || got.Task != tc.want.Task || got.Operator != tc.want.Operator || got.Robot != tc.want.Robot ||
			got.Priority != tc.want.Priority || len(got.Labels) != len(tc.want.Labels) {
			t.Errorf("%s: got %+v, want %+v", tc.in, got, tc.want)
		}
		for k, v := range tc.want.Labels {
			if got.Labels[k] != v {
				t.Errorf("%s: label %s = %q", tc.in, k, got.Labels[k])
			}
		}
		if r := got.Request(); r.Trigger != TriggerMQTT || r.Task != tc.want.Task {
			t.Errorf("request %+v", r)
		}
	}
	bad := []struct{ in, msg string }{
		{``, "EOF"},
		{`[]`, "cannot unmarshal"},
		{`{"action":"START"}`, "unknown action"},
		{`{"task":"x"}`, "missing action"},
		{`{"action":"start","opertor":"x"}`, "unknown field"},
		{`{"action":"start"}{}`, "trailing data"},
		{`{"action":"start","priority":"yes"}`, "cannot unmarshal"},
		{`{"action":"start","labels":{"k":1}}`, "cannot unmarshal"},
		{`{"action":"start","labels":{"":"v"}}`, "empty key"},
		{`{"action":"start","task":"` + strings.Repeat("x", 300) + `"}`, "task: longer than"},
		{`{"action":"start","task":"` + strings.Repeat("x", MaxTriggerBytes) + `"}`, "the limit is"},
	}
	for _, tc := range bad {
		_, err := ParseTrigger([]byte(tc.in))
		if err == nil || !errors.Is(err, ErrBadTrigger) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%.60s: error %v, want ErrBadTrigger containing %q", tc.in, err, tc.msg)
		}
	}
}
