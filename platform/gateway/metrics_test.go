package gateway_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/internal/promtest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/token"
	"github.com/shoal-dev/shoal/token/tokentest"
)

// The metrics tests drive real requests through a real NATS server and
// runner, then read GET /metrics as Prometheus would, in the text format.

// scrape reads the gateway's metrics.
func scrape(t testing.TB, url string) promtest.Families {
	t.Helper()
	return promtest.Scrape(t, url+"/metrics")
}

// absent checks that s has no series name{ls}.
func absent(t testing.TB, s promtest.Families, name string, ls ...string) {
	t.Helper()
	if v, ok := s.Value(name, ls...); ok {
		t.Errorf("%s%v = %v, want no such series", name, ls, v)
	}
}

// labelValues returns every value label has in any shoal_ series of s.
func labelValues(s promtest.Families, label string) map[string]bool {
	out := map[string]bool{}
	for name, mf := range s {
		if !strings.HasPrefix(name, "shoal_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label {
					out[lp.GetValue()] = true
				}
			}
		}
	}
	return out
}

const (
	requestsTotal = "shoal_gateway_requests_total"
	durationHist  = "shoal_gateway_request_duration_seconds"
	natsErrors    = "shoal_gateway_nats_errors_total"
	authFailures  = "shoal_gateway_auth_failures_total"
	inFlight      = "shoal_gateway_inflight_requests"
)

// TestMetricsRequests: every request to /function/ counts once, under
// its function and status code, in the counter and the histogram; a name
// that is not deployed counts as _unknown and creates no series of its
// own; a function no runner serves counts a no_responders NATS error.
func TestMetricsRequests(t *testing.T) {
	p := start(t, options{})
	tests := []struct {
		path     string
		times    int
		function string
		code     string
	}{
		{"/function/ping", 3, "ping", "200"},
		{"/function/ping/a/b?x=1", 1, "ping", "200"},
		{"/function/teapot", 2, "teapot", "418"},
		{"/function/panic", 1, "panic", "500"},
		{"/function/orphan", 2, "orphan", "503"}, // no runner
		{"/function/nope", 1, "_unknown", "404"},
		{"/function/nope-" + strings.Repeat("x", 40), 1, "_unknown", "404"},
		{"/function/", 1, "_unknown", "404"},
	}
	for _, tt := range tests {
		for range tt.times {
			r := do(t, newRequest(t, "GET", p.url+tt.path, nil))
			if fmt.Sprint(r.status) != tt.code {
				t.Fatalf("GET %s = %d %s, want %s", tt.path, r.status, r.body, tt.code)
			}
		}
	}
	s := scrape(t, p.url)
	s.Want(t, 4, requestsTotal, "function", "ping", "route", "sync", "code", "200")
	s.Want(t, 2, requestsTotal, "function", "teapot", "route", "sync", "code", "418")
	s.Want(t, 1, requestsTotal, "function", "panic", "route", "sync", "code", "500")
	s.Want(t, 2, requestsTotal, "function", "orphan", "route", "sync", "code", "503")
	s.Want(t, 3, requestsTotal, "function", "_unknown", "route", "sync", "code", "404")
	s.Want(t, 4, durationHist, "function", "ping", "route", "sync")
	s.Want(t, 3, durationHist, "function", "_unknown", "route", "sync")
	s.Want(t, 0, durationHist, "function", "ping", "route", "async")
	s.Want(t, 2, natsErrors, "function", "orphan", "reason", "no_responders")
	for _, reason := range []string{"timeout", "runner_lost", "unavailable", "other"} {
		s.Want(t, 0, natsErrors, "function", "orphan", "reason", reason)
	}
	s.Want(t, 0, natsErrors, "function", "ping", "reason", "no_responders")
	// Codes never answered have no series.
	absent(t, s, requestsTotal, "function", "ping", "route", "sync", "code", "500")
	absent(t, s, requestsTotal, "function", "echo", "route", "sync", "code", "200")
	// Only deployed names are label values.
	fns := labelValues(s, "function")
	for name := range fns {
		if _, ok := p.gatewayFunctions()[name]; !ok && name != "_unknown" {
			t.Errorf("function label %q: not a deployed function", name)
		}
	}
	if !fns["echo"] || !fns["silent"] {
		t.Errorf("function labels %v: every deployed function has its series from the start", fns)
	}
	// The histogram's buckets are the documented ones.
	for _, m := range s[durationHist].GetMetric() {
		var bounds []float64
		for _, b := range m.GetHistogram().GetBucket() {
			if !math.IsInf(b.GetUpperBound(), 1) {
				bounds = append(bounds, b.GetUpperBound())
			}
		}
		if !slices.Equal(bounds, gateway.DurationBuckets) {
			t.Errorf("%s: buckets %v, want %v", durationHist, bounds, gateway.DurationBuckets)
		}
	}
	s.Want(t, 0, inFlight)
	s.Want(t, 1024, "shoal_gateway_inflight_requests_limit")
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := s[name]; !ok {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}
}

