package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/functions/echo"
	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/callback"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
	"github.com/shoal-dev/shoal/token"
	"github.com/shoal-dev/shoal/token/tokentest"
)

const asyncManifest = `version: 1
functions:
  echo: {handler: {builtin: echo}, public: true}
  counter: {handler: {builtin: counter}, public: true}
  sync-only: {handler: {builtin: ping}, public: true, async: {enabled: false}}
  guarded: {handler: {builtin: echo}, permissions: [echo]}
  gone: {handler: {builtin: ping}, public: true}
  teapot: {handler: {builtin: teapot}, public: true}
`

// asyncPlatform is a NATS server with the calls set up, a runner taking
// asynchronous calls and a gateway submitting them over real HTTP.
type asyncPlatform struct {
	url     string
	broker  *broker.Server
	js      jetstream.JetStream
	gateway *gateway.Gateway
	m       *manifest.Manifest
	counter *functionstest.Counter
	key     jwkset.JWK
}

type asyncOptions struct {
	// limits are the calls' limits; nil means the defaults.
	limits *calls.Limits
	// noRunner starts no runner.
	noRunner bool
	// noCalls leaves the gateway's Config.Calls nil.
	noCalls bool
	maxBody int64
	// callbackAllow widens the callback policy of the gateway and the
	// runner.
	callbackAllow []string
	// natsMaxPayload, when set, is the NATS server's max_payload.
	natsMaxPayload int
	// operator gives the gateway Config.Operator, for the dead-letter
	// actions.
	operator bool
}

func startAsync(t *testing.T, o asyncOptions) *asyncPlatform {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := &asyncPlatform{counter: &functionstest.Counter{}}
	var err error
	if o.natsMaxPayload == 0 {
		p.broker = brokertest.Start(t)
	} else {
		if p.broker, err = broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), MaxPayload: o.natsMaxPayload}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.broker.Shutdown)
	}
	if p.js, err = jetstream.New(brokertest.Connect(t, p.broker)); err != nil {
		t.Fatal(err)
	}
	limits := calls.DefaultLimits()
	if o.limits != nil {
		limits = *o.limits
	}
	if err := calls.Setup(ctx, p.js, limits); err != nil {
		t.Fatal(err)
	}
	fns := functionstest.Builtins(map[string]http.Handler{"counter": p.counter})
	if p.m, err = manifest.Parse("fn.yaml", []byte(asyncManifest), manifest.Options{Builtins: slices.Collect(maps.Keys(fns))}); err != nil {
		t.Fatal(err)
	}
	var v *token.Verifier
	p.key, v = tokentest.Key(t)
	policy, err := callback.ParsePolicy(o.callbackAllow)
	if err != nil {
		t.Fatal(err)
	}
	if !o.noRunner {
		runnertest.Start(t, p.broker.ClientURL(), runner.Config{Manifest: p.m, Builtins: fns, Verifier: v,
			Async: &runner.AsyncConfig{NATS: brokertest.Connect(t, p.broker), AckWait: time.Second,
				Callbacks: calls.CallbackConfig{Policy: policy, Backoff: []time.Duration{0}}}})
	}

	gnc, err := nats.Connect(p.broker.ClientURL(), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	cfg := gateway.Config{NATS: gnc, Manifest: p.m, Verifier: v, MaxBody: o.maxBody, Callbacks: policy}
	if o.operator {
		cfg.Operator = p.js
	}
	if !o.noCalls {
		gjs, err := jetstream.New(gnc)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Calls = calls.NewQueue(gjs)
	}
	if p.gateway, err = gateway.New(cfg); err != nil {
		t.Fatal(err)
	}
	p.url = serve(t, p.gateway)
	return p
}

// bearer mints an Authorization value for subject with perms.
func (p *asyncPlatform) bearer(t *testing.T, subject string, perms ...string) string {
	t.Helper()
	return tokentest.Bearer(t, p.key, subject)(perms...)
}

// post sends POST path with body and headers h ("Authorization": ...).
func (p *asyncPlatform) post(t *testing.T, path string, body io.Reader, h map[string]string) response {
	t.Helper()
	req := newRequest(t, "POST", p.url+path, body)
	for k, v := range h {
		req.Header.Set(k, v)
	}
	return do(t, req)
}

