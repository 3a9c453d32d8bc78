package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
)

// addRunnerWith starts a runner of the platform's manifest that serves
// only the functions fns has handlers for.
func (p *platform) addRunnerWith(t testing.TB, fns map[string]http.Handler) *runner.Runner {
	t.Helper()
	return runnertest.Start(t, p.broker.ClientURL(), runner.Config{Manifest: p.m, Builtins: fns})
}

// outcome is an HTTP request's answer and how long it took; status -1 if
// the request itself failed.
type outcome struct {
	response
	took time.Duration
}

// async sends GET url on its own goroutine.
func async(url string) <-chan outcome {
	done := make(chan outcome, 1)
	go func() {
		start := time.Now()
		resp, err := http.Get(url)
		if err != nil {
			done <- outcome{response: response{status: -1, body: err.Error()}, took: time.Since(start)}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- outcome{response: response{resp.StatusCode, resp.Header, string(b)}, took: time.Since(start)}
	}()
	return done
}

// await waits at most 10 s for an outcome.
func await(t *testing.T, c <-chan outcome) outcome {
	t.Helper()
	select {
	case o := <-c:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("no answer within 10s")
		return outcome{}
	}
}

// wantRunnerLost checks a prompt 502 runner_lost answer. block's timeout
// is the 30 s default: only the report can explain an answer this soon.
func wantRunnerLost(t *testing.T, o outcome) {
	t.Helper()
	if o.took > 2*time.Second {
		t.Errorf("answered after %s; the runner was reported lost at once", o.took)
	}
	var body struct {
		Error struct {
			Code    invocation.Code `json:"code"`
			Message string          `json:"message"`
		} `json:"error"`
	}
	if o.status != 502 || json.Unmarshal([]byte(o.body), &body) != nil || body.Error.Code != invocation.CodeRunnerLost {
		t.Fatalf("answer %d %s, want 502 runner_lost", o.status, o.body)
	}
	if !strings.Contains(body.Error.Message, `"block"`) || o.header.Get("Retry-After") != "" || o.header.Get("Content-Type") != "application/json" {
		t.Errorf("answer %v %s: want the function named, no Retry-After, JSON", o.header, o.body)
	}
}

// watchAcks returns a function that waits until the runner with the
// given id has acked an invocation. A runner acks only an invocation
// still running after its ack delay; the tests that report a runner
// lost while it runs one wait for its ack first, as the ack is what lets
// the gateway answer at once.
func watchAcks(t *testing.T, p *platform) func(runner string) {
	t.Helper()
	nc := brokertest.Connect(t, p.broker)
	sub, err := nc.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return func(runner string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			m, err := sub.NextMsg(time.Until(deadline))
			if err != nil {
				t.Fatalf("no ack from runner %s: %v", runner, err)
			}
			if id, ok := invocation.ReadAck(m); ok && id == runner {
				return
			}
		}
	}
}

// TestRunnerLost: once told a runner is gone, the gateway answers the
// invocations that runner took 502 at once; invocations on other runners
// carry on, later ones succeed, and the lost runner's acks fail their
// invocations from then on.
func TestRunnerLost(t *testing.T) {
	p := start(t, options{acks: true, runners: -1})
	acked := watchAcks(t, p)
	blockA, blockB := functionstest.NewBlock(), functionstest.NewBlock()
	// A's ack delay (100ms) is well above a quick answer's time even on a
	// loaded machine, and below the sleep of 250ms it must ack.
	a := runnertest.Start(t, p.broker.ClientURL(), runner.Config{Manifest: p.m, AckDelay: 100 * time.Millisecond,
		Builtins: map[string]http.Handler{"block": blockA, "sleep": p.fns["sleep"]}})
	b := p.addRunnerWith(t, functionstest.Builtins(map[string]http.Handler{"orphan": blockB}))
	// Let the functions go before the runners drain at the test's end.
	releaseA, releaseB := once(func() { close(blockA.Release) }), once(func() { close(blockB.Release) })
	defer releaseA()
	defer releaseB()

	onA := async(p.url + "/function/block")
	<-blockA.Started
	acked(a.ID())
	onB := async(p.url + "/function/orphan")
	<-blockB.Started

	if n := p.gateway.RunnerLost(a.ID()); n > 1 {
		t.Errorf("RunnerLost failed %d invocations, want the one A runs (or none, if A's ack was still on its way to the gateway)", n)
	}
	wantRunnerLost(t, await(t, onA))
	if n := p.gateway.RunnerLost("no-such-runner"); n != 0 {
		t.Errorf("RunnerLost of an unknown runner failed %d invocations", n)
	}

	select {
	case o := <-onB:
		t.Fatalf("the invocation on the other runner ended with A's loss: %d %s", o.status, o.body)
	case <-time.After(100 * time.Millisecond):
	}
	releaseB()
	if o := await(t, onB); o.status != 200 || o.body != "released" {
		t.Errorf("invocation on the other runner = %d %s, want 200 released", o.status, o.body)
	}
	for _, fn := range []string{"ping", "orphan"} {
		if o := await(t, async(p.url+"/function/"+fn)); o.status != 200 {
			t.Errorf("%s after the loss = %d %s", fn, o.status, o.body)
		}
	}

	// A was reported lost although it still runs here: its late answer is
	// dropped, and the invocations it acks from now on fail at once (as
	// does one whose ack arrives after the report); a quick one, answered
	// before any ack, gets its answer.
	releaseA()
	if o := await(t, async(p.url+"/function/block")); o.status != 200 || o.body != "released" {
		t.Errorf("quick invocation on the lost runner = %d %s, want its answer", o.status, o.body)
	}
	if err := b.Stop(context.Background()); err != nil { // sleep is A's alone now
		t.Fatal(err)
	}
	o := await(t, async(p.url+"/function/sleep?d=250ms"))
	if o.status != 502 || !strings.Contains(o.body, string(invocation.CodeRunnerLost)) || o.took >= 250*time.Millisecond {
		t.Errorf("acked invocation on the lost runner = %d %s after %s, want 502 runner_lost at its ack", o.status, o.body, o.took)
	}
}