// gatewayFunctions returns the names of the platform's manifest.
func (p *platform) gatewayFunctions() map[string]bool {
	out := map[string]bool{}
	for _, fn := range p.m.Functions {
		out[fn.Name] = true
	}
	return out
}

// TestMetricsNATSErrors: each way a NATS request fails counts under its
// reason.
func TestMetricsNATSErrors(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		p := start(t, options{})
		// A responder that takes invocations and never answers.
		nc := brokertest.Connect(t, p.broker)
		if _, err := nc.QueueSubscribe(invocation.Subject("silent"), invocation.QueueGroup, func(*nats.Msg) {}); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if r := do(t, newRequest(t, "GET", p.url+"/function/silent", nil)); r.status != 504 {
			t.Fatalf("silent = %d %s, want 504", r.status, r.body)
		}
		s := scrape(t, p.url)
		s.Want(t, 1, natsErrors, "function", "silent", "reason", "timeout")
		s.Want(t, 1, requestsTotal, "function", "silent", "route", "sync", "code", "504")
	})
	t.Run("runner_lost", func(t *testing.T) {
		t.Parallel()
		p := start(t, options{acks: true, runners: -1})
		r := p.addRunner(t)
		held := async(p.url + "/function/block")
		<-p.block.Started
		// The invocation fails now, or when the runner's ack arrives.
		p.gateway.RunnerLost(r.ID())
		if o := await(t, held); o.status != 502 {
			t.Fatalf("block = %d %s, want 502", o.status, o.body)
		}
		close(p.block.Release) // the runner is still running it
		p.released = true
		s := scrape(t, p.url)
		s.Want(t, 1, natsErrors, "function", "block", "reason", "runner_lost")
		s.Want(t, 1, requestsTotal, "function", "block", "route", "sync", "code", "502")
	})
	t.Run("unavailable", func(t *testing.T) {
		t.Parallel()
		p := start(t, options{runners: -1}) // NATS down: no runner is reached
		p.broker.Shutdown()
		<-p.disconnected
		for range 2 {
			if r := do(t, newRequest(t, "GET", p.url+"/function/ping", nil)); r.status != 503 {
				t.Fatalf("ping with NATS down = %d %s, want 503", r.status, r.body)
			}
		}
		s := scrape(t, p.url)
		s.Want(t, 2, natsErrors, "function", "ping", "reason", "unavailable")
		s.Want(t, 2, requestsTotal, "function", "ping", "route", "sync", "code", "503")
	})
}

