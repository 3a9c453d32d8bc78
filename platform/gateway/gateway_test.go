package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/functions/echo"
	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
	"github.com/shoal-dev/shoal/token"
	"github.com/shoal-dev/shoal/token/tokentest"
)

const testManifest = `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, concurrency: 10000}
  echo: {handler: {builtin: echo}, public: true}
  teapot: {handler: {builtin: teapot}, public: true}
  panic: {handler: {builtin: panic}, public: true}
  sleep: {handler: {builtin: sleep}, public: true, timeout: 300ms}
  block: {handler: {builtin: block}, public: true, concurrency: 1}
  counter: {handler: {builtin: counter}, public: true}
  orphan: {handler: {builtin: orphan}, public: true, timeout: 10s}
  silent: {handler: {builtin: silent}, public: true, timeout: 300ms}
`

// platform is a broker, runners and a gateway serving real HTTP on
// loopback, all in this process.
type platform struct {
	broker  *broker.Server
	url     string
	block   *functionstest.Block
	counter *functionstest.Counter
	fns     map[string]http.Handler
	m       *manifest.Manifest
	gateway *gateway.Gateway
	// released is set by a test that closed block.Release itself.
	released bool
	// disconnected is closed when the gateway's NATS connection drops.
	disconnected chan struct{}
	// nc is the gateway's NATS connection.
	nc *nats.Conn
	// key signs tokens the gateway accepts, with options.tokens.
	key jwkset.JWK
}

type options struct {
	maxBody     int64
	maxInFlight int
	maxPayload  int
	// runners is how many runners serve the manifest; 0 means one,
	// negative none.
	runners int
	// acks turns on Config.AckRunners.
	acks bool
	// tokens gives the gateway a verifier of the tokens of platform.key,
	// for its /system/ routes (the test manifest's functions are all
	// public).
	tokens bool
}

// serve serves g on a loopback port until the test ends, and returns its
// URL; the test fails if g does not shut down cleanly.
func serve(t testing.TB, g *gateway.Gateway) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(ln) }()
	t.Cleanup(func() {
		// Idle client connections the server never saw a request on would
		// hold Shutdown for 5 s; close them as a client going away does.
		http.DefaultClient.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.Shutdown(ctx); err != nil {
			t.Errorf("gateway shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("gateway serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func start(t testing.TB, o options) *platform {
	t.Helper()
	p := &platform{block: functionstest.NewBlock(), counter: &functionstest.Counter{}}
	if o.maxPayload == 0 {
		o.maxPayload = brokertest.MaxPayload
	}
	if o.maxPayload < 0 {
		o.maxPayload = 0 // the NATS default
	}
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), MaxPayload: o.maxPayload})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	p.broker = s
	p.fns = functionstest.Builtins(map[string]http.Handler{"block": p.block, "counter": p.counter})
	// orphan and silent are declared but no runner has them.
	names := append(slices.Collect(maps.Keys(p.fns)), "orphan", "silent")
	p.m, err = manifest.Parse("test.yaml", []byte(testManifest), manifest.Options{Builtins: names})
	if err != nil {
		t.Fatal(err)
	}
	if o.runners == 0 {
		o.runners = 1
	}
	for range max(o.runners, 0) {
		p.addRunner(t)
	}

	p.disconnected = make(chan struct{})
	var once sync.Once
	// As shoal gateway connects: no reconnect buffer.
	nc, err := nats.Connect(s.ClientURL(), nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { once.Do(func() { close(p.disconnected) }) }))
	if err != nil {
		t.Fatal(err)
	}
	var v *token.Verifier
	if o.tokens {
		p.key, v = tokentest.Key(t)
	}
	g, err := gateway.New(gateway.Config{NATS: nc, Manifest: p.m, MaxBody: o.maxBody, MaxInFlight: o.maxInFlight, AckRunners: o.acks, Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	p.url = serve(t, g)
	p.gateway = g
	p.nc = nc
	// Cleanups run last-registered first: release blocked invocations
	// before the gateway drains.
	t.Cleanup(func() {
		if !p.released {
			close(p.block.Release)
		}
	})
	return p
}

func (p *platform) addRunner(t testing.TB) *runner.Runner {
	t.Helper()
	return runnertest.Start(t, p.broker.ClientURL(), runner.Config{Manifest: p.m, Builtins: p.fns})
}

// ackModes runs test with the gateway's runner acks off, then on: apart
// from a runner reported lost, answers must not depend on them.
func ackModes(t *testing.T, test func(t *testing.T, acks bool)) {
	t.Helper()
	for _, acks := range []bool{false, true} {
		name := "without acks"
		if acks {
			name = "with acks"
		}
		t.Run(name, func(t *testing.T) { test(t, acks) })
	}
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t testing.TB, req *http.Request) response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(body)}
}

