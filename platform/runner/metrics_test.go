package runner_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/internal/promtest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/runner"
)

// gather gathers reg, failing on any inconsistency the registry finds.
func gather(t testing.TB, reg *prometheus.Registry) promtest.Families {
	t.Helper()
	return promtest.Gather(t, reg)
}

const (
	invocationsTotal = "shoal_runner_invocations_total"
	durationHist     = "shoal_runner_invocation_duration_seconds"
	inUse            = "shoal_runner_concurrency_in_use"
	limit            = "shoal_runner_concurrency_limit"
)

// TestMetrics: each invocation counts once under its function and
// outcome, and in the duration histogram; the concurrency gauges follow
// the invocations running; a function no longer served leaves the
// output.
func TestMetrics(t *testing.T) {
	s := brokertest.Start(t)
	block := functionstest.NewBlock()
	released := false
	defer func() {
		if !released {
			close(block.Release)
		}
	}()
	fns := functionstest.Builtins(map[string]http.Handler{"block": block})
	r := startRunner(t, s, testManifest, fns)
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.Collector())
	nc := brokertest.Connect(t, s)

	// Fill block's two slots, so that the next one is rejected.
	for range 2 {
		if err := nc.PublishRequest("fn.block", nats.NewInbox(), nil); err != nil {
			t.Fatal(err)
		}
		<-block.Started
	}
	tests := []struct {
		subject string
		query   string
		times   int
		status  string // the answer's Shoal-Status
	}{
		{"fn.ping", "", 3, "200"},
		{"fn.teapot", "", 2, "418"}, // the function's own status: ok
		{"fn.panic", "", 1, "500"},
		{"fn.sleep", "d=10s", 1, "504"},
		{"fn.big", "n=" + strconv.Itoa(brokertest.MaxPayload), 1, "500"}, // answer too large: error
		{"fn.block", "", 2, "429"},
	}
	for _, tt := range tests {
		for range tt.times {
			msg := nats.NewMsg(tt.subject)
			if tt.query != "" {
				msg.Header.Set(invocation.HeaderQuery, tt.query)
			}
			if got := request(t, nc, msg).Header.Get(invocation.HeaderStatus); got != tt.status {
				t.Fatalf("%s: status %s, want %s", tt.subject, got, tt.status)
			}
		}
	}
	g := gather(t, reg)
	for _, w := range []struct {
		function string
		counts   map[string]float64 // by outcome
	}{
		{"ping", map[string]float64{runner.OutcomeOK: 3}},
		{"teapot", map[string]float64{runner.OutcomeOK: 2}},
		{"panic", map[string]float64{runner.OutcomePanic: 1}},
		{"sleep", map[string]float64{runner.OutcomeTimeout: 1}},
		{"big", map[string]float64{runner.OutcomeError: 1}},
		{"block", map[string]float64{runner.OutcomeRejected: 2}},
	} {
		var answered float64
		for _, o := range []string{runner.OutcomeOK, runner.OutcomeError, runner.OutcomeTimeout, runner.OutcomePanic, runner.OutcomeRejected} {
			g.Want(t, w.counts[o], invocationsTotal, "function", w.function, "outcome", o)
			if o != runner.OutcomeRejected {
				answered += w.counts[o]
			}
		}
		g.Want(t, answered, durationHist, "function", w.function)
	}
	g.Want(t, 2, inUse, "function", "block")
	g.Want(t, 2, limit, "function", "block")
	g.Want(t, 0, inUse, "function", "ping")
	g.Want(t, 100, limit, "function", "ping") // the default
	if _, ok := g["shoal_runner_async_calls_taken_total"]; ok {
		t.Error("a runner without asynchronous calls reports them")
	}

	close(block.Release)
	released = true
	// A slot is freed just before its invocation is answered and counted.
	eventually(t, func() bool {
		g := gather(t, reg)
		v, _ := g.Value(inUse, "function", "block")
		ok, _ := g.Value(invocationsTotal, "function", "block", "outcome", runner.OutcomeOK)
		return v == 0 && ok == 2
	}, "block's invocations are not counted answered, their slots freed")

	// A function no longer served leaves the output; the others keep
	// their counts.
	if err := r.SetFunctions(context.Background(), functionsOf(t, `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true}
`, fns)); err != nil {
		t.Fatal(err)
	}
	g = gather(t, reg)
	for _, name := range []string{invocationsTotal, durationHist, inUse, limit} {
		for _, m := range g[name].GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "function" && lp.GetValue() != "ping" {
					t.Errorf("%s has function %q, no longer served", name, lp.GetValue())
				}
			}
		}
	}
	g.Want(t, 3, invocationsTotal, "function", "ping", "outcome", runner.OutcomeOK)
}

// TestMetricsAsyncCalls: asynchronous calls count as invocations, and
// as calls taken and settled, by result.
func TestMetricsAsyncCalls(t *testing.T) {
	e := newAsyncEnv(t)
	r := e.startAsyncRunner(t, `version: 1
functions:
  echo: {handler: {builtin: echo}, public: true}
  panic: {handler: {builtin: panic}, public: true, async: {max_deliver: 2, backoff: [0s]}}
  ping: {handler: {builtin: ping}, public: true, async: {enabled: false}}
`, functionstest.Builtins(nil), nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.Collector())

	e.wait(t, e.submit(t, "echo", nil, "hi"), calls.Succeeded)
	e.wait(t, e.submit(t, "panic", nil, ""), calls.Failed)
	const taken, settled = "shoal_runner_async_calls_taken_total", "shoal_runner_async_calls_settled_total"
	// The record is written before the call is acknowledged and counted.
	eventually(t, func() bool {
		v, _ := gather(t, reg).Value(settled, "function", "panic", "result", calls.SettledFailed)
		return v == 1
	}, "panic's call is not counted as failed")
	eventually(t, func() bool {
		v, _ := gather(t, reg).Value(settled, "function", "echo", "result", calls.SettledSucceeded)
		return v == 1
	}, "echo's call is not counted as succeeded")
	g := gather(t, reg)
	g.Want(t, 1, taken, "function", "echo")
	g.Want(t, 2, taken, "function", "panic")
	g.Want(t, 1, settled, "function", "panic", "result", calls.SettledRetried)
	for _, res := range []string{calls.SettledRetried, calls.SettledFailed, calls.SettledInterrupted, calls.SettledHandedBack} {
		g.Want(t, 0, settled, "function", "echo", "result", res)
	}
	g.Want(t, 1, invocationsTotal, "function", "echo", "outcome", runner.OutcomeOK)
	g.Want(t, 2, invocationsTotal, "function", "panic", "outcome", runner.OutcomePanic)
	g.Want(t, 2, durationHist, "function", "panic")
	if _, ok := g.Value(taken, "function", "ping"); ok {
		t.Error("ping takes no asynchronous calls, yet has a count of calls taken")
	}
}
