package runner_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/shoal-dev/shoal/functions/echo"
	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
	"github.com/shoal-dev/shoal/token"
	"github.com/shoal-dev/shoal/token/tokentest"
)

const testManifest = `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true}
  echo: {handler: {builtin: echo}, public: true}
  teapot: {handler: {builtin: teapot}, public: true}
  panic: {handler: {builtin: panic}, public: true}
  sleep: {handler: {builtin: sleep}, public: true, timeout: 300ms}
  big: {handler: {builtin: big}, public: true}
  block: {handler: {builtin: block}, public: true, concurrency: 2}
`

func loadManifest(t testing.TB, src string, fns map[string]http.Handler) *manifest.Manifest {
	t.Helper()
	m, err := manifest.Parse("test.yaml", []byte(src), manifest.Options{Builtins: slices.Collect(maps.Keys(fns))})
	if err != nil {
		t.Fatalf("test manifest: %v", err)
	}
	return m
}

// startRunner starts a runner of the manifest src; it stops with the test.
func startRunner(t testing.TB, s *broker.Server, src string, fns map[string]http.Handler) *runner.Runner {
	t.Helper()
	return runnertest.Start(t, s.ClientURL(), runner.Config{Manifest: loadManifest(t, src, fns), Builtins: fns})
}

func request(t testing.TB, nc *nats.Conn, msg *nats.Msg) *nats.Msg {
	t.Helper()
	reply, err := nc.RequestMsg(msg, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", msg.Subject, err)
	}
	return reply
}

func TestPingOverPlainNATS(t *testing.T) {
	s := brokertest.Start(t)
	startRunner(t, s, testManifest, functionstest.Builtins(map[string]http.Handler{"block": functionstest.NewBlock()}))
	nc := brokertest.Connect(t, s)

	// What `nats req fn.ping ''` sends: no headers, empty body.
	reply, err := nc.Request("fn.ping", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply.Data) != "pong!" {
		t.Errorf("reply = %q, want pong!", reply.Data)
	}
	if got := reply.Header.Get(invocation.HeaderStatus); got != "200" {
		t.Errorf("%s = %q, want 200", invocation.HeaderStatus, got)
	}
	if got := reply.Header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type = %q", got)
	}
}

func TestRequestAndAnswerMapping(t *testing.T) {
	s := brokertest.Start(t)
	startRunner(t, s, testManifest, functionstest.Builtins(map[string]http.Handler{"block": functionstest.NewBlock()}))
	nc := brokertest.Connect(t, s)

	t.Run("request reaches the function", func(t *testing.T) {
		msg := nats.NewMsg("fn.echo")
		msg.Header.Set(invocation.HeaderMethod, "PATCH")
		msg.Header.Set(invocation.HeaderPath, "/a/b%2Fc")
		msg.Header.Set(invocation.HeaderQuery, "x=1&x=2&y=z")
		msg.Header.Set("x-custom", "lower-case name from a NATS client")
		msg.Header.Set("Shoal-Secret", "reserved headers are not passed on")
		msg.Data = []byte("the body")
		reply := request(t, nc, msg)
		var got echo.Request
		if err := json.Unmarshal(reply.Data, &got); err != nil {
			t.Fatalf("echo reply %q: %v", reply.Data, err)
		}
		if got.Method != "PATCH" || got.Path != "/a/b/c" || got.Body != "the body" || got.BodyBytes != 8 {
			t.Errorf("echo saw %s %s body %q (%d bytes)", got.Method, got.Path, got.Body, got.BodyBytes)
		}
		if !slices.Equal(got.Query["x"], []string{"1", "2"}) || got.Query["y"][0] != "z" {
			t.Errorf("query = %v", got.Query)
		}
		if v := got.Header["X-Custom"]; len(v) != 1 || v[0] != "lower-case name from a NATS client" {
			t.Errorf("X-Custom header = %v (headers %v)", v, got.Header)
		}
		for k := range got.Header {
			if invocation.Reserved(k) {
				t.Errorf("reserved header %s reached the function", k)
			}
		}
	})

	t.Run("answer comes back", func(t *testing.T) {
		reply := request(t, nc, nats.NewMsg("fn.teapot"))
		if got := reply.Header.Get(invocation.HeaderStatus); got != "418" {
			t.Errorf("status = %q, want 418", got)
		}
		if got := reply.Header.Get("X-Teapot"); got != "short and stout" {
			t.Errorf("X-Teapot = %q", got)
		}
		if string(reply.Data) != "I'm a teapot" {
			t.Errorf("body = %q", reply.Data)
		}
		if reply.Header.Get(invocation.HeaderError) != "" {
			t.Error("a status the function chose is not an invocation error")
		}
	})

	t.Run("default method is POST", func(t *testing.T) {
		reply := request(t, nc, nats.NewMsg("fn.echo"))
		var got echo.Request
		_ = json.Unmarshal(reply.Data, &got)
		if got.Method != invocation.DefaultMethod || got.Path != "/" {
			t.Errorf("echo saw %s %s, want %s /", got.Method, got.Path, invocation.DefaultMethod)
		}
	})
}