// get sends GET path with authorization, if any.
func (p *asyncPlatform) get(t *testing.T, path, authorization string) response {
	t.Helper()
	req := newRequest(t, "GET", p.url+path, nil)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return do(t, req)
}

// acceptedBody is the body of a 202 answer to a submission.
type acceptedBody struct {
	ID        string       `json:"id"`
	Function  string       `json:"function"`
	Status    calls.Status `json:"status"`
	Duplicate bool         `json:"duplicate"`
	URL       string       `json:"url"`
}

// accepted checks that r is the 202 of a submission of function and
// returns its body.
func accepted(t *testing.T, r response, function string) acceptedBody {
	t.Helper()
	var a acceptedBody
	if r.status != http.StatusAccepted {
		t.Fatalf("submission = %d %s, want 202", r.status, r.body)
	}
	if err := json.Unmarshal([]byte(r.body), &a); err != nil {
		t.Fatalf("202 body %q: %v", r.body, err)
	}
	if !calls.ValidID(a.ID) || a.Function != function || a.URL != "/calls/"+a.ID ||
		r.header.Get(gateway.HeaderCallID) != a.ID || r.header.Get("Location") != "/calls/"+a.ID || r.header.Get("Content-Type") != "application/json" {
		t.Errorf("202 %v %s", r.header, r.body)
	}
	return a
}

