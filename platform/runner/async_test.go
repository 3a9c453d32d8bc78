package runner_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/functions/echo"
	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
	"github.com/shoal-dev/shoal/token"
	"github.com/shoal-dev/shoal/token/tokentest"
)

// asyncAckWait is the runners' ack wait in these tests: short, so that a
// heartbeat that stopped would show at once.
const asyncAckWait = time.Second

// asyncEnv is a NATS server with the calls set up, and a client
// submitting calls as a gateway does.
type asyncEnv struct {
	s   *broker.Server
	js  jetstream.JetStream
	q   *calls.Queue
	ctx context.Context
}

func newAsyncEnv(t *testing.T) *asyncEnv {
	t.Helper()
	return newAsyncEnvOn(t, brokertest.Start(t))
}

func newAsyncEnvOn(t *testing.T, s *broker.Server) *asyncEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	js, err := jetstream.New(brokertest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if err := calls.Setup(ctx, js, calls.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	return &asyncEnv{s: s, js: js, q: calls.NewQueue(js), ctx: ctx}
}

// startAsyncRunner starts a runner of manifest src that takes
// asynchronous calls, on a second connection; it stops with the test.
func (e *asyncEnv) startAsyncRunner(t *testing.T, src string, fns map[string]http.Handler, v *token.Verifier) *runner.Runner {
	t.Helper()
	cfg := runner.Config{Manifest: loadManifest(t, src, fns), Builtins: fns, Verifier: v,
		Async: &runner.AsyncConfig{NATS: brokertest.Connect(t, e.s), AckWait: asyncAckWait}}
	return runnertest.Start(t, e.s.ClientURL(), cfg)
}

// submit queues a call of function with the invocation headers h.
func (e *asyncEnv) submit(t *testing.T, function string, h map[string]string, body string) string {
	t.Helper()
	msg := nats.NewMsg("")
	for k, v := range h {
		msg.Header.Set(k, v)
	}
	msg.Data = []byte(body)
	sub, err := e.q.Submit(e.ctx, calls.Submission{Function: function, Msg: msg})
	if err != nil {
		t.Fatal(err)
	}
	return sub.ID
}

func (e *asyncEnv) record(t *testing.T, id string) *calls.Record {
	t.Helper()
	rec, err := e.q.Get(e.ctx, id)
	if err != nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	return rec
}

// wait polls the record of call id until it has status st.
func (e *asyncEnv) wait(t *testing.T, id string, st calls.Status) *calls.Record {
	t.Helper()
	var rec *calls.Record
	eventually(t, func() bool {
		rec = e.record(t, id)
		return rec.Status == st
	}, fmt.Sprintf("call %s: want status %s", id, st))
	return rec
}

// consumer is the state of function name's consumer; ok is false when
// it does not exist.
func (e *asyncEnv) consumer(t *testing.T, name string) (info *jetstream.ConsumerInfo, ok bool) {
	t.Helper()
	c, err := e.js.Consumer(e.ctx, calls.Stream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	if info, err = c.Info(e.ctx); err != nil {
		t.Fatal(err)
	}
	return info, true
}

// pulling reports whether a runner waits for calls of function name.
func (e *asyncEnv) pulling(t *testing.T, name string) bool {
	info, ok := e.consumer(t, name)
	return ok && info.NumWaiting > 0
}

func started(t *testing.T, b *functionstest.Block, who string) {
	t.Helper()
	select {
	case <-b.Started:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not start", who)
	}
}

// TestAsyncCalls: a runner runs asynchronous calls of the functions it
// serves with their request, records their results, and retries a failing
// one as its fn.yaml says.
func TestAsyncCalls(t *testing.T) {
	e := newAsyncEnv(t)
	fns := functionstest.Builtins(nil)
	r := e.startAsyncRunner(t, `version: 1
functions:
  echo: {handler: {builtin: echo}, public: true}
  panic: {handler: {builtin: panic}, public: true, async: {max_deliver: 2, backoff: [0s]}}
  sleep: {handler: {builtin: sleep}, public: true, timeout: 200ms, async: {max_deliver: 1}}
`, fns, nil)

	id := e.submit(t, "echo", map[string]string{invocation.HeaderMethod: "PUT", invocation.HeaderPath: "/a/b", invocation.HeaderQuery: "x=1", "X-Custom": "yes"}, "hello")
	rec := e.wait(t, id, calls.Succeeded)
	var got echo.Request
	if err := json.Unmarshal(rec.Response.Body, &got); err != nil {
		t.Fatalf("echo answered %q: %v", rec.Response.Body, err)
	}
	if got.Method != "PUT" || got.Path != "/a/b" || got.Query["x"][0] != "1" || got.Body != "hello" || http.Header(got.Header).Get("X-Custom") != "yes" {
		t.Errorf("echo saw %+v", got)
	}
	for k := range got.Header {
		if invocation.Reserved(k) {
			t.Errorf("protocol header %s reached the function", k)
		}
	}
	if rec.Runner != r.ID() || rec.Attempts != 1 || rec.Response.Status != 200 {
		t.Errorf("record = %+v", rec)
	}

	tests := []struct {
		function string
		query    string
		attempts int
		code     invocation.Code
	}{
		{"panic", "", 2, invocation.CodeFunctionPanic},
		{"sleep", "d=10s", 1, invocation.CodeTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.function, func(t *testing.T) {
			id := e.submit(t, tt.function, map[string]string{invocation.HeaderQuery: tt.query}, "")
			rec := e.wait(t, id, calls.Failed)
			if rec.Attempts != tt.attempts || rec.Error == nil || rec.Error.Code != tt.code || rec.Response != nil {
				t.Errorf("record = %+v (error %v), want failed with %s after %d attempts", rec, rec.Error, tt.code, tt.attempts)
			}
		})
	}

	eventually(t, func() bool {
		st, _ := r.Stats("panic")
		return st.Completed == 2
	}, "panic's figures: want 2 completed")
	for name, want := range map[string]runner.EndpointStats{
		"echo":  {Received: 1, Completed: 1},
		"panic": {Received: 2, Completed: 2, Errors: 2, Panics: 2},
	} {
		st, _ := r.Stats(name)
		if st.Received != want.Received || st.Completed != want.Completed || st.Errors != want.Errors || st.Panics != want.Panics || st.InFlight != 0 {
			t.Errorf("%s figures = %+v", name, st)
		}
	}
}

// TestAsyncBusyRunnerDoesNotHoard: a runner pulls no more calls than it
// has free slots, so calls go to a runner that has some.
func TestAsyncBusyRunnerDoesNotHoard(t *testing.T) {
	e := newAsyncEnv(t)
	const src = `version: 1
functions:
  block: {handler: {builtin: block}, public: true, concurrency: 1, async: {backoff: [0s]}}
`
	blockA, blockB := functionstest.NewBlock(), functionstest.NewBlock()
	defer close(blockA.Release)
	a := e.startAsyncRunner(t, src, functionstest.Builtins(map[string]http.Handler{"block": blockA}), nil)
	first := e.submit(t, "block", nil, "")
	started(t, blockA, "runner A's call")

	b := e.startAsyncRunner(t, src, functionstest.Builtins(map[string]http.Handler{"block": blockB}), nil)
	second := e.submit(t, "block", nil, "")
	started(t, blockB, "runner B's call")
	third := e.submit(t, "block", nil, "")
	if rec := e.wait(t, second, calls.Running); rec.Runner != b.ID() {
		t.Errorf("the second call runs on %s, want runner B %s", rec.Runner, b.ID())
	}
	// Both busy: the third call waits in the stream for a free slot.
	if rec := e.record(t, third); rec.Status != calls.Queued {
		t.Errorf("the third call, both runners busy = %+v, want queued", rec)
	}
	close(blockB.Release)
	if rec := e.wait(t, third, calls.Succeeded); rec.Runner != b.ID() {
		t.Errorf("the third call ran on %s, want runner B %s", rec.Runner, b.ID())
	}
	if rec := e.record(t, first); rec.Status != calls.Running || rec.Runner != a.ID() {
		t.Errorf("the first call = %+v, want still running on A", rec)
	}
	st, _ := a.Stats("block")
	if st.Received != 1 || st.InFlight != 1 {
		t.Errorf("runner A, busy with one call: %+v; want it to have taken that one only", st)
	}
}

// TestAsyncFollowsFunctions: a runner pulls the calls of the functions it
// serves with async enabled, and follows changes of them.
func TestAsyncFollowsFunctions(t *testing.T) {
	e := newAsyncEnv(t)
	fns := functionstest.Builtins(nil)
	const (
		ping   = "  ping: {handler: {builtin: ping}, public: true}\n"
		echo   = "  echo: {handler: {builtin: echo}, public: true}\n"
		quiet  = "  quiet: {handler: {builtin: ping}, public: true, async: {enabled: false}}\n"
		loud   = "  quiet: {handler: {builtin: ping}, public: true}\n"
		header = "version: 1\nfunctions:\n"
	)
	r := e.startAsyncRunner(t, header+ping+echo+quiet, fns, nil)
	eventually(t, func() bool { return e.pulling(t, "ping") && e.pulling(t, "echo") }, "the runner does not pull ping and echo")
	if _, ok := e.consumer(t, "quiet"); ok {
		t.Error("the runner pulls a function with async disabled")
	}

	// A removed function is no longer pulled: its calls wait.
	if err := r.SetFunctions(e.ctx, functionsOf(t, header+ping+quiet, fns)); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return !e.pulling(t, "echo") }, "the runner still pulls echo after its removal")
	echoCall, quietCall := e.submit(t, "echo", nil, "later"), e.submit(t, "quiet", nil, "")
	e.wait(t, e.submit(t, "ping", nil, ""), calls.Succeeded) // the runner still pulls ping
	if info, _ := e.consumer(t, "echo"); info.NumPending != 1 || info.NumAckPending != 0 {
		t.Errorf("echo's consumer: %d pending, %d taken; want the call waiting, untaken", info.NumPending, info.NumAckPending)
	}
	if rec := e.record(t, echoCall); rec.Status != calls.Queued {
		t.Errorf("a call of a removed function = %+v, want queued", rec)
	}
	if rec := e.record(t, quietCall); rec.Status != calls.Queued {
		t.Errorf("a call of a function with async disabled = %+v, want queued", rec)
	}

	// Back, and async enabled: their calls run, at their first attempt.
	if err := r.SetFunctions(e.ctx, functionsOf(t, header+ping+echo+loud, fns)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{echoCall, quietCall} {
		if rec := e.wait(t, id, calls.Succeeded); rec.Attempts != 1 {
			t.Errorf("call %s ran at attempt %d, want 1", id, rec.Attempts)
		}
	}

	// Disabled again: no longer pulled.
	if err := r.SetFunctions(e.ctx, functionsOf(t, header+ping+echo+quiet, fns)); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return !e.pulling(t, "quiet") }, "the runner still pulls quiet after async was disabled")
	if n := e.streamMsgs(t); n != 0 {
		t.Errorf("%d calls left in the stream", n)
	}
}

