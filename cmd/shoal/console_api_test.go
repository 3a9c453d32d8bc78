package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// consoleManifest deploys the auth function a second time, as login,
// with asynchronous calls on: a login with a malformed body is answered
// 400, which fails an asynchronous call at once and dead-letters it.
const consoleManifest = `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true}
  auth: {handler: {builtin: auth}, public: true, async: {enabled: false}}
  login: {handler: {builtin: auth}, public: true}
`

// TestUpConsoleAPI drives the console's system API on shoal up as a
// real process, with the NATS roles it runs: the gateway role lists the
// calls and dead letters, and up's admin connection re-drives and
// discards them for a system:write token.
func TestUpConsoleAPI(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	fn := filepath.Join(dir, "fn.yaml")
	if err := os.WriteFile(fn, []byte(consoleManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startShoal(t, "up", "-f", fn, "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "1")
	p.waitLog(`msg="runners serving" workers=1`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	mint := func(perms string) string {
		t.Helper()
		tok, errOut, code := runShoal(t, dir, "token", "--data", data, "--sub", "ops", "--perm", perms)
		if code != 0 {
			t.Fatalf("shoal token: %d %s", code, errOut)
		}
		return strings.TrimSpace(tok)
	}
	read, write := mint("system:read"), mint("system:read,system:write")
	call := func(method, path, tok string, body io.Reader) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, gw+path, body)
		if err != nil {
			t.Fatal(err)
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if status, body := call("GET", "/system/whoami", write, nil); status != 200 || !strings.Contains(body, `"operator":{"read":true,"write":true}`) {
		t.Errorf("whoami: %d %s", status, body)
	}
	for range 3 {
		if status, body := call("GET", "/function/ping", "", nil); status != 200 || body != "pong!" {
			t.Fatalf("ping: %d %q", status, body)
		}
	}
	status, body := call("GET", "/system/stats?window=60&step=5", read, nil)
	if status != 200 || !strings.Contains(body, `"name":"ping","total":{"requests":3,`) {
		t.Errorf("stats: %d %s", status, body)
	}

	// A call that fails: dead-lettered by the worker.
	status, body = call("POST", "/async-function/login/token", read, strings.NewReader("not json"))
	var a struct {
		ID string `json:"id"`
	}
	if status != 202 || json.Unmarshal([]byte(body), &a) != nil {
		t.Fatalf("submit: %d %s", status, body)
	}
	deadLetters := func() string {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			status, body := call("GET", "/system/dlq", read, nil)
			if status != 200 {
				t.Fatalf("dlq: %d %s", status, body)
			}
			if strings.Contains(body, a.ID) || time.Now().After(deadline) {
				return body
			}
		}
	}
	if body := deadLetters(); !strings.Contains(body, `"id":"`+a.ID+`","function":"login"`) {
		t.Fatalf("dlq: %s, want call %s", body, a.ID)
	}
	if status, body := call("GET", "/system/calls?function=login", read, nil); status != 200 || !strings.Contains(body, `"id":"`+a.ID+`"`) || !strings.Contains(body, `"status":"failed"`) {
		t.Errorf("calls: %d %s", status, body)
	}
	// Re-driven through up's admin connection, it fails again.
	if status, body := call("POST", "/system/dlq/"+a.ID+"/retry", read, nil); status != 403 {
		t.Errorf("retry with system:read only: %d %s", status, body)
	}
	if status, body := call("POST", "/system/dlq/"+a.ID+"/retry", write, nil); status != 200 || !strings.Contains(body, `"status":"queued"`) {
		t.Fatalf("retry: %d %s", status, body)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, body := call("GET", "/calls/"+a.ID, "", nil)
		if strings.Contains(body, `"status":"failed"`) && strings.Contains(deadLetters(), a.ID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the re-driven call did not fail again: %s", body)
		}
	}
	if status, body := call("DELETE", "/system/dlq/"+a.ID, write, nil); status != 200 || !strings.Contains(body, `"discarded":true`) {
		t.Fatalf("discard: %d %s", status, body)
	}
	if _, body := call("GET", "/system/dlq", read, nil); strings.Contains(body, a.ID) {
		t.Errorf("discarded, still listed: %s", body)
	}
}
