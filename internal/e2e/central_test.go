package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/episoded/episoded/episode"
	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/signing"
	"github.com/episoded/episoded/sync/catalog"
	"github.com/episoded/episoded/sync/upload"
)

// checkSigned checks that an uploaded manifest is signed by the gateway's
// key, carries provenance read as the episode closed, and that its catalog
// row is next to the day's others.
func checkSigned(t *testing.T, central string, cfg *config.Config, e episode.Episode) {
	t.Helper()
	objDir := filepath.Join(central, filepath.FromSlash(upload.Dir(cfg.Sync.Target.Prefix, cfg.Gateway.Site, cfg.Gateway.ID, e)))
	raw, err := os.ReadFile(filepath.Join(objDir, upload.ObjectManifest))
	if err != nil {
		t.Fatalf("manifest: %v", err)
	}
	var man upload.Manifest
	if err := json.Unmarshal(raw, &man); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if _, _, err := signing.Verify(raw); err != nil {
		t.Errorf("manifest signature: %v", err)
	}
	if p := man.Provenance; p == nil || p.TimeSync == nil || p.TimeSync.ReadWhen != "close" || len(p.Streams) != len(man.Quality) || len(p.Devices) != len(cfg.Devices) {
		t.Errorf("manifest provenance: %+v", man.Provenance)
	}
	if _, err := os.Stat(filepath.Join(central, filepath.FromSlash(catalog.Key(cfg.Sync.Target.Prefix, cfg.Gateway.Site, cfg.Gateway.ID, e.ID, e.Start)))); err != nil {
		t.Errorf("catalog row: %v", err)
	}
}
