// Package runnertest starts real runners for tests, each on its own NATS
// connection, stopped gracefully when the test ends.
package runnertest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/platform/runner"
)

// Start connects to the NATS server at url, with opts, and starts a
// runner on that connection; the runner stops, draining, when the test
// ends.
func Start(tb testing.TB, url string, cfg runner.Config, opts ...nats.Option) *runner.Runner {
	tb.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		tb.Fatalf("connect runner to nats: %v", err)
	}
	r, err := runner.Start(nc, cfg)
	if err != nil {
		nc.Close()
		tb.Fatalf("start runner: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Stop(ctx) // a test may have stopped it already
	})
	return r
}