// once returns a function that calls f the first time only.
func once(f func()) func() {
	var done atomic.Bool
	return func() {
		if done.CompareAndSwap(false, true) {
			f()
		}
	}
}

// TestRunnerConnectionCut: a runner whose connection is cut while it runs
// an invocation (its process died) never answers; reported lost, its
// invocation is answered 502 at once, and the next ones go to the live
// runner.
func TestRunnerConnectionCut(t *testing.T) {
	p := start(t, options{acks: true, runners: -1})
	acked := watchAcks(t, p)
	blockA, blockB := functionstest.NewBlock(), functionstest.NewBlock()
	defer close(blockA.Release)
	nc := brokertest.Connect(t, p.broker)
	a, err := runner.Start(nc, runner.Config{Manifest: p.m, Builtins: map[string]http.Handler{"block": blockA}})
	if err != nil {
		t.Fatal(err)
	}
	onA := async(p.url + "/function/block")
	<-blockA.Started
	acked(a.ID())
	p.addRunnerWith(t, map[string]http.Handler{"block": blockB})
	close(blockB.Release) // B answers at once

	nc.Close()
	select {
	case o := <-onA:
		t.Fatalf("answered %d %s before the loss was reported", o.status, o.body)
	case <-time.After(100 * time.Millisecond):
	}
	p.gateway.RunnerLost(a.ID())
	wantRunnerLost(t, await(t, onA))

	for range 5 {
		if o := await(t, async(p.url+"/function/block")); o.status != 200 || o.body != "released" {
			t.Errorf("after the loss: %d %s, want the live runner's 200 released", o.status, o.body)
		}
	}
}

// TestRunnerLostWithoutAcks: without acks the gateway does not know which
// runner took what; RunnerLost does nothing.
func TestRunnerLostWithoutAcks(t *testing.T) {
	p := start(t, options{})
	on := async(p.url + "/function/block")
	<-p.block.Started
	if n := p.gateway.RunnerLost("any"); n != 0 {
		t.Errorf("RunnerLost without acks failed %d invocations", n)
	}
	close(p.block.Release)
	p.released = true
	if o := await(t, on); o.status != 200 {
		t.Errorf("invocation = %d %s, want 200", o.status, o.body)
	}
}

// TestOverloadRetry: a refusal as overloaded is sent again, twice at most,
// with acks or without, and each attempt has a reply subject of its own.
func TestOverloadRetry(t *testing.T) { ackModes(t, testOverloadRetry) }

