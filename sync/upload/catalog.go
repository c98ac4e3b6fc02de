package upload

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/provenance"
	"github.com/episoded/episoded/internal/signing"
	"github.com/episoded/episoded/sync/catalog"
)

// Signer signs a manifest; *signing.Key implements it.
type Signer interface {
	Sign(doc []byte) (signing.Signature, error)
}

// ProvenanceFunc gives an episode's provenance block.
type ProvenanceFunc = func(episode.Episode) *provenance.Provenance

// encodeManifest completes m with what this file adds (operator,
// provenance), signs it when a signer is set, and returns manifest.json.
func (u *Uploader) encodeManifest(m *Manifest, e episode.Episode) ([]byte, error) {
	m.Operator = e.Operator
	if u.o.Provenance != nil {
		m.Provenance = u.o.Provenance(e)
	}
	m.Signature = nil
	if u.o.Signer != nil {
		body, err := json.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("encode manifest: %w", err)
		}
		sig, err := u.o.Signer.Sign(body)
		if err != nil {
			return nil, fmt.Errorf("sign manifest: %w", err)
		}
		m.Signature = &sig
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return append(data, '\n'), nil
}

// CatalogRow is the catalog row of an uploaded manifest; manifest is the
// manifest.json bytes as stored at manKey.
func CatalogRow(m Manifest, manKey string, manifest []byte) catalog.Row {
	sum := sha256.Sum256(manifest)
	r := catalog.Row{
		ID: m.Episode, Gateway: m.Gateway, Cell: m.Cell, Task: m.Task, Robot: m.Robot, Operator: m.Operator,
		Labels:    m.Labels,
		StartTime: catalog.Micros(m.Start), EndTime: catalog.Micros(m.Stop), StartNs: m.Start, EndNs: m.Stop,
		DurationS:      float64(m.Stop-m.Start) / 1e9,
		QualityReasons: []catalog.Reason{},
		Streams:        []catalog.Stream{},
		Objects:        []string{},
		ManifestKey:    manKey, ManifestSHA256: hex.EncodeToString(sum[:]),
		UploadedAt: catalog.Micros(m.Uploaded),
	}
	if r.Labels == nil {
		r.Labels = map[string]string{}
	}
	for _, o := range m.Objects {
		r.Bytes += o.Size
		r.Objects = append(r.Objects, o.Key)
	}
	// Coverage is measured by the recorders that give a verdict; for
	// manifests without one it stays null rather than a false 0.
	measured := m.Verdict != nil
	if measured {
		r.QualityStatus = m.Verdict.Status
		for _, re := range m.Verdict.Reasons {
			r.QualityReasons = append(r.QualityReasons, catalog.Reason{Stream: re.Stream, Code: re.Code, Detail: re.Detail})
		}
	}
	for _, q := range m.Quality {
		st := catalog.Stream{
			Name: q.Stream, Kind: q.Kind, Codec: q.Codec, Count: int64(q.Samples), Bytes: int64(q.Bytes),
			AlignmentBoundMs: q.AlignmentErrorBoundMs, ClockSource: cmp.Or(q.Clock.ClockSource, q.Clock.Mode), Gaps: int64(q.Gaps),
		}
		if measured {
			c := q.Coverage
			st.Coverage = &c
			if r.Coverage == nil || c < *r.Coverage {
				r.Coverage = &c
			}
		}
		r.Streams = append(r.Streams, st)
	}
	if p := m.Provenance; p != nil {
		r.SoftwareVer, r.SoftwareCommit = p.Software.Version, p.Software.Commit
	}
	if m.Signature != nil {
		r.SigningKeyID = m.Signature.KeyID
	}
	return r
}

// writeCatalog writes the episode's catalog row after its manifest. With
// onlyIfMissing it leaves an existing row file alone.
func (u *Uploader) writeCatalog(ctx context.Context, m Manifest, manKey string, manifest []byte, onlyIfMissing bool) error {
	key := catalog.Key(u.o.Target.Prefix, m.Site, m.Gateway, m.Episode, m.Start)
	if onlyIfMissing {
		if _, err := u.target.stat(ctx, key); err == nil {
			return nil
		} else if !errors.Is(err, errNotExist) {
			return err
		}
	}
	data, err := catalog.Encode([]catalog.Row{CatalogRow(m, manKey, manifest)})
	if err != nil {
		return &failedError{err: err}
	}
	return u.target.putBytes(ctx, key, data, "application/vnd.apache.parquet")
}

// ensureCatalog writes the catalog row of an episode whose manifest is
// already on the target, if the row is missing.
func (u *Uploader) ensureCatalog(ctx context.Context, manKey string) error {
	data, err := u.target.get(ctx, manKey, 16<<20)
	if err != nil {
		return err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("parse %s: %w", manKey, err)
	}
	return u.writeCatalog(ctx, m, manKey, data, true)
}
