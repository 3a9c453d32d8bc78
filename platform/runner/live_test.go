package runner_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
)

// functionsOf parses a manifest and returns its functions.
func functionsOf(t testing.TB, src string, fns map[string]http.Handler) []manifest.Function {
	t.Helper()
	return loadManifest(t, src, fns).Functions
}

func TestSetFunctions(t *testing.T) {
	s := brokertest.Start(t)
	block := functionstest.NewBlock()
	fns := functionstest.Builtins(map[string]http.Handler{"block": block})
	r := startRunner(t, s, `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true}
  block: {handler: {builtin: block}, public: true, concurrency: 1}
`, fns)
	nc := brokertest.Connect(t, s)
	id, instance := r.ID(), r.InstanceID()

	// A function added is served once SetFunctions returns.
	if err := r.SetFunctions(t.Context(), functionsOf(t, `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true}
  block: {handler: {builtin: block}, public: true, concurrency: 1}
  echo: {handler: {builtin: echo}, public: true}
`, fns)); err != nil {
		t.Fatal(err)
	}
	if reply := request(t, nc, nats.NewMsg("fn.echo")); reply.Header.Get("Shoal-Status") != "200" {
		t.Errorf("echo after it was added: %v %q", reply.Header, reply.Data)
	}
	if got := r.Functions(); !slices.Equal(got, []string{"block", "echo", "ping"}) {
		t.Errorf("Functions() = %v", got)
	}
	if r.ID() != id || r.InstanceID() == instance {
		t.Errorf("after a change: id %s → %s (want it kept), instance %s → %s (want a new one)", id, r.ID(), instance, r.InstanceID())
	}

	// The same functions again change nothing, not even the registration.
	instance = r.InstanceID()
	if err := r.SetFunctions(t.Context(), functionsOf(t, `version: 1
functions:
  echo: {handler: {builtin: echo}, public: true}
  block: {handler: {builtin: block}, public: true, concurrency: 1}
  ping: {handler: {builtin: ping}, public: true}
`, fns)); err != nil {
		t.Fatal(err)
	}
	if r.InstanceID() != instance {
		t.Error("an unchanged set of functions re-registered the runner")
	}

	// An invocation in flight survives the removal of its function; the
	// function is no longer taken afterwards.
	inflight := make(chan *nats.Msg, 1)
	go func() {
		reply, err := nc.Request("fn.block", nil, 10*time.Second)
		if err != nil {
			t.Errorf("block in flight: %v", err)
		}
		inflight <- reply
	}()
	<-block.Started
	if err := r.SetFunctions(t.Context(), functionsOf(t, `version: 1
functions:
  echo: {handler: {builtin: echo}, public: true}
`, fns)); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Request("fn.ping", nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("ping after its removal: %v, want no responders", err)
	}
	close(block.Release)
	if reply := <-inflight; reply == nil || string(reply.Data) != "released" {
		t.Errorf("the invocation in flight when its function was removed got %v", reply)
	}

	// A changed concurrency limit applies to the next invocation and
	// shows in the figures.
	if err := r.SetFunctions(t.Context(), functionsOf(t, `version: 1
functions:
  echo: {handler: {builtin: echo}, public: true, concurrency: 7}
`, fns)); err != nil {
		t.Fatal(err)
	}
	if st, ok := r.Stats("echo"); !ok || st.Concurrency != 7 {
		t.Errorf("echo stats after the change: %+v %v", st, ok)
	}

	// A change that cannot be confirmed in time (here: its context has
	// ended) changes nothing at all.
	done, cancelDone := context.WithCancel(t.Context())
	cancelDone()
	instance = r.InstanceID()
	if err := r.SetFunctions(done, functionsOf(t, `version: 1
functions:
  echo: {handler: {builtin: echo}, public: true, concurrency: 9}
  ping: {handler: {builtin: ping}, public: true}
`, fns)); err == nil {
		t.Error("SetFunctions with an ended context succeeded")
	}
	if st, _ := r.Stats("echo"); st.Concurrency != 7 || r.InstanceID() != instance || !slices.Equal(r.Functions(), []string{"echo"}) {
		t.Errorf("after a failed change: echo concurrency %d (want 7), functions %v, instance changed %v", st.Concurrency, r.Functions(), r.InstanceID() != instance)
	}

	// A changed timeout applies to the next invocation.
	sleepFor := func(d string) *nats.Msg {
		msg := nats.NewMsg("fn.sleep")
		msg.Header.Set("Shoal-Query", "d="+d)
		return request(t, nc, msg)
	}
	for _, tt := range []struct{ timeout, status string }{{"100ms", "504"}, {"5s", "200"}} {
		if err := r.SetFunctions(t.Context(), functionsOf(t, `version: 1
functions:
  sleep: {handler: {builtin: sleep}, public: true, timeout: `+tt.timeout+`}
`, fns)); err != nil {
			t.Fatal(err)
		}
		reply := sleepFor("300ms")
		got := reply.Header.Get("Shoal-Status")
		if got == "" {
			got = reply.Header.Get("Nats-Service-Error-Code")
		}
		if got != tt.status {
			t.Errorf("sleep 300ms with timeout %s: status %q (%q), want %s", tt.timeout, got, reply.Data, tt.status)
		}
	}

	// After Stop, nothing registers again.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.SetFunctions(t.Context(), nil); err == nil {
		t.Error("SetFunctions after Stop succeeded")
	}
}

// TestSetFunctionsLeavesNoGap re-registers a runner again and again while
// a function it keeps serving is invoked without pause: the new
// registration subscribes before the old one drains, so no invocation
// finds the runner missing.
func TestSetFunctionsLeavesNoGap(t *testing.T) {
	s := brokertest.Start(t)
	fns := functionstest.Builtins(nil)
	with := functionsOf(t, `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, concurrency: 1000}
  echo: {handler: {builtin: echo}, public: true}
`, fns)
	r := startRunner(t, s, `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, concurrency: 1000}
`, fns)

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		nc := brokertest.Connect(t, s)
		wg.Go(func() {
			deadline := time.Now().Add(20 * time.Second)
			for i := 0; i < 100_000 && time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				reply, err := nc.Request("fn.ping", nil, 5*time.Second)
				if err != nil || string(reply.Data) != "pong!" {
					if failed.Add(1) <= 3 {
						if err != nil {
							t.Logf("invocation failed: %v", err)
						} else {
							t.Logf("invocation answered %v %q", reply.Header, reply.Data)
						}
					}
					continue
				}
				ok.Add(1)
			}
		})
	}
	const changes = 50
	for i := range changes {
		next := with[:1]
		if i%2 == 0 {
			next = with
		}
		if err := r.SetFunctions(t.Context(), next); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d re-registrations under load: %d invocations answered, %d failed", changes, ok.Load(), failed.Load())
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Errorf("%d invocations failed while the runner re-registered (%d answered)", failed.Load(), ok.Load())
	}
}
