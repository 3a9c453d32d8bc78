package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// Browser test settings, read from the environment.
const (
	// envBrowser names the Chromium or Chrome binary to drive.
	envBrowser = "SHOAL_BROWSER"
	// envRequireBrowser, set to 1 (as CI does), fails the browser test
	// when no browser is found instead of skipping it.
	envRequireBrowser = "SHOAL_REQUIRE_BROWSER"
)

// findBrowser returns the browser to drive, or skips the test when there
// is none (fails it under SHOAL_REQUIRE_BROWSER=1).
func findBrowser(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(envBrowser); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no browser for the console test: none of chromium, chromium-browser, google-chrome, google-chrome-stable is on PATH; " +
		"install one (apt-get install chromium) or set " + envBrowser + " to its path"
	if os.Getenv(envRequireBrowser) == "1" {
		t.Fatal(msg + " (" + envRequireBrowser + "=1 makes this a failure)")
	}
	t.Skip(msg)
	return ""
}

// recordCSP runs in the page before its own scripts: every violation of
// the Content-Security-Policy is kept for the test to read.
const recordCSP = `window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") + " at " + e.sourceFile + ":" + e.lineNumber);
});`

// tab is a browser tab the test drives; every wait is bounded by its
// context.
type tab struct {
	t   *testing.T
	ctx context.Context

	mu sync.Mutex
	// problems are what the page reported as errors on its console.
	problems []string
	// dialogs are the messages of the dialogs (confirm) it opened, each
	// accepted.
	dialogs []string
	// expectNetwork matches the failed requests the test causes on
	// purpose (the browser logs each as an error).
	expectNetwork *regexp.Regexp
	started       time.Time
	// requests are the requests the page sent, in order.
	requests []sentRequest
	// answer handles each request paused by intercept.
	answer func(*fetch.EventRequestPaused)
}

// sentRequest is a request the page sent.
type sentRequest struct {
	method, url, authorization string
	at                         time.Time
}

// openBrowser starts a headless browser with one tab of 1280x800, for at
// most 60 s. The tab records its console's errors and its CSP violations
// for checkClean, and accepts every dialog.
func openBrowser(t *testing.T) *tab {
	t.Helper()
	browser := findBrowser(t)
	out := &syncWriter{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.Headless,
		chromedp.NoSandbox, // tests and CI run as root, where the sandbox cannot start
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.WindowSize(1280, 800),
		chromedp.CombinedOutput(out),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	// One bound for the whole browser session (the first action starts
	// the browser under it).
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() {
		cancel()
		cancelTab()
		cancelAlloc()
		if t.Failed() {
			t.Logf("browser output:\n%s", out.String())
		}
	})
	b := &tab{t: t, ctx: ctx, started: time.Now()}

	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if !m.IsException() && m.Type != chromedp.ConsoleError {
				continue
			}
			b.mu.Lock()
			if m.Source != "network" || b.expectNetwork == nil || !b.expectNetwork.MatchString(m.Text+" "+m.URL) {
				b.problems = append(b.problems, fmt.Sprintf("%s %s (%s:%d)", m.Source, m, m.URL, m.Line+1))
			}
			b.mu.Unlock()
		}
	}()
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.dialogs = append(b.dialogs, ev.Message)
			b.mu.Unlock()
			// A dialog blocks the click that opened it until answered.
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	sent := chromedp.Events(ctx, network.RequestWillBeSent)
	go func() {
		for ev, err := range sent {
			if err != nil {
				return
			}
			auth, _ := ev.Request.Headers["Authorization"].(string)
			b.mu.Lock()
			b.requests = append(b.requests, sentRequest{ev.Request.Method, ev.Request.URL, auth, time.Now()})
			b.mu.Unlock()
		}
	}()
	paused := chromedp.Events(ctx, fetch.RequestPaused)
	go func() {
		for ev, err := range paused {
			if err != nil {
				return
			}
			b.mu.Lock()
			answer := b.answer
			b.mu.Unlock()
			if answer == nil {
				answer = b.pass
			}
			go answer(&ev)
		}
	}()
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: recordCSP}); err != nil {
		t.Fatal(err)
	}
	b.do("set the viewport", chromedp.EmulateViewport(1280, 800))
	return b
}

// checkClean fails the test if the page threw, logged an error, or broke
// its Content-Security-Policy.
func (b *tab) checkClean() {
	b.t.Helper()
	if v := eval[[]string](b, `window.__cspViolations`); len(v) > 0 {
		b.t.Errorf("Content-Security-Policy violations:\n%s", strings.Join(v, "\n"))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.problems) > 0 {
		b.t.Errorf("the page's console reported errors:\n%s", strings.Join(b.problems, "\n"))
	}
	b.t.Logf("browser session: %v", time.Since(b.started).Round(time.Millisecond))
}