// TestFailures pins down each failure an invocation can meet at a runner:
// status, stable code, micro error headers and JSON body.
func TestFailures(t *testing.T) {
	s := brokertest.Start(t)
	block := functionstest.NewBlock()
	defer close(block.Release)
	startRunner(t, s, testManifest, functionstest.Builtins(map[string]http.Handler{"block": block}))
	nc := brokertest.Connect(t, s)

	// Fill the block function's two slots so the next call is refused.
	for range 2 {
		if err := nc.PublishRequest("fn.block", nats.NewInbox(), nil); err != nil {
			t.Fatal(err)
		}
		<-block.Started
	}

	tests := []struct {
		name    string
		subject string
		header  map[string]string
		status  int
		code    invocation.Code
	}{
		{"panic", "fn.panic", nil, 500, invocation.CodeFunctionPanic},
		{"timeout", "fn.sleep", map[string]string{invocation.HeaderQuery: "d=10s"}, 504, invocation.CodeTimeout},
		{"overloaded", "fn.block", nil, 429, invocation.CodeOverloaded},
		{"bad method", "fn.ping", map[string]string{invocation.HeaderMethod: "GE T"}, 400, invocation.CodeBadRequest},
		{"bad path", "fn.ping", map[string]string{invocation.HeaderPath: "no-slash"}, 400, invocation.CodeBadRequest},
		{"answer too large", "fn.big", map[string]string{invocation.HeaderQuery: "n=" + strconv.Itoa(brokertest.MaxPayload)}, 500, invocation.CodeResponseTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := nats.NewMsg(tt.subject)
			for k, v := range tt.header {
				msg.Header.Set(k, v)
			}
			start := time.Now()
			reply := request(t, nc, msg)
			if got := reply.Header.Get(micro.ErrorCodeHeader); got != strconv.Itoa(tt.status) {
				t.Errorf("%s = %q, want %d", micro.ErrorCodeHeader, got, tt.status)
			}
			if reply.Header.Get(micro.ErrorHeader) == "" {
				t.Errorf("%s is empty", micro.ErrorHeader)
			}
			if got := invocation.Code(reply.Header.Get(invocation.HeaderError)); got != tt.code {
				t.Errorf("%s = %q, want %q", invocation.HeaderError, got, tt.code)
			}
			ierr, ok := invocation.ParseError(tt.status, reply.Data)
			if !ok || ierr.Code != tt.code || ierr.Message == "" {
				t.Errorf("body %q is not a %s error", reply.Data, tt.code)
			}
			if tt.code == invocation.CodeTimeout && time.Since(start) > 3*time.Second {
				t.Errorf("timeout answered after %s; the function's timeout is 300ms", time.Since(start))
			}
		})
	}

	// The runner and its other functions are unaffected.
	if reply := request(t, nc, nats.NewMsg("fn.ping")); string(reply.Data) != "pong!" {
		t.Errorf("ping after the failures = %q", reply.Data)
	}
}