func newRequest(t testing.TB, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestInvoke(t *testing.T) { ackModes(t, testInvoke) }

func testInvoke(t *testing.T, acks bool) {
	p := start(t, options{acks: acks})

	t.Run("ping", func(t *testing.T) {
		r := do(t, newRequest(t, "GET", p.url+"/function/ping", nil))
		if r.status != 200 || r.body != "pong!" || r.header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("GET /function/ping = %d %q (%v)", r.status, r.body, r.header)
		}
	})

	t.Run("method, sub-path, query, headers and body reach the function", func(t *testing.T) {
		req := newRequest(t, "PUT", p.url+"/function/echo/any/path%2Fhere?x=1&x=2&y=%C3%A9", strings.NewReader("hello body"))
		req.Header.Set("X-Custom", "yes")
		req.Header.Set("Shoal-Path", "/spoofed")
		req.Header.Set("Connection", "keep-alive, X-Hop")
		req.Header.Set("X-Hop", "only for this connection")
		r := do(t, req)
		if r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		var got echo.Request
		if err := json.Unmarshal([]byte(r.body), &got); err != nil {
			t.Fatal(err)
		}
		if got.Method != "PUT" || got.Path != "/any/path/here" || got.Body != "hello body" {
			t.Errorf("function saw %s %s %q", got.Method, got.Path, got.Body)
		}
		if !slices.Equal(got.Query["x"], []string{"1", "2"}) || got.Query["y"][0] != "é" {
			t.Errorf("query = %v", got.Query)
		}
		h := http.Header(got.Header)
		if h.Get("X-Custom") != "yes" || h.Get("X-Forwarded-For") != "127.0.0.1" || h.Get("X-Forwarded-Proto") != "http" {
			t.Errorf("headers = %v", h)
		}
		if h.Get("Shoal-Path") != "" || h.Get("X-Hop") != "" || h.Get("Connection") != "" {
			t.Errorf("reserved or hop-by-hop headers reached the function: %v", h)
		}
	})

	t.Run("any method", func(t *testing.T) {
		r := do(t, newRequest(t, "PROPFIND", p.url+"/function/echo", nil))
		if r.status != 200 || !strings.Contains(r.body, `"method": "PROPFIND"`) {
			t.Errorf("PROPFIND = %d %s", r.status, r.body)
		}
	})

	t.Run("status, headers and body come back", func(t *testing.T) {
		r := do(t, newRequest(t, "GET", p.url+"/function/teapot", nil))
		if r.status != 418 || r.body != "I'm a teapot" || r.header.Get("X-Teapot") != "short and stout" {
			t.Errorf("teapot = %d %q %v", r.status, r.body, r.header)
		}
		for k := range r.header {
			if invocation.Reserved(k) {
				t.Errorf("protocol header %s leaked into the HTTP response", k)
			}
		}
	})

	t.Run("HEAD", func(t *testing.T) {
		r := do(t, newRequest(t, "HEAD", p.url+"/function/ping", nil))
		if r.status != 200 || r.body != "" || r.header.Get("Content-Length") != "5" {
			t.Errorf("HEAD = %d %q %v", r.status, r.body, r.header)
		}
	})
}

