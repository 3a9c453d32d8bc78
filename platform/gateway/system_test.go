package gateway_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/console"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/token/tokentest"
)

// TestWhoami: GET /system/whoami tells any valid token's holder who they
// are, until when, and which operator routes their token opens.
func TestWhoami(t *testing.T) {
	p := startSecured(t, securedOptions{})
	bearer := tokentest.Bearer(t, p.key, "ops")
	tests := []struct {
		name, authorization string
		status              int
		perms               []string
		read, write         bool
	}{
		{"no token", "", 401, nil, false, false},
		{"not a token", "Bearer nope", 401, nil, false, false},
		{"no permission", bearer(), 200, []string{}, false, false},
		{"a function's permission", bearer("echo"), 200, []string{"echo"}, false, false},
		{"system:read", bearer("echo", gateway.DefaultSystemPermission), 200, []string{"echo", "system:read"}, true, false},
		{"system:write alone", bearer(gateway.DefaultSystemWritePermission), 200, []string{"system:write"}, false, true},
		{"operator", bearer("system:read", "system:write"), 200, []string{"system:read", "system:write"}, true, true},
	}
	for _, tt := range tests {
		req := newRequest(t, "GET", p.url+"/system/whoami", nil)
		if tt.authorization != "" {
			req.Header.Set("Authorization", tt.authorization)
		}
		before := time.Now()
		resp := do(t, req)
		if resp.status != tt.status {
			t.Errorf("%s: %d %s, want %d", tt.name, resp.status, resp.body, tt.status)
			continue
		}
		if tt.status != 200 {
			if !strings.Contains(resp.body, `"invalid_token"`) || resp.header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s: %d %s %v, want invalid_token with a challenge", tt.name, resp.status, resp.body, resp.header)
			}
			continue
		}
		var got gateway.Whoami
		if err := json.Unmarshal([]byte(resp.body), &got); err != nil {
			t.Fatalf("%s: %v in %s", tt.name, err, resp.body)
		}
		if got.Subject != "ops" || !slices.Equal(got.Permissions, tt.perms) || got.Operator.Read != tt.read || got.Operator.Write != tt.write {
			t.Errorf("%s: %s, want subject ops, permissions %v, read %v, write %v", tt.name, resp.body, tt.perms, tt.read, tt.write)
		}
		// tokentest.Bearer signs for a minute, with whole-second times.
		if exp := got.ExpiresAt.Sub(before); exp < 58*time.Second || exp > 61*time.Second {
			t.Errorf("%s: expires_at %v, %v after the request, want a minute", tt.name, got.ExpiresAt, exp)
		}
		if got.IssuedAt.IsZero() || got.Issuer != "shoal" {
			t.Errorf("%s: issued_at %v, issuer %q", tt.name, got.IssuedAt, got.Issuer)
		}
		if resp.header.Get("Cache-Control") != "no-store" || resp.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: headers %v, want no-store and nosniff", tt.name, resp.header)
		}
	}
}

// statsBody is the JSON of GET /system/stats.
type statsBody struct {
	Window    int  `json:"window"`
	Step      int  `json:"step"`
	Gateways  int  `json:"gateways"`
	Partial   bool `json:"partial"`
	Functions []struct {
		Name  string       `json:"name"`
		Total statsFigures `json:"total"`
		// Series are the steps, oldest first.
		Series []statsFigures `json:"series"`
	} `json:"functions"`
}

type statsFigures struct {
	Requests     uint64  `json:"requests"`
	Errors       uint64  `json:"errors"`
	ClientErrors uint64  `json:"client_errors"`
	Rate         float64 `json:"rate"`
	ErrorRate    float64 `json:"error_rate"`
	P50          float64 `json:"p50_ms"`
	P99          float64 `json:"p99_ms"`
}

