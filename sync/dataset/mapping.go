package dataset

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Gap policies: what a row with no sample for a required feature within
// tolerance becomes.
const (
	PolicyFillPrevious = "fill-previous"
	PolicySplit        = "split"
	PolicyDropEpisode  = "drop-episode"
)

// Mapping says how an episode's streams become a LeRobot dataset's
// features. It is read from YAML (see docs/DATASETS.md).
type Mapping struct {
	// FPS is the dataset's frame rate: row k of an episode is at
	// start + k/FPS. Required.
	FPS int `yaml:"fps"`
	// RobotType goes to meta/info.json.
	RobotType string `yaml:"robot_type"`
	// Task is the task text of every episode; empty means the episode's
	// own task (the manifest's "task"), else "unspecified".
	Task string `yaml:"task"`
	// Tolerance is how far from a row's grid time a telemetry sample may
	// be and still be used. Default 20ms.
	Tolerance Duration `yaml:"tolerance"`
	// VideoTolerance is how far a camera frame may be from its row's grid
	// time. Default half a frame period (1/(2·FPS)).
	VideoTolerance Duration `yaml:"video_tolerance"`
	// Missing is the policy for rows without a sample within tolerance:
	// fill-previous (default), split or drop-episode.
	Missing string `yaml:"missing"`
	// Codec is the re-encode codec: auto (AV1 when ffmpeg has libsvtav1,
	// else H.264; the default), h264 or av1.
	Codec string `yaml:"codec"`
	// State makes observation.state, in the order given.
	State []Field `yaml:"state"`
	// Action makes action.
	Action Action `yaml:"action"`
	// Cameras become observation.images.<name>.
	Cameras []Camera `yaml:"cameras"`
}

// Action is either fields of their own or the next row's state.
type Action struct {
	// NextState: action at row k is observation.state at row k+1 (the
	// last row repeats its own state).
	NextState bool    `yaml:"next_state"`
	Fields    []Field `yaml:"fields"`
}

// Field takes one or more numbers from a telemetry topic.
type Field struct {
	// Topic is the MCAP topic (the MQTT topic for telemetry).
	Topic string `yaml:"topic"`
	// Path is a dotted path into the JSON message ("position",
	// "header.stamp", "pose.x"). An array gives one value per element, a
	// bool gives 0 or 1.
	Path string `yaml:"field"`
	// Names name the values; default "<last path element>[i]" for arrays,
	// else the last path element.
	Names []string `yaml:"names"`
	// Interpolate is "nearest" (default) or "linear".
	Interpolate string `yaml:"interpolate"`
	// Tolerance overrides Mapping.Tolerance for this field.
	Tolerance Duration `yaml:"tolerance"`
}

// Camera maps a video stream to observation.images.<Name>.
type Camera struct {
	// Stream is the episoded stream id ("cell1/cam1"), which is also the
	// MCAP topic of its video channel.
	Stream string `yaml:"stream"`
	// Name is the feature's last key element; no "/" or ".".
	Name string `yaml:"name"`
}

// Duration is a time.Duration written as "20ms" in YAML.
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// LoadMapping reads and validates a mapping file.
func LoadMapping(path string) (*Mapping, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mapping: %w", err)
	}
	m, err := ParseMapping(b)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", path, err)
	}
	return m, nil
}

// ParseMapping parses YAML strictly (unknown keys are errors), fills in
// defaults and validates.
func ParseMapping(b []byte) (*Mapping, error) {
	var m Mapping
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	m.EnsureDefaults()
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Defaults for Mapping.
const (
	DefaultTolerance   = 20 * time.Millisecond
	DefaultMissing     = PolicyFillPrevious
	DefaultCodec       = "auto"
	DefaultInterpolate = "nearest"
)

// EnsureDefaults fills in the documented defaults. It is idempotent.
func (m *Mapping) EnsureDefaults() {
	if m.Tolerance == 0 {
		m.Tolerance = Duration(DefaultTolerance)
	}
	if m.VideoTolerance == 0 && m.FPS > 0 {
		m.VideoTolerance = Duration(time.Second / time.Duration(2*m.FPS))
	}
	if m.Missing == "" {
		m.Missing = DefaultMissing
	}
	if m.Codec == "" {
		m.Codec = DefaultCodec
	}
	for _, fs := range [][]Field{m.State, m.Action.Fields} {
		for i := range fs {
			if fs[i].Interpolate == "" {
				fs[i].Interpolate = DefaultInterpolate
			}
			if fs[i].Tolerance == 0 {
				fs[i].Tolerance = m.Tolerance
			}
		}
	}
}

// Validate reports every problem at once.
func (m *Mapping) Validate() error {
	var errs []error
	bad := func(f string, a ...any) { errs = append(errs, fmt.Errorf(f, a...)) }
	if m.FPS <= 0 || m.FPS > 1000 {
		bad("fps: must be 1..1000, got %d", m.FPS)
	}
	switch m.Missing {
	case PolicyFillPrevious, PolicySplit, PolicyDropEpisode:
	default:
		bad("missing: %q is not fill-previous, split or drop-episode", m.Missing)
	}
	switch m.Codec {
	case "auto", "h264", "av1":
	default:
		bad("codec: %q is not auto, h264 or av1", m.Codec)
	}
	if len(m.State) == 0 {
		bad("state: at least one field is needed")
	}
	if m.Action.NextState && len(m.Action.Fields) > 0 {
		bad("action: next_state and fields are exclusive")
	}
	if !m.Action.NextState && len(m.Action.Fields) == 0 {
		bad("action: give fields or next_state: true")
	}
	check := func(what string, fs []Field) {
		for i, f := range fs {
			if f.Topic == "" || f.Path == "" {
				bad("%s[%d]: topic and field are required", what, i)
			}
			if f.Interpolate != "nearest" && f.Interpolate != "linear" {
				bad("%s[%d]: interpolate %q is not nearest or linear", what, i, f.Interpolate)
			}
			if f.Tolerance < 0 {
				bad("%s[%d]: negative tolerance", what, i)
			}
		}
	}
	check("state", m.State)
	check("action.fields", m.Action.Fields)
	seen := map[string]bool{}
	for i, c := range m.Cameras {
		if c.Stream == "" || c.Name == "" {
			bad("cameras[%d]: stream and name are required", i)
		}
		if strings.ContainsAny(c.Name, "/. ") {
			bad("cameras[%d]: name %q must not contain '/', '.' or spaces", i, c.Name)
		}
		if seen[c.Name] {
			bad("cameras[%d]: name %q used twice", i, c.Name)
		}
		seen[c.Name] = true
	}
	if m.Tolerance < 0 || m.VideoTolerance < 0 {
		bad("tolerance: must not be negative")
	}
	return errors.Join(errs...)
}

// CameraKey is the feature key of a camera.
func CameraKey(name string) string { return "observation.images." + name }