// forgetProblem waits up to 2 s for an error the page logged matching
// re, caused on purpose, and forgets it.
func (b *tab) forgetProblem(re string) {
	rx := regexp.MustCompile(re)
	for range 20 {
		b.mu.Lock()
		i := slices.IndexFunc(b.problems, rx.MatchString)
		if i >= 0 {
			b.problems = slices.Delete(b.problems, i, i+1)
		}
		b.mu.Unlock()
		if i >= 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

func eval[T any](b *tab, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitFor evaluates expr, a JavaScript expression of a string, every
// 100 ms until it is not empty, and returns it. (chromedp.Poll would
// compile the predicate with new Function, which the console's CSP
// forbids.)
func (b *tab) waitFor(what, expr string) string {
	b.t.Helper()
	for {
		v, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			b.t.Fatalf("waiting for %s: %v", what, err)
		}
		if v != "" {
			return v
		}
		select {
		case <-b.ctx.Done():
			b.t.Fatalf("waiting for %s: %v", what, b.ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (b *tab) text(id string) string {
	b.t.Helper()
	return eval[string](b, `document.getElementById(`+jsString(id)+`).textContent`)
}

// status waits for the status line to say something matching re.
func (b *tab) status(what, re string) string {
	b.t.Helper()
	return b.waitFor(what, `(() => {
		const s = document.getElementById("status").textContent;
		return new RegExp(`+jsString(re)+`).test(s) ? s : "";
	})()`)
}

// login logs in on the console's login form, already shown.
func (b *tab) login(user, password string) {
	b.t.Helper()
	b.do("log in as "+user,
		chromedp.WaitVisible(chromedp.ID("login-user")),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("login-user").value = ""`),
		chromedp.SendKeys(chromedp.ID("login-user"), user),
		chromedp.SendKeys(chromedp.ID("login-pass"), password),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
	)
	if got := b.waitFor("the login", `!document.getElementById("session").hidden ? "in" :
		document.querySelector("#status.error") ? "failed: " + document.getElementById("status").textContent : ""`); got != "in" {
		b.t.Fatalf("login as %s %s", user, got)
	}
	if who := b.text("who-name"); who != user {
		b.t.Errorf("logged in as %q, want %s", who, user)
	}
}

func (b *tab) logout() {
	b.t.Helper()
	b.do("log out", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("login-user")))
}

// screenshot saves a full-page PNG in the test's artifact directory.
func (b *tab) screenshot(name string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100)) // 100: PNG, not JPEG
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(b.t.ArtifactDir(), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}

func jsString(s string) string { return fmt.Sprintf("%q", s) }

// sent returns the requests the page sent whose URL matches re.
func (b *tab) sent(re string) []sentRequest {
	b.t.Helper()
	// The events arrive a moment after the requests.
	time.Sleep(200 * time.Millisecond)
	rx := regexp.MustCompile(re)
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []sentRequest
	for _, r := range b.requests {
		if rx.MatchString(r.url) {
			out = append(out, r)
		}
	}
	return out
}

// intercept pauses the page's requests whose URL matches one of patterns
// (the wildcards of Fetch.enable) and hands each to answer, on a goroutine
// of its own; answer must fulfill or pass each. Each call replaces the
// patterns and the answer. A nil answer passes every request; with no
// pattern, only the answer changes (requests paused before stay paused
// until passed).
func (b *tab) intercept(answer func(*fetch.EventRequestPaused), patterns ...string) {
	b.t.Helper()
	b.mu.Lock()
	b.answer = answer
	b.mu.Unlock()
	if len(patterns) == 0 {
		return
	}
	var ps []*fetch.RequestPattern
	for _, p := range patterns {
		ps = append(ps, &fetch.RequestPattern{URLPattern: p})
	}
	if _, err := chromedp.Call(b.ctx, fetch.Enable, fetch.EnableParams{Patterns: ps}); err != nil {
		b.t.Fatal(err)
	}
}

// pass lets a paused request go to the gateway.
func (b *tab) pass(ev *fetch.EventRequestPaused) {
	if _, err := chromedp.Call(b.ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: ev.RequestID}); err != nil && b.ctx.Err() == nil {
		b.t.Errorf("continue %s: %v", ev.Request.URL, err)
	}
}

// fulfill answers a paused request with status and a JSON body, in place
// of the gateway.
func (b *tab) fulfill(ev *fetch.EventRequestPaused, status int, body string) {
	_, err := chromedp.Call(b.ctx, fetch.FulfillRequest, fetch.FulfillRequestParams{
		RequestID:       ev.RequestID,
		ResponseCode:    int64(status),
		ResponseHeaders: []*fetch.HeaderEntry{{Name: "Content-Type", Value: "application/json"}},
		Body:            []byte(body),
	})
	if err != nil && b.ctx.Err() == nil {
		b.t.Errorf("fulfill %s: %v", ev.Request.URL, err)
	}
}

// addUser adds a user to a running shoal up.
func addUser(t *testing.T, data, natsURL, name, password, perms string) {
	t.Helper()
	if out, errOut, code := runShoalIn(t, t.TempDir(), password+"\n", "user", "add", name, "--perm", perms,
		"--password-stdin", "--data", data, "--nats", natsURL); code != 0 {
		t.Fatalf("shoal user add %s = %d %s %s", name, code, out, errOut)
	}
}

// TestConsole drives the web console in a real browser against `shoal up`
// with two workers: an operator logs in with a password, sees ping served,
// invokes it synchronously and asynchronously, sees the workers, the call
// and the live figures, and logs out; then a pasted token without
// system:read invokes echo and is told what the operator views need. The
// token never leaves session storage, and the page throws nothing and
// breaks none of its Content-Security-Policy.
// skipUnderRace skips a browser test of the page's own behaviour under
// the race detector: what it checks happens in the browser, and
// TestConsole drives shoal up under the detector already. The plain test
// run (go test ./..., the README's command) runs them.
func skipUnderRace(t *testing.T) {
	t.Helper()
	if raceDetector {
		t.Skip("the page's behaviour does not depend on Go's race detector, and TestConsole covers shoal up under it: run without -race")
	}
}

func TestConsole(t *testing.T) {
	b := openBrowser(t)
	data := t.TempDir()
	p := startShoal(t, "up", "-f", repoManifest(t), "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "2")
	natsURL := p.waitLog(`msg="nats listening" url=(\S+)`)[1]
	p.waitLog(`msg="runners serving" workers=2`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	addUser(t, data, natsURL, "ops", "correct horse battery", "system:read,system:write")

	// / leads to the console, which asks for a login.
	b.do("open the console", chromedp.Navigate(gw+"/"), chromedp.WaitVisible(chromedp.ID("login-user")))
	if loc := eval[string](b, `location.pathname`); loc != "/ui/" {
		t.Errorf("/ led to %s, want /ui/", loc)
	}
	b.login("ops", "correct horse battery")
	if exp := b.text("who-expiry"); !regexp.MustCompile(`^expires in \d+m`).MatchString(exp) {
		t.Errorf("expiry shown as %q, want expires in NmSSs", exp)
	}
	// Functions: ping is served by the runners.
	meta := b.waitFor("ping listed with a runner", `(() => {
		const m = document.querySelector('article[data-fn="ping"] .fn-meta');
		return m && /\b[1-9]\d* runners?\b/.test(m.textContent) ? m.textContent : "";
	})()`)
	t.Logf("ping: %s", meta)

	// Invoke ping from its card.
	b.do("invoke ping",
		chromedp.Click(chromedp.CSS(`article[data-fn="ping"] .fn-tags button`)),
		chromedp.WaitVisible(chromedp.ID("view-invoke")),
		chromedp.SetValue(chromedp.ID("inv-method"), "GET"),
		chromedp.Click(chromedp.ID("inv-send")),
		chromedp.WaitVisible(chromedp.ID("inv-status")),
	)
	if fn := eval[string](b, `document.getElementById("inv-fn").value`); fn != "ping" {
		t.Errorf("the card's Invoke button picked %q, want ping", fn)
	}
	if status, body := b.text("inv-status"), b.text("inv-body-out"); status != "200" || body != "pong!" {
		t.Errorf("invoke ping: status %q body %q, want 200 pong!", status, body)
	}
	if d := b.text("inv-duration"); !strings.HasSuffix(d, " ms") {
		t.Errorf("duration shown as %q", d)
	}

	// The same asynchronously, followed to its result.
	b.do("invoke ping asynchronously",
		chromedp.Click(chromedp.ID("inv-async")),
		chromedp.WaitVisible(chromedp.ID("inv-sub-status")),
	)
	if status := b.text("inv-sub-status"); status != "202" {
		t.Fatalf("async submission answered %s: %s", status, b.text("inv-sub-body"))
	}
	b.waitFor("the async call's result", `document.getElementById("inv-call-body") ? "yes" : ""`)
	if status, body := b.text("inv-call-status"), b.text("inv-call-body"); status != "200" || body != "pong!" {
		t.Errorf("async ping: status %q body %q, want 200 pong! (%s)", status, body, b.text("inv-call-state"))
	}
	callID := eval[string](b, `JSON.parse(document.getElementById("inv-sub-body").textContent).id`)
	b.screenshot("console-invoke.png")

	// Workers: the two of shoal up, ready.
	b.do("open Workers", chromedp.Click(chromedp.ID("tab-workers")))
	rows := b.waitFor("two ready workers", `(() => {
		const rows = [...document.querySelectorAll("#wk-table tbody tr")];
		return rows.length === 2 && rows.every((r) => r.textContent.includes("ready")) ? String(rows.length) : "";
	})()`)
	if rows != "2" {
		t.Errorf("%s workers shown, want 2", rows)
	}

	// Calls: the asynchronous call, succeeded.
	b.do("open Calls", chromedp.Click(chromedp.ID("tab-calls")))
	b.waitFor("the call listed as succeeded", `(() => {
		const row = [...document.querySelectorAll("#calls-table tbody tr")].find((r) => r.cells[0].textContent === `+jsString(callID)+`);
		return row && row.cells[2].textContent === "succeeded" ? "yes" : "";
	})()`)
	b.screenshot("console-calls.png")

	// Traffic shows in the live figures within a poll or two.
	for range 50 {
		if status, _ := get(t, gw+"/function/ping"); status != http.StatusOK {
			t.Fatalf("GET /function/ping = %d", status)
		}
	}
	b.do("open Functions", chromedp.Click(chromedp.ID("tab-functions")))
	rate := b.waitFor("ping's requests/s above 0", `(() => {
		const dd = document.querySelector('article[data-fn="ping"] .figures dd');
		return dd && dd.textContent !== "0" && dd.textContent !== "–" ? dd.textContent : "";
	})()`)
	t.Logf("ping: %s requests/s", rate)
	if bars := eval[int](b, `document.querySelectorAll('article[data-fn="ping"] svg.chart rect.bar').length`); bars == 0 {
		t.Error("ping's chart has no bar")
	}
	b.screenshot("console-functions.png")

	// The token is in this tab's session only: not in local storage, not
	// in a cookie.
	if n := eval[int](b, `localStorage.length`); n != 0 {
		t.Errorf("localStorage holds %d items, want none", n)
	}
	if c := eval[string](b, `document.cookie`); c != "" {
		t.Errorf("document.cookie = %q, want none", c)
	}
	if tok := eval[string](b, `sessionStorage.getItem("shoal.token") || ""`); strings.Count(tok, ".") != 2 {
		t.Errorf("sessionStorage shoal.token = %q, want a JWT", tok)
	}

	// Log out: the token is gone.
	b.logout()
	if n := eval[int](b, `sessionStorage.length`); n != 0 {
		t.Errorf("after logging out sessionStorage holds %d items", n)
	}

	// A pasted token without system:read: the operator views say what
	// they need, and invoking what the token allows works.
	minted, errOut, code := runShoal(t, t.TempDir(), "token", "--data", data, "--sub", "dev", "--perm", "echo", "--ttl", "10m")
	if code != 0 {
		t.Fatalf("shoal token = %d %s", code, errOut)
	}
	b.do("paste a token",
		chromedp.SendKeys(chromedp.ID("token-input"), strings.TrimSpace(minted)),
		chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.ID("session")),
		chromedp.Click(chromedp.ID("tab-functions")),
	)
	if who, exp := b.text("who-name"), b.text("who-expiry"); who != "dev" || !strings.HasPrefix(exp, "expires in 9m") {
		t.Errorf("pasted token: logged in as %q, %q; want dev, expires in 9m…", who, exp)
	}
	b.waitFor("Functions to say it needs system:read", `document.getElementById("fn-note").textContent.includes("needs the system:read permission") ? "yes" : ""`)
	b.do("invoke echo",
		chromedp.Click(chromedp.ID("tab-invoke")),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("inv-fn").value = "echo"`),
		chromedp.SetValue(chromedp.ID("inv-method"), "POST"),
		chromedp.SendKeys(chromedp.ID("inv-body"), "hi"),
		chromedp.Click(chromedp.ID("inv-send")),
		chromedp.WaitVisible(chromedp.ID("inv-status")),
	)
	if status, body := b.text("inv-status"), b.text("inv-body-out"); status != "200" || !strings.Contains(body, `"body": "hi"`) {
		t.Errorf("echo with the pasted token: %s %s", status, body)
	}
	b.do("open Workers", chromedp.Click(chromedp.ID("tab-workers")))
	b.waitFor("Workers to say it needs system:read", `document.getElementById("wk-note").textContent.includes("needs the system:read permission") ? "yes" : ""`)

	b.checkClean()
}

// deadLetterManifest declares fail, which always answers 500
// (SHOAL_TEST_FUNCTIONS), with one attempt per call, so that each call
// becomes a dead letter at once.
const deadLetterManifest = `version: 1
functions:
  auth: {handler: {builtin: auth}, public: true, async: {enabled: false}}
  fail: {handler: {builtin: fail}, public: true, async: {max_deliver: 1}}
`

// TestConsoleDeadLetters: in the console's Calls view a reader (system:read)
// sees the dead letters and is told Retry needs system:write; an operator
// (system:write) discards one after confirming, and retries the other.
func TestConsoleDeadLetters(t *testing.T) {
	skipUnderRace(t)
	b := openBrowser(t)
	// The reader's refused retry is a failed request the browser logs.
	b.expectNetwork = regexp.MustCompile(`status of 403 .*/system/dlq/[a-z0-9]+/retry$`)
	data, dir := t.TempDir(), t.TempDir()
	manifest := filepath.Join(dir, "fn.yaml")
	if err := os.WriteFile(manifest, []byte(deadLetterManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startShoalEnv(t, []string{testFunctions + "=1"}, "up", "-f", manifest, "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "1")
	natsURL := p.waitLog(`msg="nats listening" url=(\S+)`)[1]
	p.waitLog(`msg="runners serving" workers=1`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	addUser(t, data, natsURL, "reader", "reader's password", "system:read")
	addUser(t, data, natsURL, "ops", "operator's password", "system:read,system:write")
	var ids []string
	for range 2 {
		status, body := post(t, gw+"/async-function/fail", "x", "")
		m := regexp.MustCompile(`"id":"([^"]+)"`).FindStringSubmatch(body)
		if status != http.StatusAccepted || m == nil {
			t.Fatalf("POST /async-function/fail = %d %s", status, body)
		}
		ids = append(ids, m[1])
	}
	// deadLetters waits for the listed dead letters to be exactly want,
	// pressing Refresh every second as someone waiting would (the tab
	// reads them by itself every 10 s).
	deadLetters := func(what string, want ...string) {
		t.Helper()
		b.waitFor(what, `(() => {
			const ids = [...document.querySelectorAll("#dlq-table tbody tr")].map((r) => r.cells[0].textContent).sort().join(" ");
			if (!document.getElementById("dlq-table").hidden && ids === `+jsString(strings.Join(slices.Sorted(slices.Values(want)), " "))+`) return "yes";
			if (!(Date.now() - window.__refreshed < 1000)) {
				window.__refreshed = Date.now();
				document.getElementById("calls-refresh").click();
			}
			return "";
		})()`)
	}
	row := func(id string) string { return `#dlq-table tr[data-id="` + id + `"]` }

	b.do("open the console", chromedp.Navigate(gw+"/ui/#calls"))
	b.login("reader", "reader's password")
	deadLetters("both dead letters listed", ids...)
	if note := b.text("dlq-note"); !strings.Contains(note, "need the system:write permission") {
		t.Errorf("the reader's dead-letter note: %q", note)
	}
	b.do("retry as the reader", chromedp.Click(chromedp.CSS(row(ids[0])+" button.retry")))
	b.status("the refusal", `^Retry of `+ids[0]+` failed: needs system:write$`)
	b.screenshot("console-dead-letters-reader.png")
	b.logout()

	b.login("ops", "operator's password")
	deadLetters("both dead letters listed", ids...)
	b.do("discard", chromedp.Click(chromedp.CSS(row(ids[0])+" button.discard")))
	b.status("the discard", `^Dead letter `+ids[0]+` discarded\.$`)
	deadLetters("the discarded one gone", ids[1])
	b.mu.Lock()
	if len(b.dialogs) != 1 || !strings.Contains(b.dialogs[0], ids[0]) {
		t.Errorf("dialogs %q, want one confirming the discard of %s", b.dialogs, ids[0])
	}
	b.mu.Unlock()
	b.do("retry", chromedp.Click(chromedp.CSS(row(ids[1])+" button.retry")))
	b.status("the retry", `^Call `+ids[1]+` queued again\.$`)
	// fail fails again: the retried call is a dead letter once more.
	deadLetters("the retried call back", ids[1])
	b.screenshot("console-dead-letters.png")
	b.checkClean()
}

// invokeManifest declares, with the test functions (SHOAL_TEST_FUNCTIONS),
// a public echo and a protected one, html (answers its body as HTML) and
// refuse (answers 401 invalid_token from its own code).
const invokeManifest = `version: 1
functions:
  auth: {handler: {builtin: auth}, public: true, async: {enabled: false}}
  echo: {handler: {builtin: echo}, permissions: [echo]}
  open-echo: {handler: {builtin: echo}, public: true}
  html: {handler: {builtin: html}, public: true}
  refuse: {handler: {builtin: refuse}, public: true}
  absent:
    source: .
    handler: {http: {command: [shoal-test-no-such-runtime, app.js]}}
    public: true
`

// markupHeader is the header html answers with: markup, to be shown as text.
const markupHeader = `<img src=x onerror="window.__xss=2"><b>header</b>`

// xssBody is what html is asked to answer: markup that runs a script if
// it is ever parsed as HTML.
const xssBody = `<img src=x onerror="window.__xss=1"><b>bold</b>`

// startConsoleShoal starts shoal up with the test functions and manifest,
// one worker, and the users ops (system:read, system:write, echo) and
// reader (system:read). It returns the gateway's URL and the data
// directory.
func startConsoleShoal(t *testing.T, manifest string) (gw, data string) {
	t.Helper()
	data, dir := t.TempDir(), t.TempDir()
	fn := filepath.Join(dir, "fn.yaml")
	if err := os.WriteFile(fn, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startShoalEnv(t, []string{testFunctions + "=1"}, "up", "-f", fn, "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "1")
	natsURL := p.waitLog(`msg="nats listening" url=(\S+)`)[1]
	p.waitLog(`msg="runners serving" workers=1`)
	gw = p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	addUser(t, data, natsURL, "ops", "operator's password", "system:read,system:write,echo")
	addUser(t, data, natsURL, "reader", "reader's password", "system:read")
	return gw, data
}

// devToken mints a token for dev, with the echo permission only: no
// system:read.
func devToken(t *testing.T, data string) string {
	t.Helper()
	minted, errOut, code := runShoal(t, t.TempDir(), "token", "--data", data, "--sub", "dev", "--perm", "echo", "--ttl", "10m")
	if code != 0 {
		t.Fatalf("shoal token = %d %s", code, errOut)
	}
	return strings.TrimSpace(minted)
}

// pasteToken logs in on the console's token form, already shown.
func (b *tab) pasteToken(tok string) {
	b.t.Helper()
	b.do("paste a token",
		chromedp.WaitVisible(chromedp.ID("token-input")),
		chromedp.SendKeys(chromedp.ID("token-input"), tok),
		chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.ID("session")),
	)
}

// choose puts fn in the Invoke form's function field, as typing it does.
func (b *tab) choose(fn string) {
	b.t.Helper()
	b.do("choose "+fn, chromedp.Evaluate[chromedp.Void](`(() => {
		const f = document.getElementById("inv-fn");
		f.value = `+jsString(fn)+`;
		f.dispatchEvent(new Event("input", {bubbles: true}));
	})()`))
}

// setText sets the value of a text field or area.
func setText(id, v string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](`document.getElementById(` + jsString(id) + `).value = ` + jsString(v))
}

// tokenBox reports whether "Send my token" is ticked.
func (b *tab) tokenBox() bool {
	b.t.Helper()
	return eval[bool](b, `document.getElementById("inv-auth").checked`)
}

// send submits the Invoke form as it is, synchronously or not, and waits
// for the answer (for async, the submission's).
func (b *tab) send(async bool) {
	b.t.Helper()
	button, status := "inv-send", "inv-status"
	if async {
		button, status = "inv-async", "inv-sub-status"
	}
	fn := eval[string](b, `document.getElementById("inv-fn").value`)
	b.do("send",
		chromedp.Evaluate[chromedp.Void](`document.getElementById("inv-result").replaceChildren()`),
		chromedp.Click(chromedp.ID(button)),
	)
	if got := b.waitFor("the answer", `document.getElementById(`+jsString(status)+`) ? "answer" :
		document.getElementById("session").hidden ? "logged out: " + document.getElementById("status").textContent : ""`); got != "answer" {
		b.t.Fatalf("invoking %s (async %v): %s", fn, async, got)
	}
}

// echoedAuthorization is the Authorization header that the echo in
// element id says it received, "" for none.
func (b *tab) echoedAuthorization(id string) string {
	b.t.Helper()
	return eval[string](b, `(() => {
		const h = JSON.parse(document.getElementById(`+jsString(id)+`).textContent).header;
		return (h.Authorization || []).join(", ");
	})()`)
}

// TestConsoleInvoke: what the Invoke view sends and shows.
//   - "Send my token" is off for a public function (its code would get
//     the operator's token) and on for the others; ticking it sends the
//     token, and a typed Authorization header wins; an async call of a
//     public function stores no token either.
//   - A function's answer and headers that are HTML are shown as text:
//     nothing is parsed, no script runs, and Trusted Types would stop a
//     string reaching an HTML sink.
//   - A function that answers 401 invalid_token itself does not log the
//     operator out (the gateway still takes the token).
//   - A fragment naming a property of every object (#constructor,
//     #__proto__) opens the Functions view.
func TestConsoleInvoke(t *testing.T) {
	skipUnderRace(t)
	b := openBrowser(t)
	b.expectNetwork = regexp.MustCompile(`status of 401 .*/function/refuse$`)
	gw, _ := startConsoleShoal(t, invokeManifest)

	b.do("open the console", chromedp.Navigate(gw+"/ui/#constructor"))
	b.login("ops", "operator's password")
	functionsView := func(what string) {
		t.Helper()
		b.waitFor(what, `!document.getElementById("view-functions").hidden && location.hash === "#functions" &&
			document.querySelector('article[data-fn="open-echo"]') ? "yes" : ""`)
	}
	functionsView("#constructor to open Functions")
	b.do("reload at #__proto__",
		chromedp.Evaluate[chromedp.Void](`history.replaceState(null, "", "#__proto__")`),
		chromedp.Reload(),
	)
	functionsView("#__proto__ to open Functions")
	token := eval[string](b, `sessionStorage.getItem("shoal.token")`)
	// A function whose runtime the runner lacks: shown with its kind, and
	// why it is not served, as text in a tooltip.
	chips := b.waitFor("the chips of absent", `(() => {
		const card = document.querySelector('article[data-fn="absent"]');
		if (!card) return "";
		const texts = [...card.querySelectorAll(".chip")].map(c => c.textContent + "|" + c.title);
		return texts.some(x => x.startsWith("not servable")) ? texts.join("\n") : "";
	})()`)
	for _, want := range []string{"http|shoal-test-no-such-runtime app.js", "not servable on 1 runner|runner ", "runtime missing: shoal-test-no-such-runtime not found in PATH"} {
		if !strings.Contains(chips, want) {
			t.Errorf("the chips of absent do not say %q:\n%s", want, chips)
		}
	}

	// A public function: the box is off, and the echo got no token.
	b.do("open Invoke", chromedp.Click(chromedp.ID("tab-invoke")), chromedp.SetValue(chromedp.ID("inv-method"), "POST"))
	b.choose("open-echo")
	if b.tokenBox() {
		t.Error(`"Send my token" is ticked for open-echo, a public function`)
	}
	b.send(false)
	if got := b.echoedAuthorization("inv-body-out"); got != "" {
		t.Errorf("open-echo received Authorization %q with the box off", got)
	}
	b.screenshot("console-invoke-public.png")
	// Ticked, it goes.
	b.do("tick the box", chromedp.Click(chromedp.ID("inv-auth")))
	b.send(false)
	if got := b.echoedAuthorization("inv-body-out"); got != "Bearer "+token {
		t.Errorf("open-echo received Authorization %q with the box ticked, want the token", got)
	}
	// A function that is not public: on by default.
	b.choose("echo")
	if !b.tokenBox() {
		t.Error(`"Send my token" is off for echo, which needs a permission`)
	}
	b.send(false)
	if got := b.echoedAuthorization("inv-body-out"); got != "Bearer "+token {
		t.Errorf("echo received Authorization %q, want the token", got)
	}
	// A typed Authorization header wins, the box on or off.
	b.choose("open-echo")
	b.do("type a header", chromedp.SendKeys(chromedp.ID("inv-headers"), "Authorization: Bearer typed"))
	for _, tick := range []bool{false, true} {
		if b.tokenBox() != tick {
			b.do("toggle the box", chromedp.Click(chromedp.ID("inv-auth")))
		}
		b.send(false)
		if got := b.echoedAuthorization("inv-body-out"); got != "Bearer typed" {
			t.Errorf("box %v: open-echo received Authorization %q, want the typed one", tick, got)
		}
	}
	// Async, box off: the call (and its stored request) has no token.
	b.choose("open-echo")
	b.do("clear the headers", setText("inv-headers", ""))
	if b.tokenBox() {
		t.Error(`"Send my token" is ticked for open-echo after choosing it again`)
	}
	b.send(true)
	b.waitFor("the async call's result", `document.getElementById("inv-call-body") ? "yes" : ""`)
	if got := b.echoedAuthorization("inv-call-body"); got != "" {
		t.Errorf("open-echo called asynchronously received Authorization %q with the box off", got)
	}
	for _, r := range b.sent(`/async-function/open-echo$`) {
		if r.authorization != "" {
			t.Errorf("%s %s carried Authorization", r.method, r.url)
		}
	}

	// HTML in the answer is text, synchronously and asynchronously.
	b.choose("html")
	b.do("type markup", setText("inv-body", xssBody))
	for _, async := range []bool{false, true} {
		b.send(async)
		body := "inv-body-out"
		if async {
			b.waitFor("the async call's result", `document.getElementById("inv-call-body") ? "yes" : ""`)
			body = "inv-call-body"
		}
		if got := b.text(body); got != xssBody {
			t.Errorf("async %v: #%s shows %q, want the markup as text", async, body, got)
		}
		headers := eval[string](b, `[...document.querySelectorAll("#inv-result pre.headers")].map((p) => p.textContent).join("\n")`)
		if !strings.Contains(strings.ToLower(headers), "x-markup: "+strings.ToLower(markupHeader)) {
			t.Errorf("async %v: headers shown:\n%s\nwant X-Markup: %s as text", async, headers, markupHeader)
		}
		time.Sleep(300 * time.Millisecond) // an image that failed to load would have fired onerror
		if n := eval[int](b, `document.querySelectorAll("#inv-result img, #inv-result b").length`); n != 0 {
			t.Errorf("async %v: %d img or b elements in the result: the answer was parsed as HTML", async, n)
		}
	}
	if xss := eval[string](b, `typeof window.__xss`); xss != "undefined" {
		t.Errorf("window.__xss is %s: the answer's markup ran", xss)
	}
	b.screenshot("console-invoke-html.png")

	// Under the policy, a string handed to an HTML sink throws.
	if got := eval[string](b, `(() => {
		try { document.createElement("div").innerHTML = "<b>x</b>"; return "assigned"; } catch (e) { return e.name; }
	})()`); got != "TypeError" {
		t.Errorf("assigning innerHTML: %s, want a TypeError (require-trusted-types-for 'script')", got)
	}
	// Forget the violation this caused on purpose, and the error the
	// browser logs for it.
	b.do("forget the probe's violation", chromedp.Evaluate[chromedp.Void](
		`window.__cspViolations = window.__cspViolations.filter((v) => !v.startsWith("require-trusted-types-for"))`))
	b.forgetProblem(`requires 'TrustedHTML' assignment`)

	// A function's own 401 invalid_token: the gateway still takes the
	// token, so the session goes on.
	whoami := len(b.sent(`/system/whoami$`))
	b.choose("refuse")
	b.do("tick the box", chromedp.Click(chromedp.ID("inv-auth")), setText("inv-body", ""))
	b.send(false)
	if status, body := b.text("inv-status"), b.text("inv-body-out"); status != "401" || !strings.Contains(body, "invalid_token") {
		t.Errorf("refuse: %s %s, want 401 invalid_token", status, body)
	}
	for range 50 { // b.sent waits 200 ms
		if len(b.sent(`/system/whoami$`)) > whoami {
			break
		}
	}
	if n := len(b.sent(`/system/whoami$`)); n <= whoami {
		t.Errorf("no GET /system/whoami after the 401: the console did not check the token")
	}
	time.Sleep(300 * time.Millisecond)
	if eval[bool](b, `document.getElementById("session").hidden || !sessionStorage.getItem("shoal.token")`) {
		t.Errorf("a function's 401 logged the operator out: %s", b.text("status"))
	}
	b.checkClean()
}

// hold intercepts the page's requests matching pattern and hands each
// over on the channel it returns, paused, for the test to pass later.
func (b *tab) hold(pattern string) <-chan *fetch.EventRequestPaused {
	b.t.Helper()
	held := make(chan *fetch.EventRequestPaused, 16)
	b.intercept(func(ev *fetch.EventRequestPaused) { held <- ev }, pattern)
	return held
}

// waitHeld waits for a request held by hold.
func (b *tab) waitHeld(what string, held <-chan *fetch.EventRequestPaused) *fetch.EventRequestPaused {
	b.t.Helper()
	select {
	case ev := <-held:
		return ev
	case <-time.After(10 * time.Second):
		b.t.Fatalf("%s: no request", what)
		return nil
	}
}

// TestConsoleLogoutDropsLateAnswers: an answer still on its way when the
// operator logs out is not shown to the next user, who has no
// system:read: neither the calls and dead letters nor the catalog (the
// function picker, the cards). Logging out clears the Invoke form.
func TestConsoleLogoutDropsLateAnswers(t *testing.T) {
	skipUnderRace(t)
	b := openBrowser(t)
	gw, data := startConsoleShoal(t, invokeManifest)
	dev := devToken(t, data)
	if status, body := post(t, gw+"/async-function/open-echo", "x", ""); status != http.StatusAccepted {
		t.Fatalf("POST /async-function/open-echo = %d %s", status, body)
	}

	b.do("open the console", chromedp.Navigate(gw+"/ui/#calls"))
	b.login("ops", "operator's password")
	b.waitFor("the call listed", `document.querySelectorAll("#calls-table tbody tr").length === 1 ? "yes" : ""`)

	// The Calls refresh is on its way at logout; it arrives once dev is in.
	held := b.hold("*/system/calls?*")
	b.do("refresh", chromedp.Click(chromedp.ID("calls-refresh")))
	late := b.waitHeld("the calls refresh", held)
	b.do("fill the Invoke form", setText("inv-fn", "open-echo"), setText("inv-path", "/secret?q=1"))
	b.logout()
	for _, id := range []string{"inv-fn", "inv-path"} {
		if v := eval[string](b, `document.getElementById(`+jsString(id)+`).value`); v != "" {
			t.Errorf("after logging out #%s holds %q", id, v)
		}
	}
	b.pasteToken(dev)
	b.intercept(nil)
	b.pass(late)
	b.waitFor("Calls to say it needs system:read", `document.getElementById("calls-note").textContent.includes("needs the system:read permission") ? "yes" : ""`)
	time.Sleep(300 * time.Millisecond)
	for _, id := range []string{"calls-table", "dlq-table"} {
		if shown := eval[string](b, `(() => {
			const t = document.getElementById(`+jsString(id)+`);
			return (t.hidden ? "" : "shown, ") + t.tBodies[0].rows.length + " rows";
		})()`); shown != "0 rows" {
			t.Errorf("dev sees #%s: %s", id, shown)
		}
	}
	b.screenshot("console-late-calls.png")

	// The catalog is on its way at logout.
	b.logout()
	b.login("ops", "operator's password")
	held = b.hold("*/system/functions")
	b.do("open Functions", chromedp.Click(chromedp.ID("tab-functions")))
	late = b.waitHeld("the catalog", held)
	b.logout()
	b.pasteToken(dev)
	b.intercept(nil)
	b.pass(late)
	b.waitFor("Functions to say it needs system:read", `document.getElementById("fn-note").textContent.includes("needs the system:read permission") ? "yes" : ""`)
	time.Sleep(300 * time.Millisecond)
	if n := eval[int](b, `document.querySelectorAll("#inv-fns option, #fn-list article").length`); n != 0 {
		t.Errorf("dev sees %d functions of the operator's catalog", n)
	}
	// Without the catalog, the box is ticked: dev's token is what lets
	// them invoke anything.
	b.do("open Invoke", chromedp.Click(chromedp.ID("tab-invoke")))
	b.choose("open-echo")
	if !b.tokenBox() {
		t.Error(`"Send my token" is off for dev, who cannot read the catalog`)
	}
	b.checkClean()
}

// TestConsoleCallsPolling: what the console asks the gateway about calls,
// and how often, with some answers made up in the browser.
//   - The Calls tab reads /system/calls and /system/dlq when it opens, on
//     Refresh, and otherwise at most every 10 s; the Functions tab reads
//     /system/functions at most every 10 s, tab switches included.
//   - A gateway that cannot read dead letters (501 not_implemented) is
//     told apart from an error; a list of calls the gateway truncated or
//     could not read whole says so.
//   - Following an async call stops at a 4xx, retries a 5xx, and never
//     fetches a call URL that is not a /calls/ path of the gateway.
func TestConsoleCallsPolling(t *testing.T) {
	skipUnderRace(t)
	b := openBrowser(t)
	b.expectNetwork = regexp.MustCompile(`status of (501 .*/system/dlq|403 .*/calls/[a-z0-9]+|503 .*/calls/[a-z0-9]+)$`)
	gw, _ := startConsoleShoal(t, invokeManifest)

	b.do("open the console", chromedp.Navigate(gw+"/ui/#functions"))
	b.login("ops", "operator's password")
	b.waitFor("the catalog", `document.querySelector('article[data-fn="open-echo"]') ? "yes" : ""`)
	// Back and forth between the tabs: the catalog is not read again.
	for range 2 {
		b.do("switch tabs", chromedp.Click(chromedp.ID("tab-invoke")), chromedp.Click(chromedp.ID("tab-calls")), chromedp.Click(chromedp.ID("tab-functions")))
	}
	b.waitFor("the live figures", `document.querySelector('article[data-fn="open-echo"] .figures dd').textContent !== "" ? "yes" : ""`)

	// Made-up answers: this gateway cannot read dead letters, and left
	// records out of the list of calls.
	var mu sync.Mutex
	asked := map[string]int{}
	b.intercept(func(ev *fetch.EventRequestPaused) {
		mu.Lock()
		defer mu.Unlock()
		switch u := ev.Request.URL; {
		case strings.Contains(u, "/system/dlq"):
			asked["dlq"]++
			b.fulfill(ev, http.StatusNotImplemented, `{"error":{"code":"not_implemented","message":"this gateway cannot read dead letters"}}`)
		case strings.Contains(u, "/system/calls"):
			asked["calls"]++
			b.fulfill(ev, http.StatusOK, `{"calls":[],"truncated":true,"skipped":3}`)
		default:
			b.pass(ev)
		}
	}, "*/system/dlq*", "*/system/calls*")
	count := func() (int, int) {
		time.Sleep(200 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		return asked["calls"], asked["dlq"]
	}
	b.do("open Calls", chromedp.Click(chromedp.ID("tab-calls")))
	b.waitFor("the dead-letter note", `document.getElementById("dlq-note").textContent.includes("this gateway cannot read them") ? "yes" : ""`)
	if got, want := b.text("dlq-note"), "Dead letters are managed with shoal calls dlq on this deployment (this gateway cannot read them)."; got != want {
		t.Errorf("dead-letter note %q, want %q", got, want)
	}
	if quiet := eval[bool](b, `document.getElementById("dlq-note").classList.contains("quiet")`); !quiet {
		t.Error("the dead-letter note reads as an error")
	}
	if got, want := b.text("calls-partial"), "list truncated: records too large; 3 records could not be read"; got != want {
		t.Errorf("calls note %q, want %q", got, want)
	}
	b.screenshot("console-calls-partial.png")
	// Open, visible and idle for 4 s: nothing more is asked.
	c0, d0 := count()
	if c0 != 1 || d0 != 1 {
		t.Errorf("opening Calls asked /system/calls %d times and /system/dlq %d times, want once each", c0, d0)
	}
	time.Sleep(4 * time.Second)
	if c, d := count(); c != c0 || d != d0 {
		t.Errorf("in 4 s on the Calls tab the console asked /system/calls %d and /system/dlq %d more times, want none", c-c0, d-d0)
	}
	b.do("refresh", chromedp.Click(chromedp.ID("calls-refresh")))
	time.Sleep(300 * time.Millisecond)
	if c, d := count(); c != c0+1 || d != d0+1 {
		t.Errorf("Refresh asked /system/calls %d and /system/dlq %d more times, want once each", c-c0, d-d0)
	}

	// The catalog was read at most every 10 s.
	fns := b.sent(`/system/functions$`)
	for i := 1; i < len(fns); i++ {
		if gap := fns[i].at.Sub(fns[i-1].at); gap < 9500*time.Millisecond {
			t.Errorf("GET /system/functions twice in %v", gap.Round(time.Millisecond))
		}
	}

	// Following a call: a 403 ends it at once.
	var reads atomic.Int32
	b.intercept(func(ev *fetch.EventRequestPaused) {
		reads.Add(1)
		b.fulfill(ev, http.StatusForbidden, `{"error":{"code":"insufficient_scope","message":"not yours"}}`)
	}, "*/calls/*")
	b.do("open Invoke", chromedp.Click(chromedp.ID("tab-invoke")), chromedp.SetValue(chromedp.ID("inv-method"), "POST"))
	b.choose("open-echo")
	b.send(true)
	b.waitFor("the refusal", `(document.getElementById("inv-call-state") || {}).textContent.startsWith("Cannot read the call: not yours") ? "yes" : ""`)
	time.Sleep(1500 * time.Millisecond)
	if n, line := reads.Load(), b.text("inv-call-state"); n != 1 || line != "Cannot read the call: not yours" {
		t.Errorf("after a 403 the console read the call %d times and says %q, want once and no retry", n, line)
	}
	// A 503 is retried, within the bound.
	reads.Store(0)
	b.intercept(func(ev *fetch.EventRequestPaused) {
		if reads.Add(1) <= 2 {
			b.fulfill(ev, http.StatusServiceUnavailable, `{"error":{"code":"unavailable","message":"retry shortly"}}`)
			return
		}
		b.pass(ev)
	}, "*/calls/*")
	b.send(true)
	b.waitFor("the call's result", `document.getElementById("inv-call-body") ? "yes" : ""`)
	if n := reads.Load(); n < 3 {
		t.Errorf("the call was read %d times, want 2 refused and then the record", n)
	}
	// The gateway's answer names another URL than a call's: it is not
	// fetched (with the token).
	for _, url := range []string{"//evil.invalid/calls/abc", "/calls/../function/open-echo", "/function/open-echo"} {
		b.intercept(func(ev *fetch.EventRequestPaused) {
			b.fulfill(ev, http.StatusAccepted, `{"id":"abc","function":"open-echo","status":"queued","url":`+jsString(url)+`}`)
		}, "*/async-function/*")
		before := len(b.sent(``))
		b.send(true)
		line := b.waitFor("the call's state", `(() => {
			const s = (document.getElementById("inv-call-state") || {}).textContent || "";
			return s.endsWith(": queued") ? "" : s;
		})()`)
		if !strings.HasPrefix(line, "Not following call abc") {
			t.Errorf("the 202 named %s: the console says %q", url, line)
		}
		time.Sleep(300 * time.Millisecond)
		for _, r := range b.sent(``)[before:] {
			if !strings.HasSuffix(r.url, "/async-function/open-echo") {
				t.Errorf("the 202 named %s: the console fetched %s %s", url, r.method, r.url)
			}
		}
	}
	b.screenshot("console-follow-refused.png")
	b.checkClean()
}

// syncWriter serializes the browser's output, written from its own
// goroutines, with the test's read of it.
type syncWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