// TestStats: GET /system/stats counts the synchronous invocations each
// function answered, by class of status, with their latency, for a
// system:read token.
func TestStats(t *testing.T) {
	p := start(t, options{tokens: true})
	bearer := tokentest.Bearer(t, p.key, "ops")
	calls := map[string]int{"ping": 5, "teapot": 2, "panic": 3, "sleep?d=1m": 1, "nope": 4}
	for name, n := range calls {
		for range n {
			do(t, newRequest(t, "GET", p.url+"/function/"+name, nil))
		}
	}
	get := func(query, authorization string) response {
		req := newRequest(t, "GET", p.url+"/system/stats"+query, nil)
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		return do(t, req)
	}
	resp := get("?window=60&step=10", bearer("system:read"))
	if resp.status != 200 {
		t.Fatalf("GET /system/stats: %d %s", resp.status, resp.body)
	}
	var st statsBody
	if err := json.Unmarshal([]byte(resp.body), &st); err != nil {
		t.Fatal(err)
	}
	if st.Window != 60 || st.Step != 10 {
		t.Errorf("window %d, step %d, want 60 and 10", st.Window, st.Step)
	}
	if st.Gateways != 1 || st.Partial {
		t.Errorf("%d gateways, partial %v; want this one alone, whole", st.Gateways, st.Partial)
	}
	want := map[string]statsFigures{
		"ping":   {Requests: 5},
		"teapot": {Requests: 2, ClientErrors: 2},
		"panic":  {Requests: 3, Errors: 3, ErrorRate: 1},
		"sleep":  {Requests: 1, Errors: 1, ErrorRate: 1}, // 504 after its 300 ms timeout
	}
	var names []string
	for _, fn := range st.Functions {
		names = append(names, fn.Name)
		w := want[fn.Name]
		got := fn.Total
		if got.Requests != w.Requests || got.Errors != w.Errors || got.ClientErrors != w.ClientErrors || got.ErrorRate != w.ErrorRate {
			t.Errorf("%s: %+v, want %+v", fn.Name, got, w)
		}
		if len(fn.Series) != 6 {
			t.Errorf("%s: %d steps, want 6", fn.Name, len(fn.Series))
		}
		var sum uint64
		for _, pt := range fn.Series {
			sum += pt.Requests
		}
		if sum != got.Requests {
			t.Errorf("%s: the steps hold %d requests, the total %d", fn.Name, sum, got.Requests)
		}
		if got.Requests > 0 && (got.P50 <= 0 || got.P99 < got.P50) {
			t.Errorf("%s: p50 %v ms, p99 %v ms", fn.Name, got.P50, got.P99)
		}
		if got.Requests == 0 && (got.P50 != 0 || got.Rate != 0) {
			t.Errorf("%s: no requests but %+v", fn.Name, got)
		}
	}
	// Every deployed function, sorted; names not deployed are not.
	if !slices.IsSorted(names) || len(names) != len(p.m.Functions) || slices.Contains(names, "nope") {
		t.Errorf("functions %v, want the %d deployed, sorted", names, len(p.m.Functions))
	}
	// The sleep function's 504 took its 300 ms timeout.
	for _, fn := range st.Functions {
		if fn.Name == "sleep" && (fn.Total.P50 < 250 || fn.Total.P50 > 2000) {
			t.Errorf("sleep p50 %v ms, want about 300", fn.Total.P50)
		}
	}

	tests := []struct {
		name, query, authorization string
		status                     int
		code                       string
	}{
		{"no token", "", "", 401, "invalid_token"},
		{"no system:read", "", bearer("system:write"), 403, "insufficient_scope"},
		{"defaults", "", bearer("system:read"), 200, ""},
		{"window not a number", "?window=5m", bearer("system:read"), 400, "bad_request"},
		{"window too long", "?window=3600", bearer("system:read"), 400, "bad_request"},
		{"step too long", "?window=600&step=120", bearer("system:read"), 400, "bad_request"},
		{"window not a multiple of step", "?window=100&step=30", bearer("system:read"), 400, "bad_request"},
		{"step zero", "?step=0", bearer("system:read"), 400, "bad_request"},
		{"window that would overflow", "?window=9223372037", bearer("system:read"), 400, "from 1 to 600"},
	}
	for _, tt := range tests {
		resp := get(tt.query, tt.authorization)
		if resp.status != tt.status || !strings.Contains(resp.body, tt.code) {
			t.Errorf("%s: %d %s, want %d %s", tt.name, resp.status, resp.body, tt.status, tt.code)
		}
		if tt.status == 200 {
			var d statsBody
			if err := json.Unmarshal([]byte(resp.body), &d); err != nil || d.Window != 300 || d.Step != 5 || len(d.Functions[0].Series) != 60 {
				t.Errorf("%s: window %d step %d (%v), want 300 and 5 with 60 steps", tt.name, d.Window, d.Step, err)
			}
		}
	}

	// A function removed from the gateway leaves the figures.
	p.gateway.SetFunctions(slices.DeleteFunc(slices.Clone(p.m.Functions), func(fn manifest.Function) bool { return fn.Name == "ping" }))
	resp = get("", bearer("system:read"))
	if strings.Contains(resp.body, `"ping"`) {
		t.Errorf("ping still listed after its removal: %s", resp.body)
	}
}

