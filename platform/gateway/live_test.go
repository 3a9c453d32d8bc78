package gateway_test

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/gateway"
)

// TestSetFunctions changes a serving gateway's functions: each change
// applies to the next request.
func TestSetFunctions(t *testing.T) {
	p := start(t, options{})
	ping, _ := p.m.Lookup("ping")
	echo, _ := p.m.Lookup("echo")

	p.gateway.SetFunctions([]manifest.Function{ping})
	if r := do(t, newRequest(t, "GET", p.url+"/function/echo", nil)); r.status != 404 || !strings.Contains(r.body, "function_not_found") {
		t.Errorf("echo after its removal = %d %s", r.status, r.body)
	}
	if r := do(t, newRequest(t, "GET", p.url+"/function/ping", nil)); r.status != 200 {
		t.Errorf("ping = %d %s", r.status, r.body)
	}

	p.gateway.SetFunctions([]manifest.Function{ping, echo})
	if r := do(t, newRequest(t, "GET", p.url+"/function/echo", nil)); r.status != 200 {
		t.Errorf("echo after it came back = %d %s", r.status, r.body)
	}

	// This gateway verifies no tokens: a function that needs one answers
	// 503, without reaching a runner.
	locked := echo
	locked.Public, locked.Permissions = false, []string{"echo"}
	p.gateway.SetFunctions([]manifest.Function{ping, locked})
	if r := do(t, newRequest(t, "GET", p.url+"/function/echo", nil)); r.status != 503 || !strings.Contains(r.body, "not configured to verify tokens") {
		t.Errorf("a function needing a token on a gateway without a verifier = %d %s", r.status, r.body)
	}
}

// TestHealth: /healthz answers while the gateway serves; /readyz only
// while it is connected to NATS and its Ready check passes.
func TestHealth(t *testing.T) {
	s := brokertest.Start(t)
	nc, err := nats.Connect(s.ClientURL(), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	var notReady error = errors.New("catalog not loaded")
	g, err := gateway.New(gateway.Config{NATS: nc, Ready: func() error { return notReady }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	url := "http://" + ln.Addr().String()
	t.Cleanup(func() { _ = g.Shutdown(t.Context()) })

	check := func(path string, want int, contains string) {
		t.Helper()
		r := do(t, newRequest(t, "GET", url+path, nil))
		if r.status != want || !strings.Contains(r.body, contains) {
			t.Errorf("GET %s = %d %s, want %d with %q", path, r.status, r.body, want, contains)
		}
	}
	check("/healthz", http.StatusOK, `"ok"`)
	check("/readyz", http.StatusServiceUnavailable, "catalog not loaded")
	notReady = nil
	check("/readyz", http.StatusOK, `"ok"`)
	s.Shutdown()
	eventually(t, func() bool { return !nc.IsConnected() })
	check("/readyz", http.StatusServiceUnavailable, "not connected to NATS")
	check("/healthz", http.StatusOK, `"ok"`)
	check("/function/ping", http.StatusNotFound, "function_not_found")
}