// TestMetricsAuthFailures: every token the gateway refuses counts once,
// under the reason it was refused for.
func TestMetricsAuthFailures(t *testing.T) {
	p := startSecured(t, securedOptions{})
	kid := p.key.Marshal().KID
	priv := p.key.Key().(ed25519.PrivateKey)
	sign := func(edit func(c *token.Claims)) string {
		c := claims()
		edit(c)
		return "Bearer " + tokentest.SignRaw(t, jwt.SigningMethodEdDSA, kid, priv, c)
	}
	_, otherKey, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		authorization string
		status        int
		reason        string // "" when authorized
	}{
		{"valid", sign(func(*token.Claims) {}), 200, ""},
		{"no token", "", 401, token.ReasonMissing},
		{"empty bearer", "Bearer ", 401, token.ReasonMissing},
		{"not bearer", "Basic YWxpY2U6aHVudGVyMg==", 401, token.ReasonMalformed},
		{"not a JWT", "Bearer garbage", 401, token.ReasonMalformed},
		{"expired", sign(func(c *token.Claims) {
			c.IssuedAt = jwt.NewNumericDate(time.Now().Add(-2 * time.Hour))
			c.NotBefore = c.IssuedAt
			c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Hour))
		}), 401, token.ReasonExpired},
		{"another key", "Bearer " + tokentest.SignRaw(t, jwt.SigningMethodEdDSA, kid, otherKey, claims()), 401, token.ReasonInvalid},
		{"untrusted issuer", sign(func(c *token.Claims) { c.Issuer = "mallory" }), 401, token.ReasonInvalid},
		{"missing permission", sign(func(c *token.Claims) { c.Permissions = []string{"ping"} }), 403, token.ReasonInsufficientScope},
	}
	want := map[string]float64{}
	codes := map[int]float64{}
	for _, tt := range tests {
		c := p.viaGateway(t, "echo", tt.authorization, "hi")
		if c.status != tt.status {
			t.Fatalf("%s: %d %s, want %d", tt.name, c.status, c.body, tt.status)
		}
		if tt.reason != "" {
			want[tt.reason]++
		}
		codes[tt.status]++
	}
	s := scrape(t, p.url)
	for _, reason := range []string{token.ReasonMissing, token.ReasonMalformed, token.ReasonExpired, token.ReasonInvalid,
		token.ReasonKeyUnavailable, token.ReasonInsufficientScope, "other"} {
		s.Want(t, want[reason], authFailures, "reason", reason)
	}
	for code, n := range codes {
		s.Want(t, n, requestsTotal, "function", "echo", "route", "sync", "code", fmt.Sprint(code))
	}
	// Refusals do not reach NATS: no NATS error.
	s.Want(t, 0, natsErrors, "function", "echo", "reason", "other")
}

