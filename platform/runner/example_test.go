package runner_test

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/functions"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/runner"
)

// A runner serves the functions of a manifest on its own NATS connection;
// any NATS client then invokes them with a request on fn.NAME.
func ExampleStart() {
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
	rc, err := nats.Connect(s.ClientURL())
	if err != nil {
		fmt.Println(err)
		return
	}
	r, err := runner.Start(rc, runner.Config{Manifest: m, Builtins: functions.Builtins(functions.Deps{})})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Stop(ctx) // drains, then closes rc
	}()

	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	reply, err := nc.Request("fn.ping", nil, 5*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(reply.Data), reply.Header.Get("Shoal-Status"))
	// Output: pong! 200
}