// TestServiceDiscovery checks what `nats micro ls/info/stats` show, and
// that the STATS figures stay true while invocations run on goroutines.
func TestServiceDiscovery(t *testing.T) {
	s := brokertest.Start(t)
	block := functionstest.NewBlock()
	r := startRunner(t, s, testManifest, functionstest.Builtins(map[string]http.Handler{"block": block}))
	nc := brokertest.Connect(t, s)

	var info micro.Info
	reply := request(t, nc, nats.NewMsg("$SRV.INFO."+invocation.ServiceName))
	if err := json.Unmarshal(reply.Data, &info); err != nil {
		t.Fatal(err)
	}
	if info.Metadata[invocation.RunnerMetadata] != r.ID() || len(info.Endpoints) != len(r.Functions()) {
		t.Fatalf("info = %+v, want runner %s with %d endpoints", info, r.ID(), len(r.Functions()))
	}
	for _, ep := range info.Endpoints {
		if ep.Subject != invocation.Subject(ep.Name) || ep.QueueGroup != invocation.QueueGroup {
			t.Errorf("endpoint %s: subject %s queue %s", ep.Name, ep.Subject, ep.QueueGroup)
		}
		if ep.Name == "sleep" && (ep.Metadata["timeout"] != "300ms" || ep.Metadata["handler"] != "builtin:sleep") {
			t.Errorf("sleep metadata = %v", ep.Metadata)
		}
	}

	// Two invocations running, one refused, five completed of which one
	// panicked.
	for range 4 {
		request(t, nc, nats.NewMsg("fn.ping"))
	}
	request(t, nc, nats.NewMsg("fn.panic"))
	for range 2 {
		if err := nc.PublishRequest("fn.block", nats.NewInbox(), nil); err != nil {
			t.Fatal(err)
		}
		<-block.Started
	}
	request(t, nc, nats.NewMsg("fn.block"))

	// micro counts a request once its handler has returned, which may be
	// just after the reply went out: read the figures until they settle.
	var microBlock *micro.EndpointStats
	stats := func() map[string]runner.EndpointStats {
		var st micro.Stats
		reply := request(t, nc, nats.NewMsg("$SRV.STATS."+invocation.ServiceName+"."+r.InstanceID()))
		if err := json.Unmarshal(reply.Data, &st); err != nil {
			t.Fatal(err)
		}
		out := map[string]runner.EndpointStats{}
		for _, ep := range st.Endpoints {
			var d runner.EndpointStats
			if err := json.Unmarshal(ep.Data, &d); err != nil {
				t.Fatalf("endpoint %s data %s: %v", ep.Name, ep.Data, err)
			}
			out[ep.Name] = d
			if ep.Name == "block" {
				microBlock = ep
			}
		}
		return out
	}
	eventually(t, func() bool {
		stats()
		return microBlock.NumRequests == 3 && microBlock.NumErrors == 1
	}, "micro's own block figures: want 3 received, 1 refused")
	st := stats()
	if got := st["ping"]; got.Received != 4 || got.Completed != 4 || got.Errors != 0 || got.InFlight != 0 || got.ProcessingTime <= 0 {
		t.Errorf("ping stats = %+v", got)
	}
	if got := st["panic"]; got.Completed != 1 || got.Errors != 1 || got.Panics != 1 || !strings.Contains(got.LastError, "function_panic") {
		t.Errorf("panic stats = %+v", got)
	}
	if got := st["block"]; got.InFlight != 2 || got.Concurrency != 2 || got.Received != 3 || got.Rejected != 1 || got.Completed != 0 {
		t.Errorf("block stats while running = %+v", got)
	}
	close(block.Release)
	eventually(t, func() bool {
		got := stats()["block"]
		return got.Completed == 2 && got.InFlight == 0
	}, "block stats after release: want 2 completed and none in flight")
}