// waitCall polls GET /calls/ID until the call has status st, and returns
// its record.
func (p *asyncPlatform) waitCall(t *testing.T, id, authorization string, st calls.Status) *calls.Record {
	t.Helper()
	var last response
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		last = p.get(t, "/calls/"+id, authorization)
		var rec calls.Record
		if last.status == 200 && json.Unmarshal([]byte(last.body), &rec) == nil && rec.Status == st {
			if last.header.Get("Content-Type") != "application/json" || last.header.Get("Cache-Control") != "no-store" {
				t.Errorf("GET /calls/%s headers %v", id, last.header)
			}
			return &rec
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("GET /calls/%s = %d %s, want status %s", id, last.status, last.body, st)
	return nil
}

// queued is how many calls wait in the stream.
func (p *asyncPlatform) queued(t *testing.T) uint64 {
	t.Helper()
	s, err := p.js.Stream(t.Context(), calls.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// errorCode is the code of an error answer, "" if r is none.
func errorCode(r response) invocation.Code {
	if e, ok := invocation.ParseError(r.status, []byte(r.body)); ok {
		return e.Code
	}
	return ""
}

// TestAsyncInvoke: a call submitted over HTTP is answered 202 at once,
// runs on a runner with the request as given, and its result is read at
// /calls/ID and POSTed to its callback URL.
func TestAsyncInvoke(t *testing.T) {
	p := startAsync(t, asyncOptions{callbackAllow: []string{"127.0.0.0/8"}})
	hooks := make(chan *http.Request, 10)
	hookBodies := make(chan []byte, 10)
	hook := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		hooks <- r
		hookBodies <- body
	}))
	defer hook.Close()

	r := p.post(t, "/async-function/echo/sub/path?x=1", strings.NewReader("hello"), map[string]string{
		"X-Custom": "yes", gateway.HeaderCallbackURL: hook.URL + "/done?sig=secret", gateway.HeaderIdempotencyKey: "k1",
	})
	a := accepted(t, r, "echo")
	// Queued, unless a runner was quick enough to take the call (or even
	// finish it) before the gateway recorded it: then the runner's record
	// is the call's record, and the 202 says what it says.
	if !slices.Contains([]calls.Status{calls.Queued, calls.Running, calls.Succeeded}, a.Status) || a.Duplicate {
		t.Errorf("202 body %+v, want queued (or running, succeeded), not a duplicate", a)
	}
	rec := p.waitCall(t, a.ID, "", calls.Succeeded)
	if rec.Attempts != 1 || rec.Response == nil || rec.Response.Status != 200 {
		t.Fatalf("record = %+v", rec)
	}
	var got echo.Request
	if err := json.Unmarshal(rec.Response.Body, &got); err != nil {
		t.Fatalf("echo answered %q: %v", rec.Response.Body, err)
	}
	h := http.Header(got.Header)
	if got.Method != "POST" || got.Path != "/sub/path" || got.Query["x"][0] != "1" || got.Body != "hello" || h.Get("X-Custom") != "yes" {
		t.Errorf("the function saw %+v", got)
	}
	if h.Get(gateway.HeaderCallbackURL) != "" || h.Get(gateway.HeaderIdempotencyKey) != "" {
		t.Errorf("the gateway's own headers reached the function: %v", h)
	}

	select {
	case req := <-hooks:
		body := <-hookBodies
		var sent calls.Record
		if err := json.Unmarshal(body, &sent); err != nil || sent.ID != a.ID || sent.Status != calls.Succeeded ||
			req.Header.Get("X-Call-Id") != a.ID || req.URL.RawQuery != "sig=secret" {
			t.Errorf("callback %s %v %s", req.URL, req.Header, body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no callback")
	}
	// The record says delivered, without the URL's secret.
	var r2 response
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r2 = p.get(t, "/calls/"+a.ID, "")
		if strings.Contains(r2.body, `"state":"delivered"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /calls/ID = %d %s, want the callback delivered", r2.status, r2.body)
		}
	}
	if strings.Contains(r2.body, "secret") || !strings.Contains(r2.body, `"url":"`+hook.URL+`/done"`) {
		t.Errorf("GET /calls/ID = %s, want the callback URL without its query", r2.body)
	}
}

// TestAsyncFailureTable checks each refusal of a submission or a lookup:
// status, stable code, and nothing queued.
func TestAsyncFailureTable(t *testing.T) {
	const limit = 1024
	p := startAsync(t, asyncOptions{maxBody: limit})
	alice := p.bearer(t, "alice", "echo")
	// A call of another function, for lookups with the wrong token.
	guarded := accepted(t, p.post(t, "/async-function/guarded", nil, map[string]string{"Authorization": alice}), "guarded")
	p.waitCall(t, guarded.ID, alice, calls.Succeeded)

	tests := []struct {
		name       string
		method     string
		path       string
		header     map[string]string
		body       io.Reader
		status     int
		code       invocation.Code
		retryAfter bool
	}{
		{name: "function not deployed", path: "/async-function/nope", status: 404, code: invocation.CodeFunctionNotFound},
		{name: "no function name", path: "/async-function/", status: 404, code: invocation.CodeNotFound},
		{name: "async disabled", path: "/async-function/sync-only", status: 405, code: invocation.CodeAsyncDisabled},
		{name: "no token", path: "/async-function/guarded", status: 401, code: invocation.CodeInvalidToken},
		{name: "bad token", path: "/async-function/guarded", header: map[string]string{"Authorization": "Bearer x.y.z"}, status: 401, code: invocation.CodeInvalidToken},
		{name: "token without the permission", path: "/async-function/guarded", header: map[string]string{"Authorization": p.bearer(t, "bob", "other")}, status: 403, code: invocation.CodeForbidden},
		{name: "callback not http", path: "/async-function/counter", header: map[string]string{gateway.HeaderCallbackURL: "ftp://files.example.com/x"}, status: 400, code: invocation.CodeBadRequest},
		{name: "callback to loopback", path: "/async-function/counter", header: map[string]string{gateway.HeaderCallbackURL: "http://127.0.0.1/"}, status: 400, code: invocation.CodeBadRequest},
		{name: "callback to cloud metadata", path: "/async-function/counter", header: map[string]string{gateway.HeaderCallbackURL: "http://169.254.169.254/latest/"}, status: 400, code: invocation.CodeBadRequest},
		{name: "Idempotency-Key over 256 bytes", path: "/async-function/counter", header: map[string]string{gateway.HeaderIdempotencyKey: strings.Repeat("k", 257)}, status: 400, code: invocation.CodeBadRequest},
		{name: "body over the limit, length known", path: "/async-function/counter", body: bytes.NewReader(make([]byte, limit+1)), status: 413, code: invocation.CodePayloadTooLarge},
		{name: "body over the limit, chunked", path: "/async-function/counter", body: io.MultiReader(strings.NewReader(strings.Repeat("x", limit)), strings.NewReader("y")), status: 413, code: invocation.CodePayloadTooLarge},
		{name: "unknown call", method: "GET", path: "/calls/" + calls.NewID(), status: 404, code: invocation.CodeCallNotFound},
		{name: "malformed call id", method: "GET", path: "/calls/not.an.id", status: 404, code: invocation.CodeCallNotFound},
		{name: "no call id", method: "GET", path: "/calls/", status: 404, code: invocation.CodeCallNotFound},
		{name: "call read without a token", method: "GET", path: "/calls/" + guarded.ID, status: 401, code: invocation.CodeInvalidToken},
		{name: "call read with a token without the permission", method: "GET", path: "/calls/" + guarded.ID, header: map[string]string{"Authorization": p.bearer(t, "bob", "other")}, status: 403, code: invocation.CodeForbidden},
		{name: "call written", method: "DELETE", path: "/calls/" + guarded.ID, header: map[string]string{"Authorization": alice}, status: 405, code: invocation.CodeMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "POST"
			}
			req := newRequest(t, method, p.url+tt.path, tt.body)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			r := do(t, req)
			if r.status != tt.status || errorCode(r) != tt.code {
				t.Errorf("%s %s = %d %s, want %d %s", method, tt.path, r.status, r.body, tt.status, tt.code)
			}
			if tt.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if got := r.header.Get("Retry-After") != ""; got != tt.retryAfter {
				t.Errorf("Retry-After = %q", r.header.Get("Retry-After"))
			}
		})
	}
	t.Run("two Idempotency-Keys", func(t *testing.T) {
		req := newRequest(t, "POST", p.url+"/async-function/counter", nil)
		req.Header.Add(gateway.HeaderIdempotencyKey, "a")
		req.Header.Add(gateway.HeaderIdempotencyKey, "b")
		if r := do(t, req); r.status != 400 {
			t.Errorf("two Idempotency-Keys = %d %s, want 400", r.status, r.body)
		}
	})
	if n := p.queued(t); n != 0 || p.counter.N.Load() != 0 {
		t.Errorf("refused submissions queued %d calls and ran counter %d times", n, p.counter.N.Load())
	}
	// The right token reads the call.
	if rec := p.waitCall(t, guarded.ID, alice, calls.Succeeded); rec.Function != "guarded" {
		t.Errorf("record = %+v", rec)
	}
}

// TestAsyncQueueFull: a full queue is answered 429 at once with
// Retry-After, and nothing accepted is lost.
func TestAsyncQueueFull(t *testing.T) {
	limits := calls.DefaultLimits()
	limits.MaxQueued = 2
	p := startAsync(t, asyncOptions{limits: &limits, noRunner: true})
	var ids []string
	for range 2 {
		ids = append(ids, accepted(t, p.post(t, "/async-function/counter", strings.NewReader("x"), nil), "counter").ID)
	}
	start := time.Now()
	r := p.post(t, "/async-function/counter", strings.NewReader("x"), nil)
	if r.status != 429 || errorCode(r) != invocation.CodeQueueFull || r.header.Get("Retry-After") != "5" {
		t.Errorf("submission to a full queue = %d %v %s, want 429 queue_full, Retry-After: 5", r.status, r.header, r.body)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("refused after %s", took)
	}
	if n := p.queued(t); n != 2 {
		t.Errorf("%d calls queued, want the 2 accepted", n)
	}
	for _, id := range ids {
		if rec := p.waitCall(t, id, "", calls.Queued); rec.Attempts != 0 {
			t.Errorf("record = %+v", rec)
		}
	}
}

// TestAsyncBodyOverNATSMaxPayload: with a NATS server whose max_payload
// is below the body limit, a larger body is refused with 413 naming
// max_payload, as a synchronous invocation is: no retry can store it.
func TestAsyncBodyOverNATSMaxPayload(t *testing.T) {
	p := startAsync(t, asyncOptions{natsMaxPayload: 1 << 20, noRunner: true})
	r := p.post(t, "/async-function/counter", bytes.NewReader(make([]byte, 2<<20)), nil)
	if r.status != 413 || errorCode(r) != invocation.CodePayloadTooLarge || !strings.Contains(r.body, "max_payload") {
		t.Errorf("2 MiB body = %d %s, want 413 naming max_payload", r.status, r.body)
	}
	if n := p.queued(t); n != 0 {
		t.Errorf("%d calls queued", n)
	}
}

// TestAsyncNotConfigured: a gateway without Config.Calls answers 501.
func TestAsyncNotConfigured(t *testing.T) {
	p := startAsync(t, asyncOptions{noCalls: true, noRunner: true})
	for _, r := range []response{
		p.post(t, "/async-function/counter", nil, nil),
		p.get(t, "/calls/"+calls.NewID(), ""),
	} {
		if r.status != 501 || errorCode(r) != invocation.CodeNotImplemented {
			t.Errorf("%d %s, want 501 not_implemented", r.status, r.body)
		}
	}
	if n := p.queued(t); n != 0 {
		t.Errorf("%d calls queued", n)
	}
}

// TestAsyncIdempotencyKey: a resubmission with the same Idempotency-Key by
// the same caller names the first call and runs nothing more; another
// caller's key is another call.
func TestAsyncIdempotencyKey(t *testing.T) {
	p := startAsync(t, asyncOptions{})
	key := map[string]string{gateway.HeaderIdempotencyKey: "order-42"}
	first := accepted(t, p.post(t, "/async-function/counter", strings.NewReader("1"), key), "counter")
	again := accepted(t, p.post(t, "/async-function/counter", strings.NewReader("2"), key), "counter")
	if first.Duplicate || again.ID != first.ID || !again.Duplicate {
		t.Errorf("first %+v, resubmission %+v; want the same id, the second a duplicate", first, again)
	}
	p.waitCall(t, first.ID, "", calls.Succeeded)
	late := accepted(t, p.post(t, "/async-function/counter", strings.NewReader("3"), key), "counter")
	if late.ID != first.ID || !late.Duplicate || late.Status != calls.Succeeded {
		t.Errorf("resubmission after it ran = %+v, want the call, succeeded", late)
	}
	if n := p.counter.N.Load(); n != 1 {
		t.Errorf("counter ran %d times, want once", n)
	}

	// The same key from two callers of a function with a token: two calls.
	var ids []string
	for _, who := range []string{"alice", "bob"} {
		h := map[string]string{gateway.HeaderIdempotencyKey: "order-42", "Authorization": p.bearer(t, who, "echo")}
		ids = append(ids, accepted(t, p.post(t, "/async-function/guarded", nil, h), "guarded").ID)
	}
	if ids[0] == ids[1] || ids[0] == first.ID {
		t.Errorf("ids %v and %s: want each caller's own", ids, first.ID)
	}
}

// TestAsyncCallOfRemovedFunction: the record of a call of a function no
// longer deployed is read with the system permission only.
func TestAsyncCallOfRemovedFunction(t *testing.T) {
	p := startAsync(t, asyncOptions{})
	a := accepted(t, p.post(t, "/async-function/gone", nil, nil), "gone")
	p.waitCall(t, a.ID, "", calls.Succeeded) // public: anyone with the id
	var fns []manifest.Function
	for _, fn := range p.m.Functions {
		if fn.Name != "gone" {
			fns = append(fns, fn)
		}
	}
	p.gateway.SetFunctions(fns)
	tests := []struct {
		name, authorization string
		status              int
	}{
		{"no token", "", 401},
		{"token without system:read", p.bearer(t, "alice", "echo"), 403},
		{"token with system:read", p.bearer(t, "admin", "system:read"), 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := p.get(t, "/calls/"+a.ID, tt.authorization); r.status != tt.status {
				t.Errorf("GET /calls/ID = %d %s, want %d", r.status, r.body, tt.status)
			}
		})
	}
}

// TestAsyncSubmitManyAtOnce: concurrent submissions each get their own
// call, and every one runs.
func TestAsyncSubmitManyAtOnce(t *testing.T) {
	p := startAsync(t, asyncOptions{})
	const n = 40
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			r := p.post(t, "/async-function/counter", nil, nil)
			if r.status == http.StatusAccepted {
				ids <- r.header.Get(gateway.HeaderCallID)
			} else {
				t.Errorf("submission = %d %s", r.status, r.body)
			}
		})
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Errorf("id %s given twice", id)
		}
		seen[id] = true
		p.waitCall(t, id, "", calls.Succeeded)
	}
	if got := p.counter.N.Load(); got != n {
		t.Errorf("counter ran %d times, want %d", got, n)
	}
}

// TestAsyncWithRoles runs asynchronous calls on a NATS server that admits
// only the role identities, as shoal up runs it: the gateway submits and
// records, the runner pulls, settles, dead-letters, publishes results and
// delivers callbacks, a client reads records and results, and none of
// them can do more than its role allows.
func TestAsyncWithRoles(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, creds := brokertest.StartSecured(t)
	admin, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}
	if err := calls.Setup(ctx, admin, calls.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	fns := functionstest.Builtins(nil)
	m, err := manifest.Parse("fn.yaml", []byte(`version: 1
functions:
  echo: {handler: {builtin: echo}, public: true}
  panic: {handler: {builtin: panic}, public: true, async: {max_deliver: 1}}
`), manifest.Options{Builtins: slices.Collect(maps.Keys(fns))})
	if err != nil {
		t.Fatal(err)
	}
	loopback, err := callback.ParsePolicy([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := runner.Start(brokertest.ConnectAs(t, s, creds, broker.RoleRunner), runner.Config{Manifest: m, Builtins: fns,
		Async: &runner.AsyncConfig{NATS: brokertest.ConnectAs(t, s, creds, broker.RoleRunner), AckWait: time.Second,
			Callbacks: calls.CallbackConfig{Policy: loopback, Backoff: []time.Duration{0}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Stop(ctx); err != nil {
			t.Errorf("runner stop: %v", err)
		}
	})
	// short is a deadline for what a role forbids: a refused request
	// goes unanswered, each waits out its own.
	short := func(ctx context.Context) context.Context {
		ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}) // refused publishes below are reported, not logged
	gnc := brokertest.ConnectAs(t, s, creds, broker.RoleGateway, nats.ReconnectBufSize(-1), quiet)
	gjs, err := jetstream.New(gnc)
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(gateway.Config{NATS: gnc, Manifest: m, Calls: calls.NewQueue(gjs), Callbacks: loopback})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	p := &asyncPlatform{url: srv.URL}

	client := brokertest.ConnectAs(t, s, creds, broker.RoleClient, quiet)
	cjs, err := jetstream.New(client)
	if err != nil {
		t.Fatal(err)
	}
	// The client's own calls: submitted on calls.NAME.nats, filed under
	// n.ID, results on results.NAME.nats.
	res, err := client.SubscribeSync(calls.ClientResultSubject("echo"))
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	hooks := make(chan string, 1)
	hook := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { hooks <- r.Header.Get("X-Call-Id") }))
	defer hook.Close()

	a := accepted(t, p.post(t, "/async-function/echo", strings.NewReader("hi"), map[string]string{gateway.HeaderCallbackURL: hook.URL}), "echo")
	p.waitCall(t, a.ID, "", calls.Succeeded)
	select {
	case id := <-hooks:
		if id != a.ID {
			t.Errorf("callback for %s, want %s", id, a.ID)
		}
	case <-time.After(10 * time.Second):
		t.Error("no callback")
	}
	// A client names its calls in its own namespace: the id of a gateway
	// call it gives is filed as n.ID, and the gateway's record is untouched.
	mine := nats.NewMsg(calls.ClientSubject("echo"))
	mine.Header.Set(calls.HeaderCallID, a.ID)
	mine.Header.Set(calls.HeaderMsgID, calls.ClientID(a.ID))
	mine.Data = []byte("mine")
	if _, err := cjs.PublishMsg(ctx, mine); err != nil {
		t.Fatalf("the client submits a call: %v", err)
	}
	if m, err := res.NextMsg(5 * time.Second); err != nil || m.Header.Get(calls.HeaderCallID) != calls.ClientID(a.ID) {
		t.Errorf("the client's result: %v, %v", m, err)
	}
	if rec, err := calls.NewQueue(cjs).Get(ctx, calls.ClientID(a.ID)); err != nil || rec.Status != calls.Succeeded {
		t.Errorf("the client reads its call's record: %+v, %v", rec, err)
	}
	if rec, err := calls.NewQueue(admin).Get(ctx, a.ID); err != nil || rec.Response == nil || !strings.Contains(string(rec.Response.Body), `"hi"`) {
		t.Errorf("the gateway call's record after a client call named after it: %+v, %v", rec, err)
	}
	// The gateway's callers' records and results are not the client's.
	if _, err := calls.NewQueue(cjs).Get(short(ctx), a.ID); err == nil {
		t.Error("a client read the record of a call submitted through the gateway")
	}
	// The server refuses the subscription to the gateway callers' results
	// (and says so asynchronously); a second gateway call then reaches
	// no client subscriber.
	refused := make(chan error, 4)
	spy := brokertest.ConnectAs(t, s, creds, broker.RoleClient, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { refused <- err }))
	theirs, err := spy.SubscribeSync(calls.ResultSubject("echo"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-refused:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("subscribing to %s: %v, want a permissions violation", calls.ResultSubject("echo"), err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("a client subscribed to %s, the gateway callers' results", calls.ResultSubject("echo"))
	}
	again := accepted(t, p.post(t, "/async-function/echo", strings.NewReader("again"), nil), "echo")
	p.waitCall(t, again.ID, "", calls.Succeeded)
	if m, err := theirs.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("a client received a result of the gateway's callers: %v", m.Header)
	}

	// Dead-lettered by the runner, re-driven by an admin, run again.
	failed := accepted(t, p.post(t, "/async-function/panic", nil, nil), "panic")
	p.waitCall(t, failed.ID, "", calls.Failed)
	if _, err := calls.Retry(ctx, admin, failed.ID); err != nil {
		t.Fatalf("Retry: %v", err)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
		}
	}
	waitFor("the re-driven call was not dead-lettered again", func() bool {
		dls, err := calls.DeadLetters(ctx, admin, 0)
		return err == nil && len(dls) == 1 && dls[0].ID == failed.ID && dls[0].Seq > 1
	})

	// The gateway role can neither read the dead letters (the callers'
	// requests, tokens included), nor discard nor re-drive one.
	if dls, err := calls.RecentDeadLetters(short(ctx), gjs, 10); err == nil {
		t.Errorf("the gateway role read the dead letters: %+v", dls)
	}
	if _, err := calls.Discard(short(ctx), gjs, failed.ID); err == nil {
		t.Error("the gateway role discarded a dead letter")
	}
	if _, err := calls.Retry(short(ctx), gjs, failed.ID); err == nil {
		t.Error("the gateway role re-drove a dead letter")
	}

	// The gateway role lists the calls (the console's GET /system/calls):
	// the headers of the bucket's stream through an ordered consumer,
	// which it deletes, then the records.
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	if l, err := calls.NewQueue(gjs).Recent(lctx, 10, ""); err != nil || len(l.Records) == 0 {
		t.Errorf("the gateway role lists the calls: %+v, %v", l, err)
	}
	bucket, err := admin.Stream(ctx, "KV_"+calls.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	waitFor("the listing's consumer was left on the bucket's stream", func() bool {
		info, err := bucket.Info(ctx)
		return err == nil && info.State.Consumers == 0
	})

	// What the roles forbid (a refused publish goes unanswered: each
	// attempt waits out its own short deadline).
	for role, js := range map[string]jetstream.JetStream{"client": cjs, "gateway": gjs} {
		if _, err := js.Publish(short(ctx), calls.RetrySubject("echo"), nil); err == nil {
			t.Errorf("the %s role queued a call on a retry subject, which runners trust with its submission time", role)
		}
	}
	if _, err := cjs.Publish(short(ctx), calls.Subject("echo"), nil); err == nil {
		t.Error("the client role queued a call on the gateway's subject, outside its namespace")
	}
	if kv, err := cjs.KeyValue(ctx, calls.Bucket); err != nil {
		t.Errorf("the client opens the records' bucket: %v", err)
	} else if _, err := kv.Put(short(ctx), calls.ClientID(a.ID), []byte(`{"status":"failed"}`)); err == nil {
		t.Error("a client wrote a call's record")
	}
	if rec, err := calls.NewQueue(admin).Get(ctx, a.ID); err != nil || rec.Status != calls.Succeeded {
		t.Errorf("the record after the client's attempt to write it: %+v, %v", rec, err)
	}
}
