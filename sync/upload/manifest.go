package upload

import (
	"fmt"
	"path"
	"time"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/provenance"
	"github.com/episoded/episoded/internal/signing"
)

// Object names inside an episode's directory.
const (
	ObjectMCAP     = "episode.mcap"
	ObjectManifest = "manifest.json"
)

// ManifestFormat identifies the layout of manifest.json.
const ManifestFormat = "episoded.upload/v1"

// Manifest is manifest.json: written last, it marks the episode's upload
// as complete and lets the central pipeline check every object.
type Manifest struct {
	Format   string `json:"format"`
	Episode  string `json:"episode"`
	Site     string `json:"site"`
	Gateway  string `json:"gateway"`
	Cell     string `json:"cell"`
	Task     string `json:"task,omitempty"`
	Robot    string `json:"robot,omitempty"`
	Operator string `json:"operator,omitempty"`
	// Start and Stop are the episode's trigger times (ns since the epoch).
	Start   int64             `json:"start_ns"`
	Stop    int64             `json:"stop_ns"`
	Labels  map[string]string `json:"labels,omitempty"`
	Objects []ManifestObject  `json:"objects"`
	Counts  Counts            `json:"counts"`
	// Quality is the episode's per-stream quality report.
	Quality []episode.StreamReport `json:"quality"`
	// Verdict is the episode's quality verdict (ok or degraded, and why);
	// absent for episodes closed before verdicts existed.
	Verdict *episode.Verdict `json:"verdict,omitempty"`
	// Video states per camera where its video really starts.
	Video []VideoStart `json:"video,omitempty"`
	// Uploaded is the gateway wall-clock time the manifest was written.
	Uploaded int64 `json:"uploaded_ns"`
	// Provenance says what recorded the episode and under which
	// conditions (software, config hash, devices, clocks, time sync).
	Provenance *provenance.Provenance `json:"provenance,omitempty"`
	// Signature is the gateway's Ed25519 signature over every other
	// member, object sha256 values included (internal/signing).
	Signature *signing.Signature `json:"signature,omitempty"`
}

// ManifestObject is one uploaded object.
type ManifestObject struct {
	Name   string `json:"name"`
	Key    string `json:"key"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Counts are the episode's sample counts from its quality report.
type Counts struct {
	Samples uint64            `json:"samples"`
	Bytes   uint64            `json:"bytes"`
	Streams map[string]uint64 `json:"streams"`
}

// Dir returns the object directory of an episode:
// <prefix>/<site>/<gateway>/<yyyy>/<mm>/<dd>/<episode-id>, the date taken
// from the episode start in UTC. An empty prefix is left out.
func Dir(prefix, site, gateway string, e episode.Episode) string {
	t := time.Unix(0, e.Start).UTC()
	d := path.Join(site, gateway, fmt.Sprintf("%04d", t.Year()), fmt.Sprintf("%02d", int(t.Month())), fmt.Sprintf("%02d", t.Day()), e.ID)
	if prefix != "" {
		d = path.Join(prefix, d)
	}
	return d
}

func countsOf(e episode.Episode) Counts {
	c := Counts{Streams: map[string]uint64{}}
	for _, q := range e.Quality {
		c.Samples += q.Samples
		c.Bytes += q.Bytes
		c.Streams[q.Stream] = q.Samples
	}
	return c
}