// TestSystemCalls: GET /system/calls lists the calls changed most
// recently, newest first, without their answers' bodies.
func TestSystemCalls(t *testing.T) {
	p := startAsync(t, asyncOptions{})
	read := p.bearer(t, "ops", "system:read")
	var ids []string
	for i := range 3 {
		a := accepted(t, p.post(t, "/async-function/echo", strings.NewReader(fmt.Sprint("hello ", i)), nil), "echo")
		p.waitCall(t, a.ID, "", calls.Succeeded)
		ids = append(ids, a.ID)
	}
	c := accepted(t, p.post(t, "/async-function/counter", nil, nil), "counter")
	p.waitCall(t, c.ID, "", calls.Succeeded)

	list := func(query string) []calls.Record {
		t.Helper()
		resp := p.get(t, "/system/calls"+query, read)
		var body struct {
			Calls []calls.Record `json:"calls"`
		}
		if resp.status != 200 || json.Unmarshal([]byte(resp.body), &body) != nil || body.Calls == nil {
			t.Fatalf("GET /system/calls%s: %d %s", query, resp.status, resp.body)
		}
		return body.Calls
	}
	idsOf := func(recs []calls.Record) []string {
		var out []string
		for _, r := range recs {
			out = append(out, r.ID)
		}
		return out
	}
	all := list("")
	if got, want := idsOf(all), []string{c.ID, ids[2], ids[1], ids[0]}; !slices.Equal(got, want) {
		t.Errorf("calls %v, want %v (newest first)", got, want)
	}
	for _, r := range all {
		if r.Status != calls.Succeeded || r.Response == nil || r.Response.Status != 200 || r.Response.Body != nil {
			t.Errorf("call %s: %+v, want succeeded with status 200 and no body", r.ID, r)
		}
	}
	if got, want := idsOf(list("?function=echo&limit=2")), []string{ids[2], ids[1]}; !slices.Equal(got, want) {
		t.Errorf("echo, limit 2: %v, want %v", got, want)
	}
	if got := list("?function=nope"); len(got) != 0 {
		t.Errorf("calls of a function that has none: %v", idsOf(got))
	}
	// A record that does not decode is left out and counted: "skipped",
	// which, like "truncated", is absent when there is nothing to say.
	if resp := p.get(t, "/system/calls", read); strings.Contains(resp.body, `"skipped"`) || strings.Contains(resp.body, `"truncated"`) {
		t.Errorf("a whole listing says it skipped or truncated: %s", resp.body)
	}
	kv, err := p.js.KeyValue(t.Context(), calls.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), "garbage", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	resp := p.get(t, "/system/calls", read)
	var body struct {
		Calls     []calls.Record `json:"calls"`
		Truncated bool           `json:"truncated"`
		Skipped   int            `json:"skipped"`
	}
	if err := json.Unmarshal([]byte(resp.body), &body); err != nil || resp.status != 200 || len(body.Calls) != 4 || body.Skipped != 1 || body.Truncated {
		t.Errorf("GET /system/calls with a record that does not decode: %d %s, want the 4 calls and \"skipped\":1", resp.status, resp.body)
	}

	tests := []struct {
		name, query, authorization string
		status                     int
		code                       string
	}{
		{"no token", "", "", 401, "invalid_token"},
		{"a function's permission", "", p.bearer(t, "ops", "echo"), 403, "insufficient_scope"},
		{"limit 0", "?limit=0", read, 400, "bad_request"},
		{"limit over the maximum", fmt.Sprintf("?limit=%d", calls.MaxRecent+1), read, 400, "bad_request"},
		{"limit not a number", "?limit=ten", read, 400, "bad_request"},
	}
	for _, tt := range tests {
		if resp := p.get(t, "/system/calls"+tt.query, tt.authorization); resp.status != tt.status || !strings.Contains(resp.body, tt.code) {
			t.Errorf("%s: %d %s, want %d %s", tt.name, resp.status, resp.body, tt.status, tt.code)
		}
	}
}

