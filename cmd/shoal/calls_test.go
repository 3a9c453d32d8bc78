package main

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/calls"
)

// TestAsyncCalls runs asynchronous calls through the real CLI against
// `shoal up`: shoal invoke --async (through the gateway and over NATS,
// with --wait, --idempotency-key, -i), then the dead letters of a function
// that always fails with shoal calls get, dlq, retry and discard.
func TestAsyncCalls(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	fn := writeFile(t, dir, "fn.yaml", `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, timeout: 5s}
  echo: {handler: {builtin: echo}, permissions: [echo], timeout: 5s}
  sleep: {handler: {builtin: sleep}, public: true, timeout: 10s}
  flaky:
    handler: {builtin: fail}
    public: true
    timeout: 5s
    async: {max_deliver: 2, backoff: [0s]}
`)
	const natsContext = "shoal-async-test" // not the default, shared with other tests
	p := startShoalEnv(t, []string{testFunctions + "=1"}, "up", "-f", fn, "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0",
		"--data", data, "--workers", "1", "--nats-context", natsContext)
	natsURL := p.waitLog(`msg="nats listening" url=(\S+)`)[1]
	p.waitLog(`msg="runners serving" workers=1`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	p.waitLog(`msg="saved a nats CLI context `)
	tok, errOut, code := runShoal(t, dir, "token", "--data", data, "--sub", "ops", "--perm", "echo")
	if code != 0 {
		t.Fatalf("shoal token = %d %s", code, errOut)
	}
	tok = strings.TrimSpace(tok)
	viaGateway, viaNATS := []string{"--gateway", gw}, []string{"--nats-context", natsContext}
	const id = `[a-z2-7]{26}`

	for _, tt := range []struct {
		name       string
		args       []string
		code       int
		out, error string // regular expressions stdout and stderr must match
	}{
		{"submit prints the call id", append([]string{"invoke", "--async", "ping"}, viaGateway...), 0, `^` + id + `\n$`, `^$`},
		{"-i shows the 202 first", append([]string{"invoke", "--async", "-i", "ping"}, viaGateway...), 0,
			`(?s)^202 Accepted\n.*Location: /calls/` + id + `\n.*X-Call-Id: ` + id + `\n.*X-Request-Id: [0-9a-f]{32}\n\n` + id + `\n$`, `^$`},
		{"--wait prints the answer", append([]string{"invoke", "--async", "--wait", "ping"}, viaGateway...), 0,
			`^pong!$`, `(?m)^call ` + id + ` of ping submitted\n(call ` + id + `: (queued|running \(attempt 1 of 3\))\n)*call ` + id + `: succeeded \(attempt 1 of 3\)$`},
		{"--wait reads the record with the call's token", append([]string{"invoke", "--async", "--wait", "echo", "--token", tok, "-d", "hi", "-X", "PUT"}, viaGateway...), 0,
			`"method": "PUT"(?s:.*)"body": "hi"`, `succeeded`},
		{"refused without a token", append([]string{"invoke", "--async", "echo", "-d", "hi"}, viaGateway...), 1, `^$`, `echo answered 401 invalid_token`},
		{"over NATS: an id in the clients' namespace", append([]string{"invoke", "--async", "ping"}, viaNATS...), 0, `^n\.` + id + `\n$`, `^$`},
		{"over NATS, --wait", append([]string{"invoke", "--async", "--wait", "ping"}, viaNATS...), 0, `^pong!$`, `succeeded \(attempt 1 of 3\)`},
		{"over NATS, --wait with a token", append([]string{"invoke", "--async", "--wait", "echo", "--token", tok, "-d", "hi"}, viaNATS...), 0, `"body": "hi"`, `succeeded`},
		{"unfinished within --timeout", append([]string{"invoke", "--async", "--wait", "sleep", "--path", "?d=5s", "--timeout", "700ms"}, viaGateway...), 1,
			`^$`, `call ` + id + ` is still (queued|running \(attempt 1 of 3\)) after 700ms; .*shoal calls get ` + id},
		{"--wait without --async", append([]string{"invoke", "--wait", "ping"}, viaGateway...), 1, `^$`, `--wait goes with --async`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runShoal(t, dir, tt.args...)
			if code != tt.code || !regexp.MustCompile(tt.out).MatchString(out) || !regexp.MustCompile(tt.error).MatchString(errOut) {
				t.Errorf("shoal %s = %d\nstdout: %q (want %s)\nstderr: %q (want %s)", strings.Join(tt.args, " "), code, out, tt.out, errOut, tt.error)
			}
		})
	}

	// An idempotency key gives the same call twice; over NATS its id
	// derives from the key as the gateway derives it for an anonymous
	// caller.
	for _, via := range [][]string{viaGateway, viaNATS} {
		key := "key-" + strings.TrimPrefix(via[0], "--")
		args := append([]string{"invoke", "--async", "ping", "--idempotency-key", key}, via...)
		first, errOut, code := runShoal(t, dir, args...)
		if code != 0 {
			t.Fatalf("shoal %s = %d %s", strings.Join(args, " "), code, errOut)
		}
		again, errOut, code := runShoal(t, dir, args...)
		if code != 0 || again != first || !strings.Contains(errOut, "submitted earlier with this idempotency key") {
			t.Errorf("the same idempotency key again %v: %d %q (first %q) %s", via, code, again, first, errOut)
		}
		if want := calls.ClientID(calls.IdempotentID("ping", "", key)); via[0] == "--nats-context" && strings.TrimSpace(first) != want {
			t.Errorf("over NATS, idempotency key %q gave call %s, want %s", key, first, want)
		}
	}

	// A function that always fails: two attempts, then the dead-letter
	// stream. Its answer's body is printed as a synchronous call's.
	out, errOut, code := runShoal(t, dir, "invoke", "--async", "--wait", "flaky", "--gateway", gw)
	// (With no back-off, the retry is too quick for the polling to
	// see it every time.)
	if code != 1 || out != "fails on purpose\n" ||
		!regexp.MustCompile(`failed \(attempt 2 of 2\): 500 function_error: the function answered 500 Internal Server Error`).MatchString(errOut) {
		t.Fatalf("invoke --async --wait flaky = %d %q\n%s", code, out, errOut)
	}
	flaky := regexp.MustCompile(`call (` + id + `) of flaky submitted`).FindStringSubmatch(errOut)[1]

	admin := []string{"--data", data, "--nats", natsURL}
	shoalCalls := func(args ...string) (string, string, int) {
		t.Helper()
		return runShoal(t, dir, append(append([]string{"calls"}, args...), admin...)...)
	}
	deadLetters := func() map[string][]calls.DeadLetter {
		t.Helper()
		out, errOut, code := shoalCalls("dlq", "--json")
		var list []calls.DeadLetter
		if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil {
			t.Fatalf("shoal calls dlq --json = %d %v\n%s%s", code, err, out, errOut)
		}
		byID := map[string][]calls.DeadLetter{}
		for _, d := range list {
			byID[d.ID] = append(byID[d.ID], d)
		}
		return byID
	}
	// checkDeadLetter checks that the call is dead-lettered once, after
	// two attempts, and that its record says so.
	checkDeadLetter := func() {
		t.Helper()
		if ds := deadLetters()[flaky]; len(ds) != 1 || ds[0].Function != "flaky" || ds[0].Attempts != 2 || ds[0].Error == nil || ds[0].Error.Code != "function_error" {
			t.Errorf("dead letters of call %s: %+v, want one of flaky after 2 attempts", flaky, ds)
		}
		out, errOut, code := shoalCalls("get", flaky, "--json")
		var rec calls.Record
		if err := json.Unmarshal([]byte(out), &rec); code != 0 || err != nil || rec.Status != calls.Failed || rec.Attempts != 2 || rec.Response == nil || rec.Response.Status != 500 {
			t.Errorf("shoal calls get %s --json = %d %v\n%s%s", flaky, code, err, out, errOut)
		}
	}
	checkDeadLetter()
	if out, errOut, code := shoalCalls("dlq"); code != 0 || !regexp.MustCompile(`(?m)^ID\s+FUNCTION\s+ATTEMPTS\s+ERROR\s+FAILED$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^`+flaky+`\s+flaky\s+2\s+function_error: the function answered 500 \S.*…\s+\d+s ago$`).MatchString(out) {
		t.Errorf("shoal calls dlq = %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = shoalCalls("get", flaky)
	for _, want := range []string{`(?m)^call:\s+` + flaky + `$`, `(?m)^function:\s+flaky$`, `(?m)^status:\s+failed$`, `(?m)^attempts:\s+2 of 2$`,
		`(?m)^finished:\s+\S+Z \(\d+s ago\)$`, `(?m)^error:\s+function_error: the function answered 500`, `(?m)^response:\s+500 Internal Server Error, 17 bytes$`} {
		if code != 0 || !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("shoal calls get %s = %d, want %s:\n%s%s", flaky, code, want, out, errOut)
		}
	}

	// retry re-drives the call (it fails again, two attempts afresh, and
	// is back in the dead-letter stream); an unknown id is an error that
	// does not stop the others.
	out, errOut, code = shoalCalls("retry", "nope", flaky)
	if code != 1 || !strings.Contains(errOut, "no dead-lettered call nope") ||
		!regexp.MustCompile(`(?m)^requeued  `+flaky+` \(flaky, failed after 2 attempt\(s\): function_error\)$`).MatchString(out) {
		t.Fatalf("shoal calls retry nope %s = %d\n%s%s", flaky, code, out, errOut)
	}
	for deadline := time.Now().Add(10 * time.Second); len(deadLetters()[flaky]) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("call %s not dead-lettered again within 10s of its retry", flaky)
		}
	}
	checkDeadLetter()

	// discard drops it for good; twice is an error naming it.
	if out, errOut, code := shoalCalls("discard", flaky); code != 0 || !strings.HasPrefix(out, "discarded "+flaky+" (flaky") {
		t.Errorf("shoal calls discard %s = %d\n%s%s", flaky, code, out, errOut)
	}
	if ds := deadLetters(); len(ds) != 0 {
		t.Errorf("dead letters after the discard: %+v", ds)
	}
	if out, _, code := shoalCalls("dlq"); code != 0 || out != "no dead-lettered calls\n" {
		t.Errorf("shoal calls dlq with none = %d %q", code, out)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"discard", flaky}, "no dead-lettered call " + flaky},
		{[]string{"retry", "nope"}, "no dead-lettered call nope"},
		{[]string{"get", "nope"}, "no call nope"},
	} {
		if _, errOut, code := shoalCalls(tt.args...); code != 1 || !strings.Contains(errOut, tt.want) {
			t.Errorf("shoal calls %s = %d %s, want exit 1 and %q", strings.Join(tt.args, " "), code, errOut, tt.want)
		}
	}
}

