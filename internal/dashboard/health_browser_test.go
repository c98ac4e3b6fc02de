package dashboard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/episoded/episoded/internal/sim"
	"github.com/episoded/episoded/internal/testwait"
)

// post sends a JSON request with the admin token and decodes the answer.
func (c apiClient) post(path, body string, v any) {
	c.t.Helper()
	req, _ := http.NewRequest("POST", c.base+path, bytes.NewReader([]byte(body)))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("POST %s: %v", path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode/100 != 2 {
		c.t.Fatalf("POST %s: %s: %s", path, res.Status, b)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			c.t.Fatalf("POST %s: decode: %v", path, err)
		}
	}
}

// TestDashboardHealthInChromium drives the operator's view of trouble in
// headless Chromium against a real daemon recording the simulated cell: a
// real RTSP camera (the simulator's gortsplib server) goes down during an
// episode and comes back. The health banner must turn red naming the
// camera, then clear (and the device's last error with it); the episode
// that spans the outage must be listed as degraded with its reasons; the
// trend sparklines must draw the daemon's history; the page must fit 390
// px without sideways scrolling; and nothing may reach the console.
// Screenshots at 1440×900 and 390×844 are kept in $EPISODED_ARTIFACTS (or
// the test's temporary directory) and their paths logged.
func TestDashboardHealthInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("dashboard browser test needs chromium and a running simulated cell; skipped under -short")
	}
	base, apiBase, s := startDaemon(t)
	api := apiClient{t: t, base: apiBase}
	b := newBrowser(t)
	const down = "cam2"
	downStream := sim.Cell + "/" + down

	// Put the read token in the tab's sessionStorage before the page
	// loads, so no request goes out without it (and no 401 is logged).
	b.do("open the origin", 30*time.Second, chromedp.Navigate(base+"/favicon.svg"))
	eval[bool](b, `(sessionStorage.setItem('episoded.token', `+jsString(testReadToken)+`), true)`)
	b.do("desktop viewport", 10*time.Second, chromedp.EmulateViewport(1440, 900))
	navCtx, cancelNav := context.WithTimeout(b.ctx, 30*time.Second)
	res, err := chromedp.Run(navCtx, chromedp.NavigateResponse(base+"/"))
	cancelNav()
	if err != nil {
		b.fail("open the dashboard", err)
	}
	// The page as the browser got it: a strict policy, no inline code.
	var csp string
	for k, v := range res.Headers {
		if strings.EqualFold(k, "Content-Security-Policy") {
			csp, _ = v.(string)
		}
	}
	for _, want := range []string{"default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'", "require-trusted-types-for 'script'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("the page's CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-") {
		t.Errorf("the page's CSP allows unsafe code: %q", csp)
	}
	b.waitFor("the page reaches the daemon", `document.querySelector('#conn').textContent === 'connected'`, 30*time.Second)

	banner := `document.querySelector('#health')`
	item := func(key string) string { return `document.querySelector('#health a[data-item=` + jsString(key) + `]')` }
	b.waitFor("the banner shows every device up", `(() => { const d = `+item("devices")+`;
		return !!d && d.dataset.level === 'ok' && `+banner+`.dataset.level !== 'bad'; })()`, 60*time.Second)
	for _, key := range []string{"recording", "devices", "degraded", "storage", "uploads"} {
		href := eval[string](b, item(key)+`.getAttribute('href')`)
		if !strings.HasPrefix(href, "#") || eval[bool](b, `!document.querySelector(`+jsString(href)+`)`) {
			t.Errorf("banner item %s links to %q, which is no section", key, href)
		}
	}
	rowJS := func(stream string) string {
		return `document.querySelector('#streams tr[data-stream=` + jsString(stream) + `]')`
	}
	b.waitFor(down+" live", `(() => { const r = `+rowJS(downStream)+`; return !!r && r.children[3].textContent.includes('live'); })()`, 30*time.Second)

	// An episode that will span the outage.
	var e struct {
		ID string `json:"id"`
	}
	api.post("/v1/cells/"+sim.Cell+"/episodes", `{"task":"outage"}`, &e)
	if e.ID == "" {
		t.Fatal("start answered no episode id")
	}
	b.waitFor("the banner says recording", item("recording")+`.textContent.includes('Recording')`, 10*time.Second)
	b.waitFor("the episode records "+down, rowJS(downStream)+`.children[3].textContent.includes('live')`, 10*time.Second)

	// The camera goes down: its RTSP stream closes and DESCRIBE answers 503.
	if err := s.SetCameraDown(down, true); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the banner turns red naming "+down, `(() => { const d = `+item("devices")+`;
		return `+banner+`.dataset.level === 'bad' && getComputedStyle(`+banner+`).backgroundColor !== getComputedStyle(document.body).backgroundColor &&
			d.dataset.level === 'bad' && d.textContent.includes(`+jsString(down)+`); })()`, 60*time.Second)
	devRow := `document.querySelector('#devices tr[data-device=` + jsString(down) + `]')`
	b.waitFor("the device shows why", devRow+`.lastElementChild.textContent.trim() !== ''`, 30*time.Second)
	t.Logf("during the outage: banner %q; %s last error %q", eval[string](b, banner+`.innerText`), down, eval[string](b, devRow+`.lastElementChild.textContent`))
	t.Logf("screenshot (outage, 1440x900): %s", b.screenshot("dashboard-outage-1440x900.png"))

	// It comes back: the banner clears and so does the device's error.
	if err := s.SetCameraDown(down, false); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the banner clears after the outage", `(() => { const d = `+item("devices")+`;
		return `+banner+`.dataset.level !== 'bad' && d.dataset.level === 'ok'; })()`, 120*time.Second)
	b.waitFor("the recovered device shows no error", devRow+`.textContent.includes('streaming') && `+devRow+`.lastElementChild.textContent.trim() === ''`, 10*time.Second)
	b.waitFor(down+" live again", rowJS(downStream)+`.children[3].textContent.includes('live')`, 30*time.Second)

	// The episode spanning the outage closes degraded, with reasons.
	api.post("/v1/episodes/"+e.ID+"/stop", "", nil)
	var closed map[string]any
	testwait.For(t, 60*time.Second, "episode "+e.ID+" closed after stop", func() bool {
		api.get("/v1/episodes/"+e.ID, &closed)
		st, _ := closed["state"].(string)
		return st != "recording"
	})
	v, _ := closed["verdict"].(map[string]any)
	if v == nil || v["status"] != "degraded" {
		t.Fatalf("episode %s spanning a %s outage has verdict %v, want degraded", e.ID, down, closed["verdict"])
	}
	t.Logf("verdict: %v", v)
	row := `document.querySelector('#episodes tr[data-episode=` + jsString(e.ID) + `]')`
	b.waitFor("the degraded episode is highlighted with its reasons", `(() => { const r = `+row+`;
		if (!r || !r.classList.contains('degraded')) return false;
		const bg = getComputedStyle(r.children[0]).backgroundColor;
		const q = r.querySelector('td[data-quality]');
		return bg !== 'rgba(0, 0, 0, 0)' && q.dataset.quality === 'degraded' && r.querySelectorAll('ul.reasons li').length > 0 &&
			q.title.includes(`+jsString(downStream+": low_coverage")+`); })()`, 20*time.Second)
	b.waitFor("the banner counts the degraded episode", `(() => { const d = `+item("degraded")+`;
		return d.dataset.level === 'warn' && d.textContent.includes('degraded'); })()`, 20*time.Second)

	// Sparklines from the daemon's history: at least two samples (10 s
	// apart) give a rate; disk use has a line too.
	spark := func(sel string) string {
		return `(() => { const s = document.querySelector(` + jsString(sel) + `);
			return !!s && Number(s.dataset.points) >= 2 && s.querySelectorAll('polyline').length > 0 &&
				s.getBoundingClientRect().width > 40; })()`
	}
	b.waitFor("the camera's rate sparkline", spark(`#trends .trend-stream[data-stream="cell1/cam1"] .trend.rate svg.spark`), 60*time.Second)
	b.waitFor("the camera's alignment sparkline", spark(`#trends .trend-stream[data-stream="cell1/cam1"] .trend.bound svg.spark`), 20*time.Second)
	b.waitFor("the disk sparkline", spark(`#trends .trend.disk svg.spark`), 20*time.Second)
	if n := eval[int](b, `document.querySelectorAll('#trends .trend-stream').length`); n < 3 {
		t.Errorf("trends show %d streams, want every stream of the cell", n)
	}

	// Open the degraded episode's report (the widest table) for the
	// screenshots and the layout check.
	b.do("open the details", 10*time.Second, chromedp.Click(chromedp.CSS(`button[data-action="details"][data-episode=`+jsString(e.ID)+`]`)))
	b.waitFor("the quality report", `document.querySelectorAll('#episode-detail table.quality tbody tr').length >= 5`, 15*time.Second)
	b.waitFor("banner shown", banner+`.dataset.level !== 'bad'`, 5*time.Second)
	t.Logf("screenshot (1440x900): %s", b.screenshot("dashboard-1440x900.png"))

	// Phone: 390 px wide, nothing scrolls sideways, neither the page nor
	// any section inside it, and every element stays inside the viewport.
	b.do("phone viewport", 10*time.Second, chromedp.EmulateViewport(390, 844))
	b.waitFor("the layout reflows to 390 px", `window.innerWidth === 390`, 10*time.Second)
	overflow := `(() => {
		const W = document.documentElement.clientWidth, out = [];
		if (document.documentElement.scrollWidth > W) out.push('page scrollWidth ' + document.documentElement.scrollWidth + ' > ' + W);
		for (const el of document.querySelectorAll('body *')) {
			if (el.closest('[hidden]') || el.getClientRects().length === 0) continue;
			const r = el.getBoundingClientRect();
			if (r.right > W + 0.5 || r.left < -0.5) out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + '.' + el.className + ' [' + Math.round(r.left) + ', ' + Math.round(r.right) + ']');
			// (An input's scrollWidth is its text, which scrolls inside it.)
			if (el.tagName !== 'INPUT' && el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== 'visible' && getComputedStyle(el).overflowX !== 'hidden')
				out.push('scrolls: ' + el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' ' + el.scrollWidth + ' > ' + el.clientWidth);
		}
		return out.slice(0, 20);
	})()`
	if bad := eval[[]string](b, overflow); len(bad) > 0 {
		t.Errorf("at 390x844 the page scrolls sideways:\n  %s", strings.Join(bad, "\n  "))
	}
	// The streams' rate and state are on screen, not off to the side.
	if !eval[bool](b, `(() => { const r = `+rowJS("cell1/cam1")+`; const a = r.children[3].getBoundingClientRect(), c = r.children[4].getBoundingClientRect();
		return a.width > 0 && c.width > 0 && a.right <= 390 && c.right <= 390; })()`) {
		t.Errorf("at 390 px the stream state or rate is off-screen")
	}
	t.Logf("screenshot (390x844): %s", b.screenshot("dashboard-390x844.png"))

	// The list asks for one page, never the whole history.
	lists := eval[[]string](b, `performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname + new URL(e.name).search).filter((u) => u.startsWith('/v1/episodes?') || u === '/v1/episodes')`)
	if len(lists) == 0 {
		t.Errorf("the page never listed episodes")
	}
	for _, u := range lists {
		if !strings.Contains(u, "limit=20") {
			t.Errorf("the page listed episodes without a limit: %s", u)
			break
		}
	}
	if junk := eval[[]string](b, `document.body.innerText.match(/\b(undefined|NaN|null|Infinity)\b|\[object Object\]/g) || []`); len(junk) > 0 {
		t.Errorf("the page shows raw values: %q", junk)
	}
	// The only expected error: the token was set on the favicon's own
	// page, for which the browser also asks /favicon.ico (404).
	if errs, _ := b.con.errors(0, func(m chromedp.ConsoleMessage) bool {
		return m.Source == "network" && strings.Contains(m.URL, "/favicon.ico") && strings.Contains(m.Text, "404")
	}); len(errs) > 0 {
		t.Errorf("console errors:\n  %s", strings.Join(errs, "\n  "))
	}
}