func testOverloadRetry(t *testing.T, acks bool) {
	p := start(t, options{acks: acks})
	// The only responder for silent: it refuses the first `refusals`
	// attempts of each invocation, then acks when asked and answers.
	nc := brokertest.Connect(t, p.broker)
	var attempts, refusals, asked atomic.Int64
	var lastReply atomic.Value
	_, err := nc.QueueSubscribe(invocation.Subject("silent"), invocation.QueueGroup, func(m *nats.Msg) {
		if prev, _ := lastReply.Swap(m.Reply).(string); prev == m.Reply {
			t.Errorf("two attempts on one reply subject %s", m.Reply)
		}
		if invocation.WantsAck(m.Header) {
			asked.Add(1)
		}
		if attempts.Add(1) <= refusals.Load() {
			overloaded := invocation.Errorf(429, invocation.CodeOverloaded, "full")
			_ = nc.PublishMsg(overloaded.Msg(m.Reply))
			return
		}
		if invocation.WantsAck(m.Header) {
			_ = nc.PublishMsg(invocation.NewAckMsg(m.Reply, "fake"))
		}
		_ = nc.PublishMsg(invocation.NewResponseMsg(m.Reply, 200, nil, []byte("served")))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		refusals int64
		status   int
	}{
		{0, 200},
		{2, 200}, // the third attempt is served
		{3, 429}, // no fourth attempt
	}
	for _, tt := range tests {
		attempts.Store(0)
		asked.Store(0)
		refusals.Store(tt.refusals)
		o := await(t, async(p.url+"/function/silent"))
		if o.status != tt.status {
			t.Errorf("%d refusals: %d %s, want %d", tt.refusals, o.status, o.body, tt.status)
		}
		wantAttempts := min(tt.refusals+1, 3)
		if n := attempts.Load(); n != wantAttempts {
			t.Errorf("%d refusals: %d attempts, want %d", tt.refusals, n, wantAttempts)
		}
		wantAsked := int64(0)
		if acks {
			wantAsked = wantAttempts
		}
		if asked.Load() != wantAsked {
			t.Errorf("%d refusals: %d attempts asked for an ack, want %d", tt.refusals, asked.Load(), wantAsked)
		}
	}
}

// TestGatewayConnectionCloses: invocations in flight when the gateway's
// NATS connection closes are answered 503 at once.
func TestGatewayConnectionCloses(t *testing.T) { ackModes(t, testGatewayConnectionCloses) }

func testGatewayConnectionCloses(t *testing.T, acks bool) {
	p := start(t, options{acks: acks})
	on := async(p.url + "/function/block")
	<-p.block.Started
	p.nc.Close()
	o := await(t, on)
	if o.status != 503 || !strings.Contains(o.body, string(invocation.CodeUnavailable)) || o.took > 2*time.Second {
		t.Errorf("after the connection closed: %d %s after %s, want 503 unavailable at once", o.status, o.body, o.took)
	}
}

// TestPlainCallersGetOneReply: beside a gateway with acks on, a NATS
// caller that does not ask for acks gets its answer alone.
func TestPlainCallersGetOneReply(t *testing.T) {
	p := start(t, options{acks: true})
	nc := brokertest.Connect(t, p.broker)
	sub, err := nc.SubscribeSync(nc.NewInbox())
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest(invocation.Subject("ping"), sub.Subject, nil); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "pong!" {
		t.Fatalf("first message: %v, want pong!", err)
	}
	if m, err := sub.NextMsg(200 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Errorf("a second message came: %v %q (%v)", m.Header, m.Data, err)
	}
	// The gateway, meanwhile, gets acks.
	if o := await(t, async(p.url+"/function/ping")); o.status != 200 || o.body != "pong!" {
		t.Errorf("through the gateway: %d %s", o.status, o.body)
	}
}

// TestRunnerLostBeforeItsAck: an invocation that reached a runner which
// died before its ack went out is answered runner_lost once the grace for
// acks has passed, not at its timeout; an invocation acked by a live
// runner in the meantime is not.
func TestRunnerLostBeforeItsAck(t *testing.T) {
	p := start(t, options{acks: true, runners: -1})
	// The only responder for orphan (timeout 10 s) takes invocations and never acks or
	// answers them: a runner that died at once.
	nc := brokertest.Connect(t, p.broker)
	took := make(chan struct{}, 1)
	if _, err := nc.QueueSubscribe(invocation.Subject("orphan"), invocation.QueueGroup, func(*nats.Msg) { took <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	p.addRunnerWith(t, map[string]http.Handler{"block": p.block})
	lostOne := async(p.url + "/function/orphan")
	<-took
	live := async(p.url + "/function/block")
	<-p.block.Started
	reported := time.Now()
	p.gateway.RunnerLost("the-silent-one")
	o := await(t, lostOne)
	if o.status != 502 || !strings.Contains(o.body, string(invocation.CodeRunnerLost)) || !strings.Contains(o.body, "may or may not have run") {
		t.Fatalf("unacknowledged invocation = %d %s, want 502 runner_lost", o.status, o.body)
	}
	if since := time.Since(reported); since < 1900*time.Millisecond || since > 6*time.Second {
		t.Errorf("answered %s after the report, want about the 2 s grace", since)
	}
	close(p.block.Release)
	p.released = true
	if o := await(t, live); o.status != 200 {
		t.Errorf("acked invocation on a live runner = %d %s, want 200", o.status, o.body)
	}
}
