package calls_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/calls"
)

// lostAckJS stores the first publish but reports it timed out, as a
// publish whose acknowledgement is lost (a leader change, a slow fsync)
// does.
type lostAckJS struct {
	jetstream.JetStream
	n atomic.Int32
}

func (j *lostAckJS) PublishMsg(ctx context.Context, m *nats.Msg, o ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ack, err := j.JetStream.PublishMsg(ctx, m, o...)
	if j.n.Add(1) == 1 && err == nil {
		return nil, context.DeadlineExceeded
	}
	return ack, err
}

// TestSubmitAfterLostAck: a submission whose first attempt was stored but
// not acknowledged is tried again, and the duplicate that answers is its
// own first attempt: a new call, recorded as queued, stored once.
func TestSubmitAfterLostAck(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	q := calls.NewQueue(&lostAckJS{JetStream: e.js})
	sub, err := q.Submit(e.ctx, calls.Submission{Function: "f", Msg: nats0()})
	if err != nil {
		t.Fatal(err)
	}
	if sub.Duplicate {
		t.Errorf("a new call was answered as a duplicate: %+v", sub)
	}
	if rec, err := q.Get(e.ctx, sub.ID); err != nil || rec.Status != calls.Queued {
		t.Errorf("record of the new call: %+v, %v; want queued", rec, err)
	}
	if n := e.streamMsgs(t, calls.Stream); n != 1 {
		t.Errorf("%d messages in the stream, want 1", n)
	}
}

// TestRedeliveryOfSettledCall: a runner that recorded a call's outcome
// and died before its acknowledgement reached the server leaves the call
// to be delivered again, past max_deliver here; the next runner finds it
// settled and acknowledges it, instead of dead-lettering a call that
// succeeded.
func TestRedeliveryOfSettledCall(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	async := manifest.Async{MaxDeliver: 1}
	dead := calls.NewWorker(newJS(t, e.s), calls.WorkerConfig{Runner: "dead", AckWait: time.Second})
	cons, err := dead.Consumer(e.ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	sub := e.submit(t, "f", "x")
	seq := takeUnacked(t, cons) // run and recorded below; never acknowledged
	kv, err := e.js.KeyValue(e.ctx, calls.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	settled := `{"id":"` + sub.ID + `","function":"f","status":"succeeded","attempts":1,"max_attempts":1,"seq":` + itoa(seq) + `,"response":{"status":200}}`
	if _, err := kv.Put(e.ctx, sub.ID, []byte(settled)); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, e.s, "f", async, time.Second, ok)
	// Redelivered after the dead runner's ack wait, then acknowledged.
	for deadline := time.Now().Add(10 * time.Second); e.streamMsgs(t, calls.Stream) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the settled call was never acknowledged")
		}
	}
	rec, err := e.q.Get(e.ctx, sub.ID)
	if err != nil || rec.Status != calls.Succeeded || rec.Runner != "" {
		t.Errorf("record = %+v, %v; want the dead runner's succeeded record, untouched", rec, err)
	}
	if _, dl := e.deadLetter(t, sub.ID); dl {
		t.Error("a succeeded call was dead-lettered")
	}
	if n := w.runs.Load(); n != 0 {
		t.Errorf("the settled call ran %d more times", n)
	}
}

// TestClientIDFromMsgID: a NATS client that names its call only with
// Nats-Msg-Id, set to the filed id (n.c1) as docs/nats-api.md says, has it
// filed as n.c1, not n.n.c1.
func TestClientIDFromMsgID(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	m := nats.NewMsg(calls.ClientSubject("f"))
	m.Header.Set(calls.HeaderMsgID, "n.c1")
	if _, err := e.js.PublishMsg(e.ctx, m); err != nil {
		t.Fatal(err)
	}
	startWorker(t, e.s, "f", manifest.Async{}, time.Second, ok)
	e.waitStatus(t, "n.c1", calls.Succeeded)
}