func (e *asyncEnv) streamMsgs(t *testing.T) uint64 {
	t.Helper()
	s, err := e.js.Stream(e.ctx, calls.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestAsyncStopSettles: Stop lets an asynchronous call it took run to
// the end and settles it before it returns; calls it has not taken wait
// for another runner.
func TestAsyncStopSettles(t *testing.T) {
	e := newAsyncEnv(t)
	block := functionstest.NewBlock()
	asyncNC := brokertest.Connect(t, e.s)
	fns := functionstest.Builtins(map[string]http.Handler{"block": block})
	r := runnertest.Start(t, e.s.ClientURL(), runner.Config{
		Manifest: loadManifest(t, "version: 1\nfunctions:\n  block: {handler: {builtin: block}, public: true, concurrency: 1}\n", fns),
		Builtins: fns,
		Async:    &runner.AsyncConfig{NATS: asyncNC, AckWait: asyncAckWait},
	})
	id := e.submit(t, "block", nil, "")
	started(t, block, "the call")
	waiting := e.submit(t, "block", nil, "")

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- r.Stop(ctx)
	}()
	// Stop must wait for the call: give it time to return early.
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while a call ran", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(block.Release)
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Stop = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return")
	}
	// Settled before Stop returned: no waiting here.
	if rec := e.record(t, id); rec.Status != calls.Succeeded || string(rec.Response.Body) != "released" {
		t.Errorf("the call running at Stop = %+v, want succeeded", rec)
	}
	if rec := e.record(t, waiting); rec.Status != calls.Queued || rec.Attempts != 0 {
		t.Errorf("the call waiting at Stop = %+v, want queued, untaken", rec)
	}
	if n := e.streamMsgs(t); n != 1 {
		t.Errorf("%d calls in the stream after Stop, want the waiting one", n)
	}
	if !asyncNC.IsConnected() {
		t.Error("Stop closed the asynchronous calls' connection, which the caller owns")
	}
}