// TestSystemDLQ: GET /system/dlq lists the dead letters, newest first;
// POST /system/dlq/ID/retry queues one again and DELETE /system/dlq/ID
// drops it, with system:write, on a gateway that has an operator
// connection; without one, all three answer 501.
func TestSystemDLQ(t *testing.T) {
	p := startAsync(t, asyncOptions{operator: true})
	read, write := p.bearer(t, "ops", "system:read"), p.bearer(t, "ops", "system:read", "system:write")
	// teapot answers 418: a client error fails the call at once.
	var ids []string
	for range 3 {
		a := accepted(t, p.post(t, "/async-function/teapot", strings.NewReader("tea"), nil), "teapot")
		rec := p.waitCall(t, a.ID, "", calls.Failed)
		if rec.Error == nil || rec.Error.Code != invocation.CodeFunctionError {
			t.Fatalf("call %s: error %+v", a.ID, rec.Error)
		}
		ids = append(ids, a.ID)
	}
	type deadLetters struct {
		DeadLetters []calls.DeadLetter `json:"dead_letters"`
	}
	list := func() []string {
		t.Helper()
		var out []string
		// A dead letter is written after the record says failed: wait
		// for them.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			resp := p.get(t, "/system/dlq", read)
			var body deadLetters
			if resp.status != 200 || json.Unmarshal([]byte(resp.body), &body) != nil || body.DeadLetters == nil {
				t.Fatalf("GET /system/dlq: %d %s", resp.status, resp.body)
			}
			out = out[:0]
			for _, d := range body.DeadLetters {
				if d.Function != "teapot" || d.Error == nil || d.Error.Code != invocation.CodeFunctionError || d.Size != 3 {
					t.Errorf("dead letter %+v (error %+v)", d, d.Error)
				}
				out = append(out, d.ID)
			}
			if len(out) >= 3 || time.Now().After(deadline) {
				return out
			}
		}
	}
	if got, want := list(), []string{ids[2], ids[1], ids[0]}; !slices.Equal(got, want) {
		t.Fatalf("dead letters %v, want %v (newest first)", got, want)
	}

	act := func(method, path, authorization string) response {
		req := newRequest(t, method, p.url+path, nil)
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		return do(t, req)
	}
	tests := []struct {
		name, method, path, authorization string
		status                            int
		code                              string
	}{
		{"retry without a token", "POST", "/system/dlq/" + ids[0] + "/retry", "", 401, "invalid_token"},
		{"retry with system:read only", "POST", "/system/dlq/" + ids[0] + "/retry", read, 403, "insufficient_scope"},
		{"discard with system:read only", "DELETE", "/system/dlq/" + ids[0], read, 403, "insufficient_scope"},
		{"retry an unknown id", "POST", "/system/dlq/" + calls.NewID() + "/retry", write, 404, "call_not_found"},
		{"retry a malformed id", "POST", "/system/dlq/..%2F/retry", write, 404, "call_not_found"},
		{"discard an unknown id", "DELETE", "/system/dlq/" + calls.NewID(), write, 404, "call_not_found"},
		{"GET a dead letter", "GET", "/system/dlq/" + ids[0], write, 405, ""},
	}
	for _, tt := range tests {
		if resp := act(tt.method, tt.path, tt.authorization); resp.status != tt.status || !strings.Contains(resp.body, tt.code) {
			t.Errorf("%s: %d %s, want %d %s", tt.name, resp.status, resp.body, tt.status, tt.code)
		}
	}

	// Retry: queued again under its id, it runs (and fails again: the
	// teapot is still a teapot), counted afresh.
	resp := act("POST", "/system/dlq/"+ids[0]+"/retry", write)
	var a acceptedBody
	if resp.status != 200 || json.Unmarshal([]byte(resp.body), &a) != nil || a.ID != ids[0] || a.Function != "teapot" || a.Status != calls.Queued || a.URL != "/calls/"+ids[0] {
		t.Fatalf("retry: %d %s", resp.status, resp.body)
	}
	p.waitCall(t, ids[0], "", calls.Failed)
	// Discard: gone for good.
	resp = act("DELETE", "/system/dlq/"+ids[1], write)
	if resp.status != 200 || !strings.Contains(resp.body, `"discarded":true`) {
		t.Fatalf("discard: %d %s", resp.status, resp.body)
	}
	if resp := act("DELETE", "/system/dlq/"+ids[1], write); resp.status != 404 {
		t.Errorf("discard twice: %d %s", resp.status, resp.body)
	}
	// The re-driven call is the newest dead letter now; the discarded
	// one is gone.
	if got, want := list(), []string{ids[0], ids[2]}; !slices.Equal(got, want) {
		t.Errorf("dead letters after retry and discard: %v, want %v", got, want)
	}

	// A gateway without an operator connection neither lists nor acts.
	q := startAsync(t, asyncOptions{})
	if resp := q.get(t, "/system/dlq", q.bearer(t, "ops", "system:read")); resp.status != 501 || !strings.Contains(resp.body, "not_implemented") {
		t.Errorf("list without an operator: %d %s", resp.status, resp.body)
	}
	qw := q.bearer(t, "ops", "system:read", "system:write")
	for _, method := range []string{"POST", "DELETE"} {
		path := "/system/dlq/" + ids[2]
		if method == "POST" {
			path += "/retry"
		}
		req := newRequest(t, method, q.url+path, nil)
		req.Header.Set("Authorization", qw)
		if resp := do(t, req); resp.status != 501 || !strings.Contains(resp.body, "not_implemented") {
			t.Errorf("%s without an operator: %d %s", method, resp.status, resp.body)
		}
	}
}

