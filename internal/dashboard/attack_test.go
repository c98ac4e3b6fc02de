package dashboard_test

import (
	"encoding/json"
	"fmt"
	"github.com/episoded/episoded/internal/daemon/daemontest"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/episoded/episoded/internal/config"
	"github.com/episoded/episoded/internal/testwait"
)

// attackerPage is a hostile page the operator opens while the daemon runs
// on the gateway (here: on loopback, with the default config and no
// token). It sends the two "simple" cross-site requests a page can send
// without asking: a text/plain form POST into a hidden iframe, and a
// no-cors fetch. It sets document.title to "done" when both have gone out.
const attackerPage = `<!doctype html><html><body>
<iframe name="sink" id="sink"></iframe>
<form id="f" method="POST" enctype="text/plain" target="sink" action="%[1]s/v1/cells/cell1/episodes">
<input name='{"task":"pwned","x":"' value='"}'>
</form>
<script>
let left = 2;
function one() { if (--left === 0) document.title = 'done'; }
document.getElementById('sink').addEventListener('load', one);
document.getElementById('f').submit();
fetch('%[1]s/v1/cells/cell1/episodes', {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body: '{"task":"pwned"}'})
  .then(one, one);
</script></body></html>`

// TestBrowserAttacks: a real Chromium, with a hostile name resolving to
// the gateway (--host-resolver-rules), tries CSRF and DNS rebinding against
// a daemon with no token: the requests reach the daemon and are refused
// (counted in episoded_api_refused_total), nothing starts, and the rebound
// name gets 421; the dashboard's own page still starts an episode.
func TestBrowserAttacks(t *testing.T) {
	if testing.Short() {
		t.Skip("needs chromium; skipped under -short")
	}
	dir := t.TempDir()
	cfg, err := config.Parse("attack test", []byte(fmt.Sprintf(`gateway: {id: gw1, site: s}
api: {listen: "127.0.0.1:0"}
storage: {dir: %q, min_free: 1MiB}
devices: [{id: cam1, type: whip}]
cells: [{id: cell1, devices: [cam1]}]
`, filepath.Join(dir, "store"))), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	d, gw := daemontest.Start(t, cfg, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})))
	_, port, _ := strings.Cut(d.Addr(), ":")

	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, attackerPage, gw)
	}))
	defer evil.Close()
	_, evilPort, _ := strings.Cut(strings.TrimPrefix(evil.URL, "http://"), ":")

	b := newBrowser(t, chromedp.Flag("host-resolver-rules", "MAP evil.example 127.0.0.1"))
	refused := func(reason string) int {
		res, err := http.Get(gw + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		n := 0
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, `episoded_api_refused_total{reason="`+reason+`"} `) {
				fmt.Sscan(strings.Fields(l)[1], &n)
			}
		}
		return n
	}

	// CSRF from a page on another site.
	b.do("open the hostile page", 30*time.Second, chromedp.Navigate("http://evil.example:"+evilPort+"/"))
	b.waitFor("the hostile requests went out", `document.title === 'done'`, 20*time.Second)
	testwait.For(t, 30*time.Second, "two cross-site requests refused", func() bool { return refused("origin") >= 2 },
		func() string { return fmt.Sprintf("refused %d", refused("origin")) })
	var list []map[string]any
	res, err := http.Get(gw + "/v1/episodes")
	if err != nil {
		t.Fatal(err)
	}
	if err := jsonDecode(res.Body, &list); err != nil || len(list) != 0 {
		t.Fatalf("after the hostile page: %d episodes (%v), want none", len(list), err)
	}

	// DNS rebinding: the hostile name now resolves to the gateway and the
	// page asks for the recordings on the gateway's port.
	b.do("open the rebound name", 30*time.Second, chromedp.Navigate("http://evil.example:"+port+"/v1/episodes"))
	if text := eval[string](b, `document.body.innerText`); !strings.Contains(text, "unknown host name") {
		t.Errorf("the rebound name got %q, want the 421 refusal", text)
	}
	if n := refused("host"); n < 1 {
		t.Errorf("episoded_api_refused_total{reason=host} = %d after the rebound request", n)
	}

	// The dashboard's own page (same origin, JSON) may start an episode.
	b.do("open the dashboard", 30*time.Second, chromedp.Navigate(gw+"/"))
	b.waitFor("the page reaches the daemon", `document.querySelector('#conn').textContent === 'connected'`, 20*time.Second)
	startBtn := `button[data-action="start"][data-cell="cell1"]`
	b.do("click start", 10*time.Second, chromedp.WaitEnabled(chromedp.CSS(startBtn)), chromedp.Click(chromedp.CSS(startBtn)))
	b.waitFor("the cell shows recording", `document.querySelector('.cell[data-cell="cell1"] .pill').textContent === 'recording'`, 10*time.Second)
}

func jsonDecode(r io.ReadCloser, v any) error {
	defer r.Close()
	return json.NewDecoder(r).Decode(v)
}
