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
}

func (b tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

func eval[T any](b tab, expr string) T {
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
func (b tab) waitFor(what, expr string) string {
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

func (b tab) text(id string) string {
	b.t.Helper()
	return eval[string](b, `document.getElementById(`+jsString(id)+`).textContent`)
}

// screenshot saves a full-page PNG in the test's artifact directory.
func (b tab) screenshot(name string) {
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

// TestConsole drives the web console in a real browser against `shoal up`
// with two workers: an operator logs in with a password, sees ping served,
// invokes it synchronously and asynchronously, sees the workers and the
// call, and logs out; the token never leaves session storage, and the page
// throws nothing and breaks none of its Content-Security-Policy.
func TestConsole(t *testing.T) {
	browser := findBrowser(t)
	data := t.TempDir()
	p := startShoal(t, "up", "-f", repoManifest(t), "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "2")
	natsURL := p.waitLog(`msg="nats listening" url=(\S+)`)[1]
	p.waitLog(`msg="runners serving" workers=2`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	const password = "correct horse battery"
	if out, errOut, code := runShoalIn(t, t.TempDir(), password+"\n", "user", "add", "ops", "--perm", "system:read,system:write",
		"--password-stdin", "--data", data, "--nats", natsURL); code != 0 {
		t.Fatalf("shoal user add ops = %d %s %s", code, out, errOut)
	}

	browserOut := &syncWriter{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.Headless,
		chromedp.NoSandbox, // tests and CI run as root, where the sandbox cannot start
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.WindowSize(1280, 800),
		chromedp.CombinedOutput(browserOut),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()
	// One bound for the whole browser session (the first action starts
	// the browser under it).
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	b := tab{t: t, ctx: ctx}
	started := time.Now()
	defer func() {
		if t.Failed() {
			t.Logf("browser output:\n%s", browserOut.String())
		}
	}()

	// Everything the page says on its console; errors fail the test.
	var mu sync.Mutex
	var problems []string
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError {
				mu.Lock()
				problems = append(problems, fmt.Sprintf("%s %s (%s:%d)", m.Source, m, m.URL, m.Line+1))
				mu.Unlock()
			}
		}
	}()
	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: recordCSP}); err != nil {
		t.Fatal(err)
	}

	// / leads to the console, which asks for a login.
	b.do("open the console",
		chromedp.EmulateViewport(1280, 800),
		chromedp.Navigate(gw+"/"),
		chromedp.WaitVisible(chromedp.ID("login-user")),
	)
	if loc := eval[string](b, `location.pathname`); loc != "/ui/" {
		t.Errorf("/ led to %s, want /ui/", loc)
	}
	b.do("log in",
		chromedp.SendKeys(chromedp.ID("login-user"), "ops"),
		chromedp.SendKeys(chromedp.ID("login-pass"), password),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
	)
	if got := b.waitFor("the login", `!document.getElementById("session").hidden ? "in" :
		document.querySelector("#status.error") ? "failed: " + document.getElementById("status").textContent : ""`); got != "in" {
		t.Fatalf("login %s", got)
	}
	if who := b.text("who-name"); who != "ops" {
		t.Errorf("logged in as %q, want ops", who)
	}
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
	b.do("log out",
		chromedp.Click(chromedp.ID("logout")),
		chromedp.WaitVisible(chromedp.ID("login-user")),
	)
	if n := eval[int](b, `sessionStorage.length`); n != 0 {
		t.Errorf("after logging out sessionStorage holds %d items", n)
	}

	if v := eval[[]string](b, `window.__cspViolations`); len(v) > 0 {
		t.Errorf("Content-Security-Policy violations:\n%s", strings.Join(v, "\n"))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Errorf("the page's console reported errors:\n%s", strings.Join(problems, "\n"))
	}
	t.Logf("browser session: %v", time.Since(started).Round(time.Millisecond))
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
