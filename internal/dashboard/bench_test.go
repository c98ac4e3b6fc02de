package dashboard

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkHandler serves app.js through Handler and, as the baseline in
// the same run, through a bare http.FileServerFS over the same embedded
// files; it reports Handler's cost as a ratio to the baseline (the price of
// the CSP, ETag and path checks).
func BenchmarkHandler(b *testing.B) {
	serve := func(b *testing.B, h http.Handler) float64 {
		req := httptest.NewRequest("GET", "/app.js", nil)
		b.ResetTimer()
		for b.Loop() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("status %d", rec.Code)
			}
		}
		return float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	}
	var base, ours float64
	b.Run("baseline=FileServerFS", func(b *testing.B) { base = serve(b, http.FileServerFS(Files())) })
	b.Run("Handler", func(b *testing.B) {
		ours = serve(b, Handler())
		if base > 0 {
			b.ReportMetric(ours/base, "x_baseline")
		}
	})
}