// TestAsyncTokenAsOfSubmission: the token of a call to a function that is
// not public is checked as of the call's submission, so a call does not
// fail for the time it waited; a bad token fails it at once, without
// retries.
func TestAsyncTokenAsOfSubmission(t *testing.T) {
	e := newAsyncEnv(t)
	key, err := token.GenerateKey(token.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := token.StaticKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	// The runner's clock is two hours ahead: every token below, valid
	// for a minute, has expired by the time the call runs.
	v, err := token.NewVerifier(token.VerifierConfig{
		Issuers: []token.Issuer{{Issuer: "shoal", Audience: "shoal", Keys: keys}},
		Now:     func() time.Time { return time.Now().Add(2 * time.Hour) },
	})
	if err != nil {
		t.Fatal(err)
	}
	whoami := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := token.FromContext(r.Context())
		fmt.Fprintf(w, "%s %v", c.Subject, c.Permissions)
	})
	fns := map[string]http.Handler{"whoami": whoami}
	e.startAsyncRunner(t, "version: 1\nfunctions:\n  whoami: {handler: {builtin: whoami}, permissions: [read], async: {backoff: [0s]}}\n", fns, v)
	bearer := tokentest.Bearer(t, key, "alice")

	// The premise: called now, the token has expired.
	nc := brokertest.Connect(t, e.s)
	msg := nats.NewMsg(invocation.Subject("whoami"))
	msg.Header.Set("Authorization", bearer("read"))
	if reply := request(t, nc, msg); reply.Header.Get(invocation.HeaderError) != string(invocation.CodeInvalidToken) {
		t.Fatalf("a synchronous call with the token: %v %q, want invalid_token (expired)", reply.Header, reply.Data)
	}

	tests := []struct {
		name          string
		authorization string
		status        calls.Status
		code          invocation.Code
		body          string
	}{
		{"valid at submission", bearer("read"), calls.Succeeded, "", "alice [read]"},
		{"no token", "", calls.Failed, invocation.CodeInvalidToken, ""},
		{"bad token", "Bearer x.y.z", calls.Failed, invocation.CodeInvalidToken, ""},
		{"lacks the permission", bearer("write"), calls.Failed, invocation.CodeForbidden, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{}
			if tt.authorization != "" {
				h["Authorization"] = tt.authorization
			}
			rec := e.wait(t, e.submit(t, "whoami", h, ""), tt.status)
			if rec.Attempts != 1 {
				t.Errorf("%d attempts, want 1", rec.Attempts)
			}
			if tt.status == calls.Succeeded && (rec.Response == nil || string(rec.Response.Body) != tt.body) {
				t.Errorf("response = %+v, want %q", rec.Response, tt.body)
			}
			if tt.status == calls.Failed && (rec.Error == nil || rec.Error.Code != tt.code) {
				t.Errorf("error = %v, want %s", rec.Error, tt.code)
			}
		})
	}
}