// eventually waits up to 5s for cond.
func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQueueGroupSpreadsLoad: three runners share 300 invocations and each
// serves some.
func TestQueueGroupSpreadsLoad(t *testing.T) {
	s := brokertest.Start(t)
	fns := functionstest.Builtins(map[string]http.Handler{"block": functionstest.NewBlock()})
	runners := []*runner.Runner{startRunner(t, s, testManifest, fns), startRunner(t, s, testManifest, fns), startRunner(t, s, testManifest, fns)}
	nc := brokertest.Connect(t, s)
	for range 300 {
		if reply := request(t, nc, nats.NewMsg("fn.ping")); string(reply.Data) != "pong!" {
			t.Fatalf("reply = %q", reply.Data)
		}
	}
	var total uint64
	for i, r := range runners {
		st, _ := r.Stats("ping")
		if st.Completed == 0 {
			t.Errorf("runner %d served none of the 300 invocations", i)
		}
		total += st.Completed
	}
	if total != 300 {
		t.Errorf("runners served %d invocations in all, want 300", total)
	}
}

// TestGracefulStopLosesNothing stops one of two runners while invocations
// flow: every invocation is answered successfully.
func TestGracefulStopLosesNothing(t *testing.T) {
	s := brokertest.Start(t)
	fns := functionstest.Builtins(map[string]http.Handler{"block": functionstest.NewBlock()})
	const src = `version: 1
functions:
  sleep: {handler: {builtin: sleep}, public: true, timeout: 5s, concurrency: 1000}
`
	stopping := startRunner(t, s, src, fns)
	startRunner(t, s, src, fns)
	nc := brokertest.Connect(t, s)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	stopLoad := make(chan struct{})
	for range 16 {
		wg.Go(func() {
			for i := 0; i < 500; i++ { // bounded: 16 x 500 at most
				select {
				case <-stopLoad:
					return
				default:
				}
				msg := nats.NewMsg("fn.sleep")
				msg.Header.Set(invocation.HeaderQuery, "d=20ms")
				reply, err := nc.RequestMsgWithContext(ctx, msg)
				if err == nil && reply.Header.Get(invocation.HeaderStatus) != "200" {
					err = fmt.Errorf("status %s: %s", reply.Header.Get(invocation.HeaderStatus), reply.Data)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	inFlight, _ := stopping.Stats("sleep")
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := stopping.Stop(stopCtx)
	stopCancel()
	if err != nil {
		t.Errorf("Stop: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	close(stopLoad)
	wg.Wait()

	st, _ := stopping.Stats("sleep")
	t.Logf("%d answered, %d failed; the stopped runner had %d in flight at stop and completed %d", ok.Load(), failed.Load(), inFlight.InFlight, st.Completed)
	if failed.Load() > 0 {
		t.Errorf("%d invocations failed across a graceful stop; first: %v", failed.Load(), firstErr.Load())
	}
	if st.Completed == 0 || ok.Load() <= int64(st.Completed) {
		t.Errorf("load did not reach both runners: stopped runner completed %d of %d", st.Completed, ok.Load())
	}
}

// TestStopDeadline: an invocation still running when the drain deadline
// passes is answered 503 unavailable, not left hanging.
func TestStopDeadline(t *testing.T) {
	s := brokertest.Start(t)
	block := functionstest.NewBlock()
	defer close(block.Release)
	r := startRunner(t, s, testManifest, functionstest.Builtins(map[string]http.Handler{"block": block}))
	nc := brokertest.Connect(t, s)

	replies := make(chan *nats.Msg, 1)
	go func() {
		reply, err := nc.Request("fn.block", nil, 10*time.Second)
		if err != nil {
			t.Errorf("request: %v", err)
		}
		replies <- reply
	}()
	<-block.Started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r.Stop(ctx); err == nil || !strings.Contains(err.Error(), "answered 503") {
		t.Errorf("Stop = %v, want a report of the invocation answered 503", err)
	}
	reply := <-replies
	if reply == nil {
		return
	}
	if got := invocation.Code(reply.Header.Get(invocation.HeaderError)); got != invocation.CodeUnavailable {
		t.Errorf("code = %q (%s), want %s", got, reply.Data, invocation.CodeUnavailable)
	}
	if err := r.Stop(context.Background()); err == nil {
		t.Error("a second Stop should return the first one's result")
	}
	if _, err := nc.Request("fn.ping", nil, time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("after Stop, ping: %v, want no responders", err)
	}
}

// TestStopWhileNATSIsDown: a runner stopped while NATS is unreachable
// waits for it to come back before leaving the queue group, so that no
// invocation is routed to it once it no longer takes them.
func TestStopWhileNATSIsDown(t *testing.T) {
	s := brokertest.Start(t)
	addr := s.Addr().String()
	block := functionstest.NewBlock()
	fns := functionstest.Builtins(map[string]http.Handler{"block": block})
	stopping := startRunner(t, s, testManifest, fns)
	nc := brokertest.Connect(t, s, nats.ReconnectWait(50*time.Millisecond), nats.MaxReconnects(-1))
	if err := nc.PublishRequest("fn.block", nats.NewInbox(), nil); err != nil {
		t.Fatal(err)
	}
	<-block.Started

	s.Shutdown()
	// Let the connections notice the outage before Stop starts.
	eventually(t, func() bool { return !nc.IsConnected() }, "the client did not notice the outage")
	time.Sleep(50 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		stopped <- stopping.Stop(ctx)
	}()
	time.Sleep(100 * time.Millisecond) // Stop is now waiting for NATS

	s2, err := broker.Start(broker.Config{Addr: addr, DataDir: t.TempDir(), MaxPayload: brokertest.MaxPayload})
	if err != nil {
		t.Fatalf("restart nats on %s: %v", addr, err)
	}
	t.Cleanup(s2.Shutdown)
	startRunner(t, s2, testManifest, fns)
	eventually(t, nc.IsConnected, "the client did not reconnect")

	lost := 0
	for range 40 {
		if _, err := nc.Request("fn.ping", nil, 3*time.Second); err != nil {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of 40 invocations lost while a runner stopped across a NATS outage", lost)
	}
	close(block.Release)
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Stop = %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("Stop did not return")
	}
}

// TestRunnerChecksTokens: a runner refuses to serve a function that needs
// a token without a verifier, answers 401 and 403 itself to callers that
// come straight over NATS, and hands the verified claims to the function.
func TestRunnerChecksTokens(t *testing.T) {
	s := brokertest.Start(t)
	whoami := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := token.FromContext(r.Context())
		if !ok {
			http.Error(w, "no claims", 500)
			return
		}
		fmt.Fprintf(w, "%s %v", c.Subject, c.Permissions)
	})
	fns := map[string]http.Handler{"whoami": whoami}
	const src = "version: 1\nfunctions:\n  whoami: {handler: {builtin: whoami}, permissions: [read]}\n"
	m := loadManifest(t, src, fns)
	nc := brokertest.Connect(t, s)
	if _, err := runner.Start(nc, runner.Config{Manifest: m, Builtins: fns}); err == nil || !strings.Contains(err.Error(), "no token verifier") {
		t.Fatalf("start without a verifier: %v", err)
	}

	key, v := tokentest.Key(t)
	runnertest.Start(t, s.ClientURL(), runner.Config{Manifest: m, Builtins: fns, Verifier: v})
	bearer := tokentest.Bearer(t, key, "alice")
	tests := []struct {
		name, authorization string
		status              int
		body                string
	}{
		{"no token", "", 401, "invalid_token"},
		{"garbage", "Bearer x.y.z", 401, "invalid_token"},
		{"lacks read", bearer("write"), 403, "insufficient_scope"},
		{"has read", bearer("read", "write"), 200, "alice [read write]"},
	}
	client := brokertest.Connect(t, s)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := nats.NewMsg(invocation.Subject("whoami"))
			if tt.authorization != "" {
				// Any case of the header name works, as in HTTP.
				msg.Header["authorization"] = []string{tt.authorization}
			}
			reply := request(t, client, msg)
			h := http.Header{}
			status, err := invocation.ReadReply(h, reply.Header)
			if err != nil {
				t.Fatal(err)
			}
			if status != tt.status || !strings.Contains(string(reply.Data), tt.body) {
				t.Errorf("%d %s, want %d %s", status, reply.Data, tt.status, tt.body)
			}
			if tt.status != 200 && !strings.Contains(h.Get("WWW-Authenticate"), `error="`+tt.body+`"`) {
				t.Errorf("WWW-Authenticate %q", h.Get("WWW-Authenticate"))
			}
		})
	}
}

// TestAck: a caller that sets Shoal-Ack gets an ack naming the runner on
// its reply subject before the answer when the invocation runs longer
// than the runner's ack delay, and the answer alone when it ends sooner; one that
// does not set it gets the answer alone, and so does a caller refused as
// overloaded.
func TestAck(t *testing.T) {
	s := brokertest.Start(t)
	block := functionstest.NewBlock()
	defer close(block.Release)
	// An ack delay of its own, well above a quick answer's time even on a
	// loaded machine, and below sleep's 300ms timeout.
	const ackDelay = 100 * time.Millisecond
	fns := functionstest.Builtins(map[string]http.Handler{"block": block})
	r := runnertest.Start(t, s.ClientURL(), runner.Config{Manifest: loadManifest(t, testManifest, fns), Builtins: fns, AckDelay: ackDelay})
	nc := brokertest.Connect(t, s)

	// send publishes an invocation and returns every message its reply
	// subject receives within a short while after the answer.
	send := func(t *testing.T, msg *nats.Msg) []*nats.Msg {
		t.Helper()
		sub, err := nc.SubscribeSync(nats.NewInbox())
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		msg.Reply = sub.Subject
		if err := nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
		var got []*nats.Msg
		for {
			wait := 5 * time.Second
			if n := len(got); n > 0 && got[n-1].Header.Get(invocation.HeaderAck) == "" {
				wait = 200 * time.Millisecond // the answer is in: anything else?
			}
			m, err := sub.NextMsg(wait)
			if errors.Is(err, nats.ErrTimeout) && len(got) > 0 {
				return got
			}
			if err != nil {
				t.Fatalf("after %d messages: %v", len(got), err)
			}
			got = append(got, m)
		}
	}
	withAck := func(subject string) *nats.Msg {
		msg := nats.NewMsg(subject)
		msg.Header.Set(invocation.HeaderAck, invocation.AckRequested)
		return msg
	}

	// sleep runs for d: past ackDelay it is acked.
	sleep := func(d time.Duration) *nats.Msg {
		msg := withAck("fn.sleep")
		msg.Header.Set(invocation.HeaderQuery, "d="+d.String())
		return msg
	}

	t.Run("with Shoal-Ack, a quick answer: the answer alone", func(t *testing.T) {
		got := send(t, withAck("fn.ping"))
		if len(got) != 1 || string(got[0].Data) != "pong!" {
			t.Fatalf("got %d messages, want the answer alone (no ack: it came within %s)", len(got), ackDelay)
		}
	})

	t.Run("with Shoal-Ack, a longer invocation: the ack, then the answer", func(t *testing.T) {
		got := send(t, sleep(2*ackDelay))
		if len(got) != 2 {
			t.Fatalf("got %d messages, want an ack and the answer", len(got))
		}
		id, ok := invocation.ReadAck(got[0])
		if !ok || id != r.ID() {
			t.Errorf("first message %v %q: want an ack from runner %s", got[0].Header, got[0].Data, r.ID())
		}
		if _, ok := invocation.ReadAck(got[1]); ok || !strings.HasPrefix(string(got[1].Data), "slept") || got[1].Header.Get(invocation.HeaderStatus) != "200" {
			t.Errorf("second message %v %q: want the answer", got[1].Header, got[1].Data)
		}
	})

	t.Run("with Shoal-Ack in lower case", func(t *testing.T) {
		msg := sleep(2 * ackDelay)
		msg.Header["shoal-ack"] = msg.Header[invocation.HeaderAck]
		delete(msg.Header, invocation.HeaderAck)
		if got := send(t, msg); len(got) != 2 {
			t.Errorf("got %d messages, want an ack and the answer", len(got))
		}
	})

	t.Run("with Shoal-Ack, an error answer comes after the ack", func(t *testing.T) {
		got := send(t, sleep(time.Second)) // sleep's timeout is 300ms
		if len(got) != 2 || got[1].Header.Get(invocation.HeaderError) != string(invocation.CodeTimeout) {
			t.Fatalf("got %d messages, want an ack and a timeout answer", len(got))
		}
		if id, ok := invocation.ReadAck(got[0]); !ok || id != r.ID() {
			t.Errorf("first message %v: want an ack", got[0].Header)
		}
	})

	t.Run("without Shoal-Ack: the answer alone", func(t *testing.T) {
		got := send(t, nats.NewMsg("fn.ping"))
		if len(got) != 1 || string(got[0].Data) != "pong!" {
			t.Errorf("got %d messages, want the answer alone", len(got))
		}
	})

	t.Run("refused as overloaded: no ack", func(t *testing.T) {
		for range 2 { // block's concurrency
			if err := nc.PublishRequest("fn.block", nats.NewInbox(), nil); err != nil {
				t.Fatal(err)
			}
			<-block.Started
		}
		got := send(t, withAck("fn.block"))
		if len(got) != 1 || got[0].Header.Get(invocation.HeaderError) != string(invocation.CodeOverloaded) {
			t.Errorf("got %d messages (first %v), want the overloaded refusal alone", len(got), got[0].Header)
		}
	})
}

// TestAckBeforeAnswer: an invocation that ends about when its ack is due
// gets the ack before the answer, or no ack, never an ack after it.
func TestAckBeforeAnswer(t *testing.T) {
	s := brokertest.Start(t)
	const ackDelay = 2 * time.Millisecond
	fns := functionstest.Builtins(map[string]http.Handler{"block": functionstest.NewBlock()})
	runnertest.Start(t, s.ClientURL(), runner.Config{Manifest: loadManifest(t, testManifest, fns), Builtins: fns, AckDelay: ackDelay})
	nc := brokertest.Connect(t, s)
	sub, err := nc.SubscribeSync(nats.NewInbox() + ".*")
	if err != nil {
		t.Fatal(err)
	}
	prefix := strings.TrimSuffix(sub.Subject, "*")
	const n = 300
	for i := range n {
		msg := nats.NewMsg("fn.sleep")
		msg.Reply = prefix + strconv.Itoa(i)
		msg.Header.Set(invocation.HeaderAck, invocation.AckRequested)
		msg.Header.Set(invocation.HeaderQuery, "d="+ackDelay.String())
		if err := nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	answered := map[string]bool{}
	acks, late := 0, 0
	for len(answered) < n {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("after %d answers: %v", len(answered), err)
		}
		if _, ok := invocation.ReadAck(m); ok {
			acks++
			if answered[m.Subject] {
				late++
			}
			continue
		}
		answered[m.Subject] = true
	}
	// Acks still on their way would come now.
	for {
		m, err := sub.NextMsg(200 * time.Millisecond)
		if err != nil {
			break
		}
		if _, ok := invocation.ReadAck(m); ok {
			acks++
			late++
		}
	}
	if late > 0 {
		t.Errorf("%d of %d acks came after their answer", late, acks)
	}
	if acks == 0 {
		t.Errorf("no ack in %d invocations of %s at an ack delay of %s: the race was not exercised", n, ackDelay, ackDelay)
	}
	t.Logf("%d invocations, %d acked", n, acks)
}
