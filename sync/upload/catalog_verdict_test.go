package upload

import (
	"testing"

	"github.com/episoded/episoded/episode"
)

// TestCatalogRowVerdict: the catalog row carries the manifest's verdict and
// reasons, each stream's coverage and the worst one; a manifest without a
// verdict leaves them empty and null.
func TestCatalogRowVerdict(t *testing.T) {
	m := Manifest{Episode: "e1", Quality: []episode.StreamReport{
		{Stream: "c1/cam", Coverage: 0.5}, {Stream: "c1/joints", Coverage: 1},
	}, Verdict: &episode.Verdict{Status: episode.QualityDegraded, Reasons: []episode.Reason{
		{Stream: "c1/cam", Code: episode.ReasonLowCoverage, Detail: "coverage 0.5 below 0.99"},
	}}}
	r := CatalogRow(m, "k", []byte("{}"))
	if r.QualityStatus != "degraded" || len(r.QualityReasons) != 1 || r.QualityReasons[0].Code != "low_coverage" ||
		r.QualityReasons[0].Stream != "c1/cam" || r.Coverage == nil || *r.Coverage != 0.5 ||
		r.Streams[0].Coverage == nil || *r.Streams[0].Coverage != 0.5 || *r.Streams[1].Coverage != 1 {
		t.Fatalf("row %+v", r)
	}
	m.Verdict = nil
	r = CatalogRow(m, "k", []byte("{}"))
	if r.QualityStatus != "" || len(r.QualityReasons) != 0 || r.Coverage != nil || r.Streams[0].Coverage != nil {
		t.Fatalf("row without a verdict %+v", r)
	}
}
