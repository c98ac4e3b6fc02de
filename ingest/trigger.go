package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Trigger actions.
const (
	ActionStart = "start"
	ActionStop  = "stop"
)

// Limits on trigger messages and start requests.
const (
	MaxTriggerBytes = 64 << 10
	maxTextLen      = 256
	maxLabels       = 64
	maxLabelLen     = 256
)

// ErrBadTrigger wraps every reason a trigger message is refused.
var ErrBadTrigger = errors.New("ingest: bad trigger message")

// Trigger is one start/stop message from a cell's MQTT trigger topic. The
// schema is in the package documentation.
type Trigger struct {
	Action   string            `json:"action"`
	Task     string            `json:"task,omitempty"`
	Operator string            `json:"operator,omitempty"`
	Robot    string            `json:"robot,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Priority bool              `json:"priority,omitempty"`
}

// ParseTrigger decodes and checks one trigger message. Every error wraps
// ErrBadTrigger; the message says what is wrong without echoing the
// payload.
func ParseTrigger(payload []byte) (Trigger, error) {
	var t Trigger
	if len(payload) > MaxTriggerBytes {
		return t, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBadTrigger, len(payload), MaxTriggerBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return Trigger{}, fmt.Errorf("%w: %v", ErrBadTrigger, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Trigger{}, fmt.Errorf("%w: trailing data after the JSON object", ErrBadTrigger)
	}
	switch t.Action {
	case ActionStart, ActionStop:
	case "":
		return Trigger{}, fmt.Errorf("%w: missing action (want %q or %q)", ErrBadTrigger, ActionStart, ActionStop)
	default:
		return Trigger{}, fmt.Errorf("%w: unknown action %.32q (want %q or %q)", ErrBadTrigger, t.Action, ActionStart, ActionStop)
	}
	if err := t.Request().Validate(); err != nil {
		return Trigger{}, fmt.Errorf("%w: %w", ErrBadTrigger, err)
	}
	return t, nil
}

// Request returns the start request the trigger carries, with trigger
// "mqtt".
func (t Trigger) Request() StartRequest {
	return StartRequest{Task: t.Task, Operator: t.Operator, Robot: t.Robot, Labels: t.Labels, Priority: t.Priority, Trigger: TriggerMQTT}
}

// StartRequest is the metadata of an episode start, from the API or MQTT.
type StartRequest struct {
	Task     string
	Operator string
	Robot    string
	Labels   map[string]string
	Priority bool
	// Trigger is what started the episode: TriggerAPI or TriggerMQTT.
	// Empty means TriggerAPI.
	Trigger string
}

// Validate checks the sizes and encoding of the metadata.
func (r StartRequest) Validate() error {
	var errs []error
	for _, f := range []struct{ name, v string }{{"task", r.Task}, {"operator", r.Operator}, {"robot", r.Robot}} {
		if len(f.v) > maxTextLen {
			errs = append(errs, fmt.Errorf("%s: longer than %d bytes", f.name, maxTextLen))
		}
		if !utf8.ValidString(f.v) {
			errs = append(errs, fmt.Errorf("%s: not valid UTF-8", f.name))
		}
	}
	if len(r.Labels) > maxLabels {
		errs = append(errs, fmt.Errorf("labels: more than %d", maxLabels))
	}
	for k, v := range r.Labels {
		if k == "" {
			errs = append(errs, errors.New("labels: empty key"))
		}
		if len(k) > maxLabelLen || len(v) > maxLabelLen {
			errs = append(errs, fmt.Errorf("labels: key or value longer than %d bytes", maxLabelLen))
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			errs = append(errs, errors.New("labels: not valid UTF-8"))
		}
	}
	switch r.Trigger {
	case "", TriggerAPI, TriggerMQTT:
	default:
		errs = append(errs, fmt.Errorf("trigger %q: want %q or %q", r.Trigger, TriggerAPI, TriggerMQTT))
	}
	return errors.Join(errs...)
}
