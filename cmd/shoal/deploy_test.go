package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/catalog"
)

// writeFile writes a file in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitStatus polls url until it answers want, and returns how long that
// took; it fails the test after limit.
func waitStatus(t *testing.T, url string, want int, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		status, body := get(t, url)
		if status == want {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("GET %s = %d %s; want %d within %s", url, status, body, want, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// systemFunctions reads GET /system/functions with a token.
func systemFunctions(t *testing.T, gw, tok string) map[string]catalog.FunctionStatus {
	t.Helper()
	req, err := http.NewRequest("GET", gw+"/system/functions", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /system/functions = %d", resp.StatusCode)
	}
	var list []catalog.FunctionStatus
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	out := map[string]catalog.FunctionStatus{}
	for _, f := range list {
		out[f.Name] = f
	}
	return out
}

// TestDeployLive deploys to a running shoal up, through the CLI, and
// checks every change applies without a restart.
func TestDeployLive(t *testing.T) {
	data := t.TempDir()
	dir := t.TempDir()
	base := writeFile(t, dir, "base.yaml", `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, timeout: 5s}
`)
	p := startShoal(t, "up", "-f", base, "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "2", "--nats-context", "")
	natsURL := p.waitLog(`msg="nats listening" url=(\S+)`)[1]
	p.waitLog(`msg="runners serving" workers=2`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	admin := []string{"--data", data, "--nats", natsURL}
	tok, errOut, code := runShoal(t, dir, "token", "--data", data, "--sub", "ops", "--perm", systemPermission+",echo")
	if code != 0 {
		t.Fatalf("shoal token: %s", errOut)
	}
	tok = strings.TrimSpace(tok)

	if status, body := get(t, gw+"/function/echo"); status != 404 || !strings.Contains(body, "function_not_found") {
		t.Fatalf("echo before its deployment = %d %s", status, body)
	}

	// A new function is routable within a second of shoal deploy.
	v1 := writeFile(t, dir, "v1.yaml", `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, timeout: 5s}
  echo:
    description: Echoes.
    handler: {builtin: echo}
    public: true
`)
	out, errOut, code := runShoal(t, dir, append([]string{"deploy", "-f", v1}, admin...)...)
	if code != 0 || !regexp.MustCompile(`(?m)^created\s+echo \(revision \d+\)$`).MatchString(out) || !regexp.MustCompile(`(?m)^unchanged\s+ping`).MatchString(out) {
		t.Fatalf("shoal deploy = %d %q %s", code, out, errOut)
	}
	took := waitStatus(t, gw+"/function/echo", 200, 5*time.Second)
	t.Logf("a deployed function was routable %s after shoal deploy returned", took)
	if took > time.Second {
		t.Errorf("routable after %s, want within 1s", took)
	}

	// list and /system/functions show revision, runners and description.
	fns := systemFunctions(t, gw, tok)
	echoRev := fns["echo"].Revision
	if f := fns["echo"]; f.Revision == 0 || f.Runners != 2 || f.Description != "Echoes." || f.Timeout != "30s" {
		t.Errorf("/system/functions echo = %+v", f)
	}
	out, _, code = runShoal(t, dir, append([]string{"list"}, admin...)...)
	if code != 0 || !regexp.MustCompile(`(?m)^echo\s+\d+\s+2\s+public\s+30s\s+Echoes\.$`).MatchString(out) {
		t.Errorf("shoal list = %d\n%s", code, out)
	}

	// A changed permission list takes effect for the next request, and
	// the revision moves; an unchanged function keeps its revision.
	v2 := writeFile(t, dir, "v2.yaml", `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, timeout: 5s}
  echo:
    description: Echoes.
    handler: {builtin: echo}
    permissions: [echo]
`)
	if out, errOut, code := runShoal(t, dir, append([]string{"deploy", "-f", v2}, admin...)...); code != 0 || !strings.Contains(out, "updated   echo") {
		t.Fatalf("shoal deploy v2 = %d %q %s", code, out, errOut)
	}
	waitStatus(t, gw+"/function/echo", 401, 5*time.Second)
	if status, body := post(t, gw+"/function/echo", "hi", tok); status != 200 {
		t.Errorf("echo with a token holding echo = %d %s", status, body)
	}
	if f := systemFunctions(t, gw, tok); f["echo"].Revision <= echoRev || f["ping"].Revision != fns["ping"].Revision {
		t.Errorf("revisions after the update: echo %d (was %d), ping %d (was %d)", f["echo"].Revision, echoRev, f["ping"].Revision, fns["ping"].Revision)
	}

	// A manifest with errors changes nothing and names every error with
	// file:line:col.
	bad := writeFile(t, dir, "bad.yaml", `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, timeout: 5s}
  echo: {handler: {builtin: nope}, timeot: 1s}
`)
	_, errOut, code = runShoal(t, dir, append([]string{"deploy", "-f", bad, "--prune"}, admin...)...)
	if code == 0 || !strings.Contains(errOut, "bad.yaml:4:29: functions.echo.handler.builtin: unknown built-in") ||
		!strings.Contains(errOut, "bad.yaml:4:36: functions.echo.timeot: unknown key") {
		t.Errorf("deploy of a bad manifest = %d %s", code, errOut)
	}
	if status, _ := post(t, gw+"/function/echo", "hi", tok); status != 200 {
		t.Errorf("echo after a refused deploy = %d", status)
	}

	// A deployed function that no runner has a handler for is listed
	// with 0 runners and answers 503 no_runner. The deploying CLI knows
	// the test built-ins; up's workers do not.
	orphan := writeFile(t, dir, "orphan.yaml", `version: 1
functions:
  crash: {handler: {builtin: crash}, public: true}
`)
	if out, errOut, code := runShoalEnv(t, dir, []string{testFunctions + "=1"}, append([]string{"deploy", "-f", orphan}, admin...)...); code != 0 {
		t.Fatalf("deploy crash = %d %s %s", code, out, errOut)
	}
	waitStatus(t, gw+"/function/crash", 503, 5*time.Second)
	if status, body := get(t, gw+"/function/crash"); !strings.Contains(body, "no_runner") {
		t.Errorf("crash with no runner = %d %s", status, body)
	}
	if f := systemFunctions(t, gw, tok)["crash"]; f.Revision == 0 || f.Runners != 0 {
		t.Errorf("/system/functions crash = %+v, want 0 runners", f)
	}

	// shoal rm: 404 from the next request; removing it again is an error.
	if out, errOut, code := runShoal(t, dir, append([]string{"rm", "echo", "crash"}, admin...)...); code != 0 || !strings.Contains(out, "removed   echo") {
		t.Fatalf("shoal rm = %d %q %s", code, out, errOut)
	}
	waitStatus(t, gw+"/function/echo", 404, 5*time.Second)
	if _, errOut, code := runShoal(t, dir, append([]string{"rm", "echo"}, admin...)...); code == 0 || !strings.Contains(errOut, `function "echo" is not deployed`) {
		t.Errorf("shoal rm of a removed function = %d %s", code, errOut)
	}

	// --prune removes what the file does not declare.
	if out, errOut, code := runShoal(t, dir, append([]string{"deploy", "-f", v1}, admin...)...); code != 0 {
		t.Fatalf("redeploy = %d %s %s", code, out, errOut)
	}
	waitStatus(t, gw+"/function/echo", 200, 5*time.Second)
	if out, errOut, code := runShoal(t, dir, append([]string{"deploy", "--prune", "-f", base}, admin...)...); code != 0 || !strings.Contains(out, "removed   echo") {
		t.Fatalf("deploy --prune = %d %q %s", code, out, errOut)
	}
	waitStatus(t, gw+"/function/echo", 404, 5*time.Second)
	if status, body := get(t, gw+"/function/ping"); status != 200 || body != "pong!" {
		t.Errorf("ping after all that = %d %q", status, body)
	}
}
