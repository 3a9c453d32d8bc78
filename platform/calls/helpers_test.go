package calls_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/calls"
)

// env is a NATS server with the calls' streams and bucket set up, and a
// client of its own (the gateway's side).
type env struct {
	s  *broker.Server
	js jetstream.JetStream
	q  *calls.Queue
	// ctx bounds the test.
	ctx context.Context
}

// setup starts a NATS server and sets the calls up on it with limits l.
func setup(t *testing.T, l calls.Limits) *env {
	t.Helper()
	s := brokertest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	e := &env{s: s, js: newJS(t, s), ctx: ctx}
	if err := calls.Setup(ctx, e.js, l); err != nil {
		t.Fatal(err)
	}
	e.q = calls.NewQueue(e.js)
	return e
}

// newJS opens a JetStream client on a connection of its own: another
// process.
func newJS(t *testing.T, s *broker.Server) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(brokertest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// submit submits a call of function with body, as a gateway would.
func (e *env) submit(t *testing.T, function, body string, opts ...func(*calls.Submission)) *calls.Submitted {
	t.Helper()
	msg := nats.NewMsg("")
	msg.Header.Set("Shoal-Method", "POST")
	msg.Data = []byte(body)
	s := calls.Submission{Function: function, Msg: msg}
	for _, o := range opts {
		o(&s)
	}
	sub, err := e.q.Submit(e.ctx, s)
	if err != nil || sub == nil {
		t.Fatalf("submit a call of %s: %+v, %v", function, sub, err)
	}
	return sub
}

// streamMsgs is how many messages stream holds.
func (e *env) streamMsgs(t *testing.T, stream string) uint64 {
	t.Helper()
	s, err := e.js.Stream(e.ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// waitFor polls cond every 10 ms for at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitStatus polls the record of call id until it has status st, and
// returns it.
func (e *env) waitStatus(t *testing.T, id string, st calls.Status) *calls.Record {
	t.Helper()
	var rec *calls.Record
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err = e.q.Get(e.ctx, id)
		if err == nil && rec.Status == st {
			return rec
		}
		if time.Now().After(deadline) {
			t.Fatalf("call %s: record %+v (error %v), want status %s", id, rec, err, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// worker runs a calls.Worker for one function in the test, with an
// exec the test controls and a concurrency of 4.
type worker struct {
	w *calls.Worker
	// runs counts exec's calls; inflight the calls taken and not settled.
	runs     atomic.Int64
	inflight atomic.Int64
}

const concurrency = 4

// startWorker pulls the calls of function name with a Worker on a
// connection of its own and runs each with exec, until the test ends.
func startWorker(t *testing.T, s *broker.Server, name string, async manifest.Async, ackWait time.Duration,
	exec func(*calls.Call) calls.Result) *worker {
	t.Helper()
	w := &worker{w: calls.NewWorker(newJS(t, s), calls.WorkerConfig{Runner: "runner-1", AckWait: ackWait})}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wake := make(chan struct{}, 1)
	free := func() int { return concurrency - int(w.inflight.Load()) }
	handle := func(c *calls.Call) {
		w.inflight.Add(1)
		wg.Go(func() {
			defer func() {
				w.inflight.Add(-1)
				select {
				case wake <- struct{}{}:
				default:
				}
			}()
			w.w.Run(c, async, func() calls.Result {
				w.runs.Add(1)
				return exec(c)
			})
		})
	}
	wg.Go(func() { w.w.Pull(ctx, name, free, wake, handle) })
	// Before the connection closes (cleanups run last-registered first).
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return w
}

// ok is a successful exec.
func ok(*calls.Call) calls.Result {
	return calls.Result{Status: 200, Header: map[string][]string{"Content-Type": {"text/plain"}}, Body: []byte("done")}
}

// deadLetter returns the dead letter of call id, if listed.
func (e *env) deadLetter(t *testing.T, id string) (calls.DeadLetter, bool) {
	t.Helper()
	dls, err := calls.DeadLetters(e.ctx, e.js, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dls {
		if d.ID == id {
			return d, true
		}
	}
	return calls.DeadLetter{}, false
}

// results subscribes to the results of function name.
func results(t *testing.T, s *broker.Server, name string) *nats.Subscription {
	t.Helper()
	nc := brokertest.Connect(t, s)
	sub, err := nc.SubscribeSync(calls.ResultSubject(name))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

// nextResult returns the next result published, within 10 s.
func nextResult(t *testing.T, sub *nats.Subscription) *nats.Msg {
	t.Helper()
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("result on %s: %v", sub.Subject, err)
	}
	return m
}

// isNotFound reports whether err says no record.
func isNotFound(err error) bool { return errors.Is(err, calls.ErrNotFound) }

// nats0 is an empty invocation message.
func nats0() *nats.Msg { return nats.NewMsg("") }
