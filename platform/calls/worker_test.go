package calls_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/calls"
)

// setUp starts a NATS server with the calls' streams and bucket.
func setUp(t testing.TB) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(brokertest.Connect(t, brokertest.Start(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := calls.Setup(t.Context(), js, calls.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	return js
}

// TestSettleKeepsTheAckDeadline: a call whose settling takes longer than
// the ack wait (here its callback cannot be queued: the callbacks stream
// is gone) is not delivered again meanwhile, which would run it twice;
// once it settles, it runs no more.
func TestSettleKeepsTheAckDeadline(t *testing.T) {
	js := setUp(t)
	ctx := t.Context()
	if err := js.DeleteStream(ctx, calls.CallbackStream); err != nil {
		t.Fatal(err)
	}
	sub, err := calls.NewQueue(js).Submit(ctx, calls.Submission{Function: "f", Msg: &nats.Msg{Header: nats.Header{}}, Callback: "https://hooks.example.com/x"})
	if err != nil {
		t.Fatal(err)
	}
	const ackWait = time.Second
	w := calls.NewWorker(js, calls.WorkerConfig{AckWait: ackWait})
	var runs atomic.Int64
	var running sync.WaitGroup
	pctx, stop := context.WithCancel(context.Background())
	var pulling sync.WaitGroup
	pulling.Go(func() {
		w.Pull(pctx, "f", func() int { return 4 }, nil, func(c *calls.Call) {
			running.Go(func() {
				w.Run(c, manifest.Async{}, func() calls.Result {
					runs.Add(1)
					return calls.Result{Status: 200}
				})
			})
		})
	})
	defer func() { stop(); pulling.Wait(); running.Wait() }()

	// Three ack waits while the first attempt tries to settle.
	time.Sleep(3 * ackWait)
	if n := runs.Load(); n != 1 {
		t.Errorf("the call ran %d times while its first attempt was settling, want 1", n)
	}
	// The callbacks stream is back: the attempt settles.
	if err := calls.Setup(ctx, js, calls.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	q := calls.NewQueue(js)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		rec, err := q.Get(ctx, sub.ID)
		if err == nil && rec.Status == calls.Succeeded {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the call did not settle within 10s of its callbacks stream coming back: %+v %v", rec, err)
		}
	}
	time.Sleep(2 * ackWait)
	if n := runs.Load(); n != 1 {
		t.Errorf("the call ran %d times, want 1", n)
	}
}