// TestDescribeState pins down the lines invoke --async --wait prints as a
// call moves on.
func TestDescribeState(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	failedOnce := &calls.Record{Status: calls.Queued, Attempts: 1, MaxAttempts: 3, NextAttemptAt: now.Add(90 * time.Second),
		Error: &invocation.Error{Code: invocation.CodeTimeout, Message: "no answer within 5s"}}
	for _, tt := range []struct {
		name string
		rec  *calls.Record
		want string
	}{
		{"not recorded yet", nil, "queued"},
		{"queued", &calls.Record{Status: calls.Queued}, "queued"},
		{"running", &calls.Record{Status: calls.Running, Attempts: 1, MaxAttempts: 3}, "running (attempt 1 of 3)"},
		{"waiting for a retry", failedOnce, "attempt 1 of 3 failed (timeout: no answer within 5s); retrying in 1m30s"},
		{"retry due", &calls.Record{Status: calls.Queued, Attempts: 2, MaxAttempts: 3, NextAttemptAt: now,
			Error: &invocation.Error{Code: "function_error", Message: "boom"}}, "attempt 2 of 3 failed (function_error: boom); retrying now"},
		{"succeeded", &calls.Record{Status: calls.Succeeded, Attempts: 2, MaxAttempts: 3}, "succeeded (attempt 2 of 3)"},
		{"failed", &calls.Record{Status: calls.Failed, Attempts: 3, MaxAttempts: 3}, "failed (attempt 3 of 3)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := describeState(tt.rec, now); got != tt.want {
				t.Errorf("describeState = %q, want %q", got, tt.want)
			}
		})
	}
	expired, cancel := context.WithTimeout(t.Context(), 0)
	defer cancel()
	err := unfinished(expired, "abc", failedOnce, errors.New("connection refused"), time.Minute)
	if want := "call abc is still queued for a retry (attempt 1 of 3 failed) after 1m0s"; !strings.HasPrefix(err.Error(), want) ||
		!strings.Contains(err.Error(), "shoal calls get abc") || !strings.HasSuffix(err.Error(), "failed: connection refused") {
		t.Errorf("unfinished = %q, want it to start %q", err, want)
	}
}