// TestAsyncStopDeadline: a call still running when Stop's deadline
// passes is handed back at once, not as a failed attempt (no back-off,
// the attempt not counted: with max_deliver 1 it still runs again), for
// another runner to run.
func TestAsyncStopDeadline(t *testing.T) {
	e := newAsyncEnv(t)
	block := functionstest.NewBlock()
	defer close(block.Release)
	const src = "version: 1\nfunctions:\n  block: {handler: {builtin: block}, public: true, async: {max_deliver: 1, backoff: [1h]}}\n"
	r := e.startAsyncRunner(t, src, functionstest.Builtins(map[string]http.Handler{"block": block}), nil)
	id := e.submit(t, "block", nil, "")
	started(t, block, "the call")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r.Stop(ctx); err == nil {
		t.Error("Stop = nil, want a report of the call cut short")
	}
	// Settled before Stop returned: queued again, its attempt not counted.
	if rec := e.record(t, id); rec.Status != calls.Queued || rec.Attempts != 0 || rec.Interruptions != 1 || rec.Error == nil || rec.Error.Code != invocation.CodeUnavailable {
		t.Errorf("the call cut short = %+v (error %v), want queued again with 0 attempts and 1 interruption", rec, rec.Error)
	}

	other := e.startAsyncRunner(t, src, functionstest.Builtins(map[string]http.Handler{"block": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("done elsewhere"))
	})}), nil)
	if rec := e.wait(t, id, calls.Succeeded); rec.Attempts != 1 || rec.Runner != other.ID() || string(rec.Response.Body) != "done elsewhere" {
		t.Errorf("record = %+v, want succeeded on the other runner at attempt 1 of 1", rec)
	}
}

// TestAsyncLargeAnswer: an answer that fits a NATS message but not the
// call's record (base64 in JSON) is published whole on the result
// subject; the record keeps its status and says its body was dropped.
func TestAsyncLargeAnswer(t *testing.T) {
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), MaxPayload: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	e := newAsyncEnvOn(t, s)
	e.startAsyncRunner(t, "version: 1\nfunctions:\n  big: {handler: {builtin: big}, public: true}\n", functionstest.Builtins(nil), nil)
	nc := brokertest.Connect(t, e.s)
	res, err := nc.SubscribeSync(calls.ResultSubject("big"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	const n = 900 << 10 // 1.2 MiB in base64: over the server's max_payload
	id := e.submit(t, "big", map[string]string{invocation.HeaderQuery: fmt.Sprintf("n=%d", n)}, "")
	rec := e.wait(t, id, calls.Succeeded)
	if rec.Response == nil || rec.Response.Status != 200 || !rec.Response.BodyDropped || len(rec.Response.Body) != 0 {
		t.Errorf("record response = status %d, %d bytes, dropped %v; want 200 with its body dropped",
			rec.Response.Status, len(rec.Response.Body), rec.Response.BodyDropped)
	}
	m, err := res.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(calls.HeaderCallID) != id || len(m.Data) != n {
		t.Errorf("result: call %s, %d bytes; want %s, %d bytes", m.Header.Get(calls.HeaderCallID), len(m.Data), id, n)
	}
}
