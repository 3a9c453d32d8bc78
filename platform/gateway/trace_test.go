package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/functions/echo"
	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
	"github.com/shoal-dev/shoal/token/tokentest"
)

const tracedManifest = `version: 1
functions:
  echo: {handler: {builtin: echo}, public: true}
  spoof: {handler: {builtin: spoof}, public: true}
  panic: {handler: {builtin: panic}, public: true}
  sleep: {handler: {builtin: sleep}, public: true, timeout: 200ms}
  guarded: {handler: {builtin: echo}, permissions: [echo]}
  orphan: {handler: {builtin: orphan}, public: true}
  block: {handler: {builtin: block}, public: true, concurrency: 1}
`

// tracedPlatform is a NATS server with the calls set up, a runner and a
// gateway on real HTTP, both logging JSON at DEBUG level into logs.
type tracedPlatform struct {
	url   string
	nc    *nats.Conn
	logs  *logBuffer
	block *functionstest.Block
}

// logBuffer collects the JSON log lines of the gateway and the runner.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines decodes the lines logged so far.
func (b *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		lines = append(lines, line)
	}
	return lines
}

// wait returns the first line with msg whose attributes include want,
// waiting up to 5 s for it: a runner logs after it sends its answer.
func (b *logBuffer) wait(t *testing.T, msg string, want map[string]any) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range b.lines(t) {
			if line["msg"] != msg {
				continue
			}
			match := true
			for k, v := range want {
				if line[k] != v {
					match = false
					break
				}
			}
			if match {
				return line
			}
		}
		if time.Now().After(deadline) {
			b.mu.Lock()
			defer b.mu.Unlock()
			t.Fatalf("no log line %q with %v; the log:\n%s", msg, want, b.buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func startTraced(t *testing.T) *tracedPlatform {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := &tracedPlatform{logs: &logBuffer{}, block: functionstest.NewBlock()}
	logger := slog.New(slog.NewJSONHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := brokertest.Start(t)
	js, err := jetstream.New(brokertest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if err := calls.Setup(ctx, js, calls.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	fns := functionstest.Builtins(map[string]http.Handler{
		"block": p.block,
		// spoof tries to pass for the platform on its answer.
		"spoof": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("X-Request-Id", "spoofed")
			w.Header().Set("Traceresponse", "00-11111111111111111111111111111111-2222222222222222-01")
			_, _ = w.Write([]byte("spoofed"))
		}),
	})
	// orphan is declared, but no runner has it.
	m, err := manifest.Parse("fn.yaml", []byte(tracedManifest), manifest.Options{Builtins: append(slices.Collect(maps.Keys(fns)), "orphan")})
	if err != nil {
		t.Fatal(err)
	}
	_, v := tokentest.Key(t)
	delete(fns, "orphan")
	runnertest.Start(t, s.ClientURL(), runner.Config{Manifest: m, Builtins: fns, Verifier: v, Logger: logger,
		Async: &runner.AsyncConfig{NATS: brokertest.Connect(t, s), AckWait: time.Second}})

	gnc, err := nats.Connect(s.ClientURL(), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	gjs, err := jetstream.New(gnc)
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(gateway.Config{NATS: gnc, Manifest: m, Verifier: v, Calls: calls.NewQueue(gjs), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	p.url = serve(t, g)
	p.nc = brokertest.Connect(t, s)
	t.Cleanup(func() { close(p.block.Release) }) // before the gateway drains: cleanups run last first
	return p
}

var (
	generatedRequestID = regexp.MustCompile(`^[0-9a-f]{32}$`)
	traceparentFormat  = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$`)
)

// span is a traceparent or traceresponse value, split.
type span struct{ trace, id, flags string }

func parseSpan(t *testing.T, what, v string) span {
	t.Helper()
	m := traceparentFormat.FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("%s %q is not a version 00 traceparent", what, v)
	}
	return span{m[1], m[2], m[3]}
}

// echoed invokes echo with headers h and returns the HTTP answer and the
// request the function saw.
func (p *tracedPlatform) echoed(t *testing.T, h http.Header) (response, echo.Request) {
	t.Helper()
	req := newRequest(t, "GET", p.url+"/function/echo", nil)
	maps.Copy(req.Header, h)
	resp := do(t, req)
	if resp.status != http.StatusOK {
		t.Fatalf("echo = %d %s", resp.status, resp.body)
	}
	var seen echo.Request
	if err := json.Unmarshal([]byte(resp.body), &seen); err != nil {
		t.Fatalf("echo answered %q: %v", resp.body, err)
	}
	return resp, seen
}

func TestRequestIDs(t *testing.T) {
	p := startTraced(t)
	tests := []struct {
		name string
		sent []string // X-Request-Id fields; nil sends none
		keep bool
	}{
		{name: "given", sent: []string{"order-42/attempt:1"}, keep: true},
		{name: "given, the longest kept", sent: []string{strings.Repeat("r", 128)}, keep: true},
		{name: "absent", sent: nil},
		{name: "empty", sent: []string{""}},
		{name: "too long", sent: []string{strings.Repeat("r", 129)}},
		{name: "with a space", sent: []string{"two words"}},
		{name: "not ASCII", sent: []string{"r\u00e9sum\u00e9"}},
		{name: "two of them", sent: []string{"one", "two"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.sent != nil {
				h["X-Request-Id"] = tt.sent
			}
			resp, seen := p.echoed(t, h)
			got := resp.header.Values("X-Request-Id")
			if len(got) != 1 {
				t.Fatalf("answer's X-Request-Id = %q, want one", got)
			}
			if tt.keep {
				if got[0] != tt.sent[0] {
					t.Errorf("answer's X-Request-Id = %q, want the caller's %q", got[0], tt.sent[0])
				}
			} else if !generatedRequestID.MatchString(got[0]) {
				t.Errorf("answer's X-Request-Id = %q, want a generated one (32 hex digits)", got[0])
			}
			if fn := seen.Header["X-Request-Id"]; !slices.Equal(fn, got) {
				t.Errorf("the function saw X-Request-Id %q, the caller got %q", fn, got)
			}
		})
	}
}

func TestTraceContext(t *testing.T) {
	p := startTraced(t)
	const (
		callerTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
		callerParent = "00f067aa0ba902b7"
		valid        = "00-" + callerTrace + "-" + callerParent + "-01"
	)
	tests := []struct {
		name        string
		traceparent []string
		continues   bool
		flags       string
	}{
		{name: "valid", traceparent: []string{valid}, continues: true, flags: "01"},
		{name: "valid, not sampled", traceparent: []string{"00-" + callerTrace + "-" + callerParent + "-00"}, continues: true, flags: "00"},
		{name: "absent", flags: "02"},
		{name: "all-zero trace id", traceparent: []string{"00-00000000000000000000000000000000-" + callerParent + "-01"}, flags: "02"},
		{name: "all-zero parent id", traceparent: []string{"00-" + callerTrace + "-0000000000000000-01"}, flags: "02"},
		{name: "uppercase", traceparent: []string{strings.ToUpper(valid)}, flags: "02"},
		{name: "version ff", traceparent: []string{"ff" + valid[2:]}, flags: "02"},
		{name: "too long for version 00", traceparent: []string{valid + "-extra"}, flags: "02"},
		{name: "too short", traceparent: []string{valid[:54]}, flags: "02"},
		{name: "two of them", traceparent: []string{valid, valid}, flags: "02"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{"Tracestate": {"congo=t61rcWkgMzE"}}
			if tt.traceparent != nil {
				h["Traceparent"] = tt.traceparent
			}
			resp, seen := p.echoed(t, h)
			gw := parseSpan(t, "the answer's traceresponse", resp.header.Get("Traceresponse"))
			fn := parseSpan(t, "the traceparent the function saw", strings.Join(seen.Header["Traceparent"], ","))
			if gw.trace != fn.trace {
				t.Errorf("traceresponse trace %s, the function's %s: want one trace", gw.trace, fn.trace)
			}
			if tt.continues != (fn.trace == callerTrace) {
				t.Errorf("the function's trace id %s, caller's %s: continued = %v, want %v", fn.trace, callerTrace, fn.trace == callerTrace, tt.continues)
			}
			// The function's parent is the runner's span: neither the
			// caller's nor the gateway's.
			if fn.id == callerParent || fn.id == gw.id {
				t.Errorf("the function's parent id %s: the caller's is %s, the gateway's %s", fn.id, callerParent, gw.id)
			}
			if fn.flags != tt.flags || gw.flags != tt.flags {
				t.Errorf("flags %s (function), %s (answer), want %s", fn.flags, gw.flags, tt.flags)
			}
			// tracestate travels with the trace it belongs to only.
			wantState := []string(nil)
			if tt.continues {
				wantState = []string{"congo=t61rcWkgMzE"}
			}
			if got := seen.Header["Tracestate"]; !slices.Equal(got, wantState) {
				t.Errorf("the function saw tracestate %q, want %q", got, wantState)
			}
		})
	}
}

// The gateway's X-Request-Id and traceresponse are on every answer,
// whoever answers: the function cannot replace them, and the gateway's
// own errors carry them.
func TestRequestIDOnEveryAnswer(t *testing.T) {
	p := startTraced(t)
	tests := []struct {
		name   string
		method string
		path   string
		status int
	}{
		{"function's answer", "GET", "/function/echo", 200},
		{"function sets its own", "GET", "/function/spoof", 200},
		{"unknown function", "GET", "/function/nope", 404},
		{"outside /function/", "GET", "/nothing/here", 404},
		{"missing token", "POST", "/function/guarded", 401},
		{"no runner", "GET", "/function/orphan", 503},
		{"timeout", "GET", "/function/sleep?d=5s", 504},
		{"panic", "GET", "/function/panic", 500},
		{"asynchronous submission", "POST", "/async-function/echo", 202},
		{"unknown call", "GET", "/calls/nope", 404},
		{"health", "GET", "/healthz", 200},
		{"overloaded", "GET", "/function/block", 429},
	}
	// block's one slot is taken: the next invocations are refused.
	go func() {
		if resp, err := http.Get(p.url + "/function/block"); err == nil {
			resp.Body.Close()
		}
	}()
	<-p.block.Started
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, sent := range []string{"", "quoted-by-the-user"} {
				req := newRequest(t, tt.method, p.url+tt.path, nil)
				if sent != "" {
					req.Header.Set("X-Request-Id", sent)
				}
				resp := do(t, req)
				if resp.status != tt.status {
					t.Fatalf("%s %s = %d %s, want %d", tt.method, tt.path, resp.status, resp.body, tt.status)
				}
				got := resp.header.Values("X-Request-Id")
				if len(got) != 1 || (sent != "" && got[0] != sent) || (sent == "" && !generatedRequestID.MatchString(got[0])) {
					t.Errorf("X-Request-Id = %q (sent %q)", got, sent)
				}
				if tr := resp.header.Values("Traceresponse"); len(tr) != 1 || strings.HasPrefix(tr[0], "00-1111") {
					t.Errorf("Traceresponse = %q", tr)
				} else {
					parseSpan(t, "traceresponse", tr[0])
				}
			}
		})
	}
}

func TestAsyncTrace(t *testing.T) {
	p := startTraced(t)
	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	req := newRequest(t, "POST", p.url+"/async-function/echo", strings.NewReader("later"))
	req.Header.Set("X-Request-Id", "async-1")
	req.Header.Set("Traceparent", "00-"+callerTrace+"-00f067aa0ba902b7-01")
	resp := do(t, req)
	if resp.status != http.StatusAccepted || resp.header.Get("X-Request-Id") != "async-1" {
		t.Fatalf("submission = %d, X-Request-Id %q; %s", resp.status, resp.header.Get("X-Request-Id"), resp.body)
	}
	gw := parseSpan(t, "traceresponse", resp.header.Get("Traceresponse"))
	id := resp.header.Get(gateway.HeaderCallID)

	var rec calls.Record
	deadline := time.Now().Add(10 * time.Second)
	for rec.Status != calls.Succeeded {
		if time.Now().After(deadline) {
			t.Fatalf("call %s still %s", id, rec.Status)
		}
		time.Sleep(20 * time.Millisecond)
		r := do(t, newRequest(t, "GET", p.url+"/calls/"+id, nil))
		if r.status != http.StatusOK {
			t.Fatalf("GET /calls/%s = %d %s", id, r.status, r.body)
		}
		if err := json.Unmarshal([]byte(r.body), &rec); err != nil {
			t.Fatal(err)
		}
	}
	var seen echo.Request
	if err := json.Unmarshal(rec.Response.Body, &seen); err != nil {
		t.Fatalf("echo answered %q: %v", rec.Response.Body, err)
	}
	if got := seen.Header["X-Request-Id"]; !slices.Equal(got, []string{"async-1"}) {
		t.Errorf("the function saw X-Request-Id %q, want the submission's", got)
	}
	fn := parseSpan(t, "the traceparent the function saw", strings.Join(seen.Header["Traceparent"], ","))
	if fn.trace != callerTrace || fn.id == gw.id {
		t.Errorf("the function saw trace %s parent %s; submitted in trace %s, the gateway's span %s", fn.trace, fn.id, callerTrace, gw.id)
	}
	if got := rec.Response.Header["X-Request-Id"]; !slices.Equal(got, []string{"async-1"}) {
		t.Errorf("the record's answer has X-Request-Id %q", got)
	}
	if got := rec.Response.Header["Traceresponse"]; len(got) != 1 || parseSpan(t, "the record's traceresponse", got[0]).id != fn.id {
		t.Errorf("the record's answer has Traceresponse %q, want the runner's span %s", got, fn.id)
	}
	// The runner's line: the call, its request id, and the gateway's
	// span as the parent of its own.
	p.logs.wait(t, "asynchronous call attempt", map[string]any{
		"call": id, "request_id": "async-1", "trace_id": callerTrace, "parent_id": gw.id, "span_id": fn.id, "status": float64(200),
	})
	p.logs.wait(t, "asynchronous call submitted", map[string]any{
		"function": "echo", "call": id, "request_id": "async-1", "trace_id": callerTrace, "span_id": gw.id, "status": float64(202),
	})
}

// One invocation's lines, gateway's and runner's, share its request id
// and trace id, and the runner's parent is the gateway's span; failures
// are logged with both ids.
func TestTraceLogs(t *testing.T) {
	p := startTraced(t)
	call := func(t *testing.T, path, id string) span {
		t.Helper()
		req := newRequest(t, "GET", p.url+path, nil)
		req.Header.Set("X-Request-Id", id)
		resp := do(t, req)
		return parseSpan(t, "traceresponse", resp.header.Get("Traceresponse"))
	}

	t.Run("invocation", func(t *testing.T) {
		gw := call(t, "/function/echo", "log-ok")
		p.logs.wait(t, "invocation", map[string]any{
			"function": "echo", "method": "GET", "status": float64(200), "request_id": "log-ok", "trace_id": gw.trace, "span_id": gw.id,
		})
		p.logs.wait(t, "invocation", map[string]any{
			"function": "echo", "status": float64(200), "request_id": "log-ok", "trace_id": gw.trace, "parent_id": gw.id,
		})
	})
	t.Run("panic", func(t *testing.T) {
		gw := call(t, "/function/panic", "log-panic")
		line := p.logs.wait(t, "function panicked", map[string]any{"level": "ERROR", "function": "panic", "request_id": "log-panic", "trace_id": gw.trace})
		if _, ok := line["stack"]; !ok {
			t.Errorf("panic line without its stack: %v", line)
		}
		p.logs.wait(t, "invocation", map[string]any{"level": "DEBUG", "function": "panic", "status": float64(500), "code": "function_panic", "request_id": "log-panic"})
	})
	t.Run("timeout", func(t *testing.T) {
		gw := call(t, "/function/sleep?d=5s", "log-timeout")
		p.logs.wait(t, "invocation failed", map[string]any{
			"level": "WARN", "function": "sleep", "status": float64(504), "code": "timeout", "request_id": "log-timeout", "trace_id": gw.trace, "parent_id": gw.id,
		})
	})
	t.Run("no runner", func(t *testing.T) {
		gw := call(t, "/function/orphan", "log-orphan")
		p.logs.wait(t, "invocation", map[string]any{"function": "orphan", "status": float64(503), "request_id": "log-orphan", "trace_id": gw.trace})
	})
	t.Run("no token or body in the log", func(t *testing.T) {
		req := newRequest(t, "POST", p.url+"/function/echo", strings.NewReader("secret-body"))
		req.Header.Set("Authorization", "Bearer secret-token")
		req.Header.Set("X-Request-Id", "log-secret")
		gw := parseSpan(t, "traceresponse", do(t, req).header.Get("Traceresponse"))
		p.logs.wait(t, "invocation", map[string]any{"function": "echo", "method": "POST", "request_id": "log-secret", "span_id": gw.id})
		p.logs.wait(t, "invocation", map[string]any{"function": "echo", "request_id": "log-secret", "parent_id": gw.id})
		p.logs.mu.Lock()
		defer p.logs.mu.Unlock()
		if s := p.logs.buf.String(); strings.Contains(s, "secret-body") || strings.Contains(s, "secret-token") {
			t.Errorf("the log holds a body or a token:\n%s", s)
		}
	})
}

// A NATS caller that sends no ids gets generated ones back, and the
// function saw the same.
func TestTraceOverNATS(t *testing.T) {
	p := startTraced(t)
	reply, err := p.nc.Request("fn.echo", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := reply.Header.Get(invocation.HeaderRequestID)
	if !generatedRequestID.MatchString(id) {
		t.Fatalf("reply's X-Request-Id %q, want a generated one; headers %v", id, reply.Header)
	}
	rt := parseSpan(t, "the reply's traceresponse", reply.Header.Get(invocation.HeaderTraceresponse))
	var seen echo.Request
	if err := json.Unmarshal(reply.Data, &seen); err != nil {
		t.Fatal(err)
	}
	fn := parseSpan(t, "the traceparent the function saw", strings.Join(seen.Header["Traceparent"], ","))
	if seen.Header["X-Request-Id"][0] != id || fn != rt {
		t.Errorf("the function saw %q %+v, the reply has %q %+v", seen.Header["X-Request-Id"], fn, id, rt)
	}
	p.logs.wait(t, "invocation", map[string]any{"function": "echo", "request_id": id, "trace_id": rt.trace, "span_id": rt.id})
}