// TestFailureTable checks every row of the documented failure table.
func TestFailureTable(t *testing.T) { ackModes(t, testFailureTable) }

func testFailureTable(t *testing.T, acks bool) {
	const limit = 1024
	p := start(t, options{maxBody: limit, acks: acks})
	// Hold block's only slot so the next call is refused.
	go func() {
		if resp, err := http.Get(p.url + "/function/block"); err == nil {
			resp.Body.Close()
		}
	}()
	<-p.block.Started

	tests := []struct {
		name       string
		method     string
		path       string
		body       io.Reader
		status     int
		code       invocation.Code
		retryAfter bool
		within     time.Duration // the answer must come sooner than this
	}{
		{name: "function not in the manifest", path: "/function/nope", status: 404, code: invocation.CodeFunctionNotFound},
		{name: "route that does not exist", path: "/nope", status: 404, code: invocation.CodeNotFound},
		{name: "function path without a name", path: "/function/", status: 404, code: invocation.CodeNotFound},
		// orphan's timeout is 10s: no responders must answer long before.
		{name: "no runner serves the function", path: "/function/orphan", status: 503, code: invocation.CodeNoRunner, retryAfter: true, within: 2 * time.Second},
		{name: "function did not answer within its timeout", path: "/function/sleep?d=10s", status: 504, code: invocation.CodeTimeout, within: 2 * time.Second},
		{name: "function panicked", path: "/function/panic", status: 500, code: invocation.CodeFunctionPanic},
		{name: "body over the limit, length known", method: "POST", path: "/function/counter", body: bytes.NewReader(make([]byte, limit+1)), status: 413, code: invocation.CodePayloadTooLarge},
		{name: "body over the limit, chunked", method: "POST", path: "/function/counter", body: io.MultiReader(strings.NewReader(strings.Repeat("x", limit)), strings.NewReader("y")), status: 413, code: invocation.CodePayloadTooLarge},
		{name: "runner at its concurrency limit", path: "/function/block", status: 429, code: invocation.CodeOverloaded, retryAfter: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			start := time.Now()
			r := do(t, newRequest(t, method, p.url+tt.path, tt.body))
			if tt.within > 0 && time.Since(start) > tt.within {
				t.Errorf("answered after %s, want sooner than %s", time.Since(start), tt.within)
			}
			if r.status != tt.status {
				t.Errorf("status = %d, want %d (%s)", r.status, tt.status, r.body)
			}
			if r.header.Get("Content-Type") != "application/json" {
				t.Errorf("Content-Type = %q", r.header.Get("Content-Type"))
			}
			var body struct {
				Error struct {
					Code    invocation.Code `json:"code"`
					Message string          `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(r.body), &body); err != nil || body.Error.Code != tt.code || body.Error.Message == "" {
				t.Errorf("body = %s, want a %s error", r.body, tt.code)
			}
			if got := r.header.Get("Retry-After") != ""; got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want it set: %v", r.header.Get("Retry-After"), tt.retryAfter)
			}
		})
	}
	if n := p.counter.N.Load(); n != 0 {
		t.Errorf("a body over the limit was forwarded: counter ran %d times", n)
	}
	// The runner and the other functions are unaffected.
	if r := do(t, newRequest(t, "GET", p.url+"/function/ping", nil)); r.body != "pong!" {
		t.Errorf("ping after the failures = %d %q", r.status, r.body)
	}
	if r := do(t, newRequest(t, "POST", p.url+"/function/counter", strings.NewReader("small"))); r.status != 200 || p.counter.N.Load() != 1 {
		t.Errorf("counter with a small body = %d %q", r.status, r.body)
	}
}

// TestTimeoutWhenRunnerVanishes: a responder that takes invocations and
// never answers (a runner that died, unreported) costs the caller the
// function's timeout plus a grace period, then a 504.
func TestTimeoutWhenRunnerVanishes(t *testing.T) {
	ackModes(t, func(t *testing.T, acks bool) {
		t.Parallel()
		testTimeoutWhenRunnerVanishes(t, acks)
	})
}

func testTimeoutWhenRunnerVanishes(t *testing.T, acks bool) {
	p := start(t, options{acks: acks})
	nc := brokertest.Connect(t, p.broker)
	sub, err := nc.QueueSubscribe(invocation.Subject("silent"), invocation.QueueGroup, func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := newRequest(t, "GET", p.url+"/function/silent", nil).WithContext(ctx)
	start := time.Now()
	r := do(t, req)
	if r.status != 504 || !strings.Contains(r.body, string(invocation.CodeTimeout)) {
		t.Errorf("status %d %s, want 504 timeout", r.status, r.body)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("answered after %s, before the function's 300ms timeout", took)
	}
}

// TestBodyOverNATSMaxPayload: with a NATS server whose max_payload is below
// the body limit, a large body is refused with 413 naming max_payload.
func TestBodyOverNATSMaxPayload(t *testing.T) { ackModes(t, testBodyOverNATSMaxPayload) }

func testBodyOverNATSMaxPayload(t *testing.T, acks bool) {
	p := start(t, options{maxPayload: -1, acks: acks}) // NATS default: 1 MiB
	r := do(t, newRequest(t, "POST", p.url+"/function/counter", bytes.NewReader(make([]byte, 2<<20))))
	if r.status != 413 || !strings.Contains(r.body, "max_payload") {
		t.Errorf("2 MiB body = %d %s, want 413 naming max_payload", r.status, r.body)
	}
	if p.counter.N.Load() != 0 {
		t.Error("the body reached the function")
	}
}

// TestRunnersShareLoadAndStopGracefully: three runners share 300
// requests through the gateway; one stops gracefully midway and no request
// fails.
func TestRunnersShareLoadAndStopGracefully(t *testing.T) {
	ackModes(t, testRunnersShareLoadAndStopGracefully)
}

func testRunnersShareLoadAndStopGracefully(t *testing.T, acks bool) {
	p := start(t, options{acks: acks})
	runners := []*runner.Runner{p.addRunner(t), p.addRunner(t)}
	// start() added the first runner; find it through the other two's
	// figures at the end.
	var failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	jobs := make(chan int)
	for range 8 {
		wg.Go(func() {
			for range jobs {
				resp, err := http.Get(p.url + "/function/sleep?d=5ms")
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = errors.New(resp.Status + ": " + string(body))
					}
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	for i := range 300 {
		if i == 150 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := runners[0].Stop(ctx); err != nil {
				t.Errorf("graceful stop: %v", err)
			}
			cancel()
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Errorf("%d of 300 requests failed; first: %v", n, firstErr.Load())
	}
	var served uint64
	for i, r := range runners {
		st, _ := r.Stats("sleep")
		if st.Completed == 0 {
			t.Errorf("runner %d served none of the 300 requests", i)
		}
		served += st.Completed
	}
	if served >= 300 {
		t.Errorf("the first runner served none of the 300 requests (the others served %d)", served)
	}
}

// TestShutdownDrainsInFlight: Shutdown waits for a request in flight, which
// gets its answer, and refuses new connections meanwhile.
func TestShutdownDrainsInFlight(t *testing.T) { ackModes(t, testShutdownDrainsInFlight) }

func testShutdownDrainsInFlight(t *testing.T, acks bool) {
	p := start(t, options{acks: acks})
	answered := make(chan response, 1)
	go func() {
		resp, err := http.Get(p.url + "/function/block")
		if err != nil {
			answered <- response{status: -1, body: err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answered <- response{status: resp.StatusCode, body: string(b)}
	}()
	<-p.block.Started

	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownDone <- p.gateway.Shutdown(ctx)
	}()
	// Shutdown must wait for the request in flight.
	eventuallyRefused(t, p.url)
	select {
	case err := <-shutdownDone:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	default:
	}
	close(p.block.Release)
	p.released = true
	if r := <-answered; r.status != 200 || r.body != "released" {
		t.Errorf("request in flight during shutdown = %d %q, want 200 released", r.status, r.body)
	}
	if err := <-shutdownDone; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
}

// eventuallyRefused waits until the gateway refuses new connections.
func eventuallyRefused(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			return
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("the gateway still accepts connections 5s into its shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNATSUnavailable: with NATS gone, an invocation is answered 503 at
// once, not after the function's timeout.
func TestNATSUnavailable(t *testing.T) {
	ackModes(t, func(t *testing.T, acks bool) {
		t.Parallel()
		testNATSUnavailable(t, acks)
	})
}

func testNATSUnavailable(t *testing.T, acks bool) {
	p := start(t, options{acks: acks})
	p.broker.Shutdown()
	<-p.disconnected
	start := time.Now()
	r := do(t, newRequest(t, "GET", p.url+"/function/orphan", nil)) // timeout 10s
	if r.status != 503 || !strings.Contains(r.body, string(invocation.CodeUnavailable)) || r.header.Get("Retry-After") == "" {
		t.Errorf("with NATS down: %d %s", r.status, r.body)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("answered after %s; the function's timeout is 10s, NATS being down should be reported at once", took)
	}
}

// TestGatewayInFlightLimit: past its limit of invocations in flight the
// gateway answers 429 at once, without reading the body or calling NATS,
// and serves again as soon as one finishes.
func TestGatewayInFlightLimit(t *testing.T) {
	p := start(t, options{maxInFlight: 1})
	held := make(chan int, 1)
	go func() {
		resp, err := http.Get(p.url + "/function/block")
		if err != nil {
			held <- -1
			return
		}
		resp.Body.Close()
		held <- resp.StatusCode
	}()
	<-p.block.Started

	r := do(t, newRequest(t, "POST", p.url+"/function/counter", strings.NewReader("x")))
	if r.status != 429 || !strings.Contains(r.body, string(invocation.CodeOverloaded)) || !strings.Contains(r.body, "gateway") || r.header.Get("Retry-After") == "" {
		t.Errorf("second invocation at a limit of 1 = %d %s", r.status, r.body)
	}
	if p.counter.N.Load() != 0 {
		t.Error("the refused invocation reached the function")
	}
	if r := do(t, newRequest(t, "GET", p.url+"/function/nope", nil)); r.status != 404 {
		t.Errorf("an unknown function is still a 404 at the limit, got %d", r.status)
	}
	close(p.block.Release)
	p.released = true
	if s := <-held; s != 200 {
		t.Errorf("held invocation = %d", s)
	}
	if r := do(t, newRequest(t, "GET", p.url+"/function/ping", nil)); r.status != 200 {
		t.Errorf("after the held invocation finished: %d %s", r.status, r.body)
	}
}

// TestSlowClientHoldsNoInvocationPlace: a client that announces a large
// body and sends none holds its connection only, not one of the gateway's
// places for invocations in flight.
func TestSlowClientHoldsNoInvocationPlace(t *testing.T) {
	p := start(t, options{maxInFlight: 1})
	for range 4 {
		conn, err := net.Dial("tcp", strings.TrimPrefix(p.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// With Expect: 100-continue the server says "100 Continue" only
		// once the gateway starts reading the body: then it is surely
		// waiting on this slow client.
		if _, err := io.WriteString(conn, "POST /function/counter HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\nExpect: 100-continue\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
			t.Fatalf("slow client %q, %v; want 100 Continue", line, err)
		}
	}
	if r := do(t, newRequest(t, "GET", p.url+"/function/ping", nil)); r.status != 200 {
		t.Errorf("ping beside slow uploads = %d %s", r.status, r.body)
	}
	if p.counter.N.Load() != 0 {
		t.Error("an unfinished body reached the function")
	}
}
