package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/functions"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/runner"
)

// The gateway turns HTTP requests into NATS requests that runners answer.
func ExampleNew() {
	s, _, stop, err := brokertest.ForExample()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	m, err := manifest.Parse("fn.yaml", []byte("version: 1\nfunctions:\n  ping: {handler: {builtin: ping}, public: true}\n"),
		manifest.Options{Builtins: functions.Names()})
	if err != nil {
		fmt.Println(err)
		return
	}

	rc, _ := nats.Connect(s.ClientURL())
	r, err := runner.Start(rc, runner.Config{Manifest: m, Builtins: functions.Builtins(functions.Deps{})})
	if err != nil {
		fmt.Println(err)
		return
	}
	gc, _ := nats.Connect(s.ClientURL(), nats.ReconnectBufSize(-1))
	g, err := gateway.New(gateway.Config{NATS: gc, Manifest: m})
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := httptest.NewServer(g)
	defer func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = g.Shutdown(ctx)
		_ = r.Stop(ctx)
	}()

	resp, err := http.Get(srv.URL + "/function/ping")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))
	// Output: 200 pong!
}