// takeUnacked takes the next call from cons, as a runner that will die
// before acknowledging it, and returns its stream sequence.
func takeUnacked(t *testing.T, cons jetstream.Consumer) uint64 {
	t.Helper()
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var seq uint64
	for m := range batch.Messages() {
		meta, err := m.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		seq = meta.Sequence.Stream
	}
	if seq == 0 {
		t.Fatal("the dead runner received no call")
	}
	return seq
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestRedeliveryQueuesPendingCallback: a runner that recorded a call's
// outcome and died before queueing its callback leaves the call to be
// delivered again; the next runner queues the callback before it
// acknowledges the call, so the callback is not lost.
func TestRedeliveryQueuesPendingCallback(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	dead := calls.NewWorker(newJS(t, e.s), calls.WorkerConfig{Runner: "dead", AckWait: time.Second})
	cons, err := dead.Consumer(e.ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	sub := e.submit(t, "f", "x", func(s *calls.Submission) { s.Callback = "https://hooks.example.com/done" })
	seq := takeUnacked(t, cons)
	kv, err := e.js.KeyValue(e.ctx, calls.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	settled := `{"id":"` + sub.ID + `","function":"f","status":"succeeded","attempts":1,"seq":` + itoa(seq) +
		`,"response":{"status":200},"callback":{"url":"https://hooks.example.com/done","state":"pending"}}`
	if _, err := kv.Put(e.ctx, sub.ID, []byte(settled)); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, e.s, "f", manifest.Async{}, time.Second, ok)
	for deadline := time.Now().Add(10 * time.Second); e.streamMsgs(t, calls.Stream) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the settled call was never acknowledged")
		}
	}
	if n := e.streamMsgs(t, calls.CallbackStream); n != 1 {
		t.Errorf("%d callbacks queued, want 1", n)
	}
	if n := w.runs.Load(); n != 0 {
		t.Errorf("the settled call ran %d more times", n)
	}
}

// TestCurrentLimitsPartialSetup: limits are read from what a setup cut
// short (or a deleted stream) left, so that deploy's Setup can recreate
// the rest with the defaults.
func TestCurrentLimitsPartialSetup(t *testing.T) {
	l := calls.DefaultLimits()
	l.MaxQueued = 42
	e := setup(t, l)
	if err := e.js.DeleteStream(e.ctx, calls.DLQStream); err != nil {
		t.Fatal(err)
	}
	cur, ok, err := calls.CurrentLimits(e.ctx, e.js)
	if err != nil || !ok {
		t.Fatalf("CurrentLimits = %v, %v", ok, err)
	}
	if cur.MaxQueued != 42 || cur.DLQMaxAge != calls.DefaultLimits().DLQMaxAge {
		t.Errorf("limits = %+v, want max queued 42 and the default dead-letter age", cur)
	}
	if err := calls.Setup(e.ctx, e.js, cur); err != nil {
		t.Fatalf("Setup with the limits read: %v", err)
	}
	if _, err := e.js.Stream(e.ctx, calls.DLQStream); err != nil {
		t.Errorf("the dead-letter stream was not recreated: %v", err)
	}
}

// TestClientStreamIsolated: NATS clients' calls live in a stream of their
// own. Clients filling it (with calls of a function nobody serves) leave
// the gateway's queue its room, and a client that uses a gateway call's
// id as its Nats-Msg-Id cannot make that call look like a duplicate.
func TestClientStreamIsolated(t *testing.T) {
	l := calls.DefaultLimits()
	l.MaxQueued = 3
	e := setup(t, l)
	victim := calls.IdempotentID("f", "alice", "order-42")
	for i := range 3 {
		m := nats.NewMsg(calls.ClientSubject("nobody"))
		m.Header.Set(calls.HeaderMsgID, victim+strconv.Itoa(i))
		if i == 0 {
			m.Header.Set(calls.HeaderMsgID, victim)
		}
		if _, err := e.js.PublishMsg(e.ctx, m); err != nil {
			t.Fatalf("client call %d: %v", i, err)
		}
	}
	if _, err := e.js.PublishMsg(e.ctx, nats.NewMsg(calls.ClientSubject("nobody"))); !errors.Is(calls.PublishError(err), calls.ErrQueueFull) {
		t.Errorf("a 4th client call = %v, want the clients' stream full", err)
	}
	sub, err := e.q.Submit(e.ctx, calls.Submission{Function: "f", Msg: nats0(), IdempotencyKey: "order-42", Principal: "alice"})
	if err != nil || sub.Duplicate || sub.ID != victim {
		t.Fatalf("the gateway's submission with the clients' stream full = %+v, %v; want a new call %s", sub, err, victim)
	}
	if n := e.streamMsgs(t, calls.Stream); n != 1 {
		t.Errorf("%d calls in the gateway's stream, want 1", n)
	}
	startWorker(t, e.s, "f", manifest.Async{}, time.Second, ok)
	e.waitStatus(t, victim, calls.Succeeded)
}