// TestConsoleRoutes: the gateway leads / and /ui to the console, serves
// it under its Content-Security-Policy, and answers a method a route does
// not take with the platform's JSON 405 and Allow.
func TestConsoleRoutes(t *testing.T) {
	p := start(t, options{runners: -1})
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	tests := []struct {
		method, path string
		status       int
		header, want string
	}{
		{"GET", "/", 302, "Location", "/ui/"},
		{"HEAD", "/", 302, "Location", "/ui/"},
		{"GET", "/ui", 301, "Location", "/ui/"},
		{"HEAD", "/ui", 301, "Location", "/ui/"},
		{"GET", "/ui/", 200, "Content-Security-Policy", console.ContentSecurityPolicy},
		{"GET", "/ui/app.js", 200, "Content-Type", "text/javascript; charset=utf-8"},
		{"GET", "/ui/nope.js", 404, "Content-Type", "application/json"},
		{"POST", "/", 405, "Allow", "GET, HEAD"},
		{"DELETE", "/system/whoami", 405, "Allow", "GET"},
		{"PUT", "/system/dlq/x/retry", 405, "Allow", "POST"},
	}
	for _, tt := range tests {
		req := newRequest(t, tt.method, p.url+tt.path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || resp.Header.Get(tt.header) != tt.want {
			t.Errorf("%s %s: %d %s: %q, want %d %q", tt.method, tt.path, resp.StatusCode, tt.header, resp.Header.Get(tt.header), tt.status, tt.want)
		}
		if tt.status == 405 && !strings.Contains(string(b), `"method_not_allowed"`) {
			t.Errorf("%s %s: %s, want the JSON error", tt.method, tt.path, b)
		}
		if resp.Header.Get("X-Request-Id") == "" {
			t.Errorf("%s %s: no X-Request-Id", tt.method, tt.path)
		}
	}
}
