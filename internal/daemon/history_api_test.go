package daemon_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/episoded/episoded/internal/daemon"
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"github.com/episoded/episoded/internal/testwait"
)

// TestHistoryServed: a running daemon samples at once and serves the
// history on GET /v1/history with the read token.
func TestHistoryServed(t *testing.T) {
	_, base := daemontest.Start(t, accessConfig(t, fmt.Sprintf(`{listen: "127.0.0.1:0", token: %q, read_token: %q}`, adminToken, readToken)), nil)
	var h daemon.HistoryJSON
	testwait.For(t, 30*time.Second, "a history point", func() bool {
		req, _ := http.NewRequest("GET", base+"/v1/history", nil)
		req.Header.Set("Authorization", "Bearer "+readToken)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(res.Body).Decode(&h)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("GET /v1/history: %s, %v", res.Status, err)
		}
		return len(h.T) > 0
	})
	if h.IntervalSeconds != 10 || h.SpanSeconds != 900 || len(h.DiskUsedBytes) != len(h.T) || h.DiskUsedBytes[0] <= 0 ||
		h.DiskLimitBytes[0] < h.DiskUsedBytes[0] || len(h.UploadBacklogBytes) != len(h.T) || h.UploadBacklogBytes[0] == nil {
		t.Errorf("history %+v", h)
	}
}