// TestMetricsInFlightAndClientGone: an invocation held by its function
// shows in the in-flight gauge; one whose client goes away before the
// answer counts as 499.
func TestMetricsInFlightAndClientGone(t *testing.T) {
	p := start(t, options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := newRequest(t, "GET", p.url+"/function/block", nil).WithContext(ctx)
	gone := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		gone <- err
	}()
	<-p.block.Started
	scrape(t, p.url).Want(t, 1, inFlight)
	cancel()
	if err := <-gone; err == nil {
		t.Fatal("the cancelled request got an answer")
	}
	// The gateway notices the client has gone, then counts the request.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := scrape(t, p.url)
		if v, _ := s.Value(requestsTotal, "function", "block", "route", "sync", "code", "499"); v == 1 {
			s.Want(t, 0, inFlight)
			s.Want(t, 1, durationHist, "function", "block", "route", "sync")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no request counted 499 within 5s: %v", s[requestsTotal])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetricsFollowFunctions: a function removed by SetFunctions loses
// its series, and an invocation of it still in flight does not bring
// them back; deployed again, it starts from zero.
func TestMetricsFollowFunctions(t *testing.T) {
	p := start(t, options{})
	for _, path := range []string{"/function/teapot", "/function/ping"} {
		do(t, newRequest(t, "GET", p.url+path, nil))
	}
	held := async(p.url + "/function/block")
	<-p.block.Started

	without := func(names ...string) []manifest.Function {
		var out []manifest.Function
		for _, fn := range p.m.Functions {
			if !strings.Contains(" "+strings.Join(names, " ")+" ", " "+fn.Name+" ") {
				out = append(out, fn)
			}
		}
		return out
	}
	p.gateway.SetFunctions(without("teapot", "block"))
	close(p.block.Release)
	p.released = true
	if o := await(t, held); o.status != 200 {
		t.Fatalf("block, removed while it ran = %d %s", o.status, o.body)
	}
	if r := do(t, newRequest(t, "GET", p.url+"/function/teapot", nil)); r.status != 404 {
		t.Fatalf("teapot, removed = %d", r.status)
	}
	s := scrape(t, p.url)
	fns := labelValues(s, "function")
	if fns["teapot"] || fns["block"] {
		t.Errorf("function labels %v: removed functions keep series", fns)
	}
	s.Want(t, 1, requestsTotal, "function", "ping", "route", "sync", "code", "200")
	s.Want(t, 1, requestsTotal, "function", "_unknown", "route", "sync", "code", "404")

	p.gateway.SetFunctions(p.m.Functions)
	s = scrape(t, p.url)
	absent(t, s, requestsTotal, "function", "teapot", "route", "sync", "code", "418")
	s.Want(t, 0, durationHist, "function", "teapot", "route", "sync")
	s.Want(t, 1, requestsTotal, "function", "ping", "route", "sync", "code", "200") // kept throughout
	do(t, newRequest(t, "GET", p.url+"/function/teapot", nil))
	scrape(t, p.url).Want(t, 1, requestsTotal, "function", "teapot", "route", "sync", "code", "418")
}

// TestMetricsAsync: submissions count under route async.
func TestMetricsAsync(t *testing.T) {
	p := startAsync(t, asyncOptions{})
	for range 2 {
		if r := p.post(t, "/async-function/echo", strings.NewReader("hi"), nil); r.status != 202 {
			t.Fatalf("submit = %d %s", r.status, r.body)
		}
	}
	if r := p.post(t, "/async-function/sync-only", nil, nil); r.status != 405 {
		t.Fatalf("submit to sync-only = %d %s", r.status, r.body)
	}
	if r := p.post(t, "/async-function/nope", nil, nil); r.status != 404 {
		t.Fatalf("submit to nope = %d %s", r.status, r.body)
	}
	if r := p.post(t, "/async-function/guarded", nil, nil); r.status != 401 {
		t.Fatalf("submit to guarded without a token = %d %s", r.status, r.body)
	}
	s := scrape(t, p.url)
	s.Want(t, 2, requestsTotal, "function", "echo", "route", "async", "code", "202")
	s.Want(t, 2, durationHist, "function", "echo", "route", "async")
	s.Want(t, 0, durationHist, "function", "echo", "route", "sync")
	s.Want(t, 1, requestsTotal, "function", "sync-only", "route", "async", "code", "405")
	s.Want(t, 1, requestsTotal, "function", "_unknown", "route", "async", "code", "404")
	s.Want(t, 1, requestsTotal, "function", "guarded", "route", "async", "code", "401")
	s.Want(t, 1, authFailures, "reason", token.ReasonMissing)
}

// TestObservedKeepsBodyLimitClose: the writer the metrics wrap around an
// invocation still lets http.MaxBytesReader tell the server that a body
// was too large, so that the connection is closed after the 413 rather
// than kept for a client still sending.
func TestObservedKeepsBodyLimitClose(t *testing.T) {
	const limit = 1024
	p := start(t, options{maxBody: limit})
	body := io.MultiReader(strings.NewReader(strings.Repeat("x", limit)), strings.NewReader("y")) // chunked: no length
	resp, err := http.Post(p.url+"/function/counter", "text/plain", body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 || !resp.Close {
		t.Errorf("oversized chunked body: %s, Connection: close %v; want 413 and the connection closed", resp.Status, resp.Close)
	}
	scrape(t, p.url).Want(t, 1, requestsTotal, "function", "counter", "route", "sync", "code", "413")
}
