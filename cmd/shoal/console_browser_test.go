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
	"testing"
	"time"

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
	// deadLetters waits for the listed dead letters to be exactly want.
	deadLetters := func(what string, want ...string) {
		t.Helper()
		b.waitFor(what, `(() => {
			const ids = [...document.querySelectorAll("#dlq-table tbody tr")].map((r) => r.cells[0].textContent).sort().join(" ");
			return !document.getElementById("dlq-table").hidden && ids === `+jsString(strings.Join(slices.Sorted(slices.Values(want)), " "))+` ? "yes" : "";
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
