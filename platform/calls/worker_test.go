package calls_test

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/calls"
)

// TestWorkerSucceeds: a call runs once with its request, and its result
// is recorded, published and acknowledged.
func TestWorkerSucceeds(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	res := results(t, e.s, "f")
	seen := make(chan *calls.Call, 1)
	w := startWorker(t, e.s, "f", manifest.Async{}, 0, func(c *calls.Call) calls.Result {
		seen <- c
		return ok(c)
	})
	sub := e.submit(t, "f", "the body")
	rec := e.waitStatus(t, sub.ID, calls.Succeeded)

	c := <-seen
	if c.ID != sub.ID || c.Function != "f" || c.Attempt != 1 || string(c.Data) != "the body" || c.Header.Get("Shoal-Method") != "POST" {
		t.Errorf("exec saw call %+v", c)
	}
	if d := c.Submitted.Sub(rec.SubmittedAt); d < -time.Second || d > time.Second {
		t.Errorf("call submitted at %s, record says %s", c.Submitted, rec.SubmittedAt)
	}
	if rec.Attempts != 1 || rec.MaxAttempts != manifest.DefaultMaxDeliver || rec.Runner != "runner-1" || rec.Error != nil ||
		rec.StartedAt.IsZero() || rec.FinishedAt.Before(rec.StartedAt) {
		t.Errorf("record = %+v", rec)
	}
	if rec.Response == nil || rec.Response.Status != 200 || string(rec.Response.Body) != "done" || rec.Response.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("response = %+v", rec.Response)
	}
	m := nextResult(t, res)
	if m.Header.Get(calls.HeaderCallID) != sub.ID || m.Header.Get(calls.HeaderCallStatus) != string(calls.Succeeded) ||
		m.Header.Get(calls.HeaderAttempts) != "1" || m.Header.Get(invocation.HeaderStatus) != "200" || string(m.Data) != "done" {
		t.Errorf("result message: %v %q", m.Header, m.Data)
	}
	waitFor(t, "the call to leave the stream", func() bool { return e.streamMsgs(t, calls.Stream) == 0 })
	if n := w.runs.Load(); n != 1 {
		t.Errorf("%d runs, want 1", n)
	}
}

// TestWorkerRetries pins down which results are retried, and that a call
// gets exactly max_deliver attempts before it is dead-lettered.
func TestWorkerRetries(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	tests := []struct {
		name     string
		result   calls.Result
		attempts int // attempts made, of 3
		code     invocation.Code
	}{
		{"500 is retried", calls.Result{Status: 500, Body: []byte("oops")}, 3, "function_error"},
		{"503 unavailable is retried", calls.Result{Err: invocation.Errorf(503, invocation.CodeUnavailable, "runner stopping")}, 3, invocation.CodeUnavailable},
		{"timeout is retried", calls.Result{Err: invocation.Errorf(504, invocation.CodeTimeout, "too slow")}, 3, invocation.CodeTimeout},
		{"429 is retried", calls.Result{Status: 429}, 3, "function_error"},
		{"408 is retried", calls.Result{Status: 408}, 3, "function_error"},
		{"400 is not", calls.Result{Status: 400, Body: []byte(`{"error":{"code":"bad_input","message":"no"}}`)}, 1, "bad_input"},
		{"401 from the token check is not", calls.Result{Err: invocation.Errorf(401, invocation.CodeInvalidToken, "expired")}, 1, invocation.CodeInvalidToken},
		{"404 is not", calls.Result{Status: 404}, 1, "function_error"},
	}
	async := manifest.Async{MaxDeliver: 3, Backoff: []time.Duration{0}}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			name := "f" + strconv.Itoa(i)
			res := results(t, e.s, name)
			w := startWorker(t, e.s, name, async, 0, func(*calls.Call) calls.Result { return tt.result })
			sub := e.submit(t, name, "x")
			rec := e.waitStatus(t, sub.ID, calls.Failed)
			if rec.Attempts != tt.attempts || rec.MaxAttempts != 3 || rec.Error == nil || rec.Error.Code != tt.code || rec.FinishedAt.IsZero() {
				t.Errorf("record = %+v (error %+v), want failed after %d attempts with %s", rec, rec.Error, tt.attempts, tt.code)
			}
			if tt.result.Err == nil && (rec.Response == nil || rec.Response.Status != tt.result.Status) {
				t.Errorf("response = %+v, want the function's %d", rec.Response, tt.result.Status)
			}
			d, found := e.deadLetter(t, sub.ID)
			if !found || d.Function != name || d.Attempts != tt.attempts || d.Error.Code != tt.code || d.Size != 1 || d.FailedAt.IsZero() {
				t.Errorf("dead letter = %+v (found %v)", d, found)
			}
			m := nextResult(t, res)
			if m.Header.Get(calls.HeaderCallID) != sub.ID || m.Header.Get(calls.HeaderCallStatus) != string(calls.Failed) ||
				m.Header.Get(calls.HeaderAttempts) != strconv.Itoa(tt.attempts) {
				t.Errorf("result message: %v %q", m.Header, m.Data)
			}
			// Settled: nothing more is delivered.
			if n := w.runs.Load(); n != int64(tt.attempts) {
				t.Errorf("%d runs, want %d", n, tt.attempts)
			}
		})
	}
	t.Run("nothing is left queued", func(t *testing.T) {
		waitFor(t, "the calls stream to empty", func() bool { return e.streamMsgs(t, calls.Stream) == 0 })
	})
}

// TestWorkerBackoff: a failed attempt is recorded as queued with its
// error and the time of the next attempt, which waits for the back-off;
// a later success is recorded with the attempts it took.
func TestWorkerBackoff(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	const delay = 400 * time.Millisecond
	var mu sync.Mutex
	var starts []time.Time
	w := startWorker(t, e.s, "f", manifest.Async{MaxDeliver: 3, Backoff: []time.Duration{delay}}, 0, func(c *calls.Call) calls.Result {
		mu.Lock()
		defer mu.Unlock()
		starts = append(starts, time.Now())
		if c.Attempt == 1 {
			return calls.Result{Status: 502}
		}
		return ok(c)
	})
	sub := e.submit(t, "f", "x")
	var rec *calls.Record
	waitFor(t, "the failed first attempt to be recorded", func() bool {
		var err error
		rec, err = e.q.Get(e.ctx, sub.ID)
		return err == nil && rec.Attempts == 1 && rec.Status == calls.Queued && rec.Error != nil
	})
	if !strings.Contains(rec.Error.Message, "502") || rec.NextAttemptAt.Sub(rec.StartedAt) < delay || !rec.FinishedAt.IsZero() {
		t.Errorf("record between attempts = %+v (error %+v)", rec, rec.Error)
	}
	rec = e.waitStatus(t, sub.ID, calls.Succeeded)
	if rec.Attempts != 2 || rec.Error != nil || string(rec.Response.Body) != "done" {
		t.Errorf("record = %+v", rec)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(starts) != 2 || w.runs.Load() != 2 {
		t.Fatalf("%d runs, want 2", len(starts))
	}
	if gap := starts[1].Sub(starts[0]); gap < delay {
		t.Errorf("second attempt %s after the first; the back-off is %s", gap, delay)
	}
}

// TestWorkerRunnerLost: a call whose runner died (took it, never
// acknowledged it) is taken up again once the ack wait has passed: run
// by another runner if it has attempts left, else dead-lettered without
// running.
func TestWorkerRunnerLost(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	const ackWait = time.Second
	tests := []struct {
		name       string
		maxDeliver int
		status     calls.Status
		runs       int64
	}{
		{"attempts left: it runs again", 2, calls.Succeeded, 1},
		{"no attempts left: dead-lettered", 1, calls.Failed, 0},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			name := "f" + strconv.Itoa(i)
			dying := calls.NewWorker(newJS(t, e.s), calls.WorkerConfig{AckWait: ackWait})
			cons, err := dying.Consumer(e.ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			sub := e.submit(t, name, "x")
			batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			taken := 0
			for range batch.Messages() {
				taken++ // and never acknowledged: the runner died
			}
			if taken != 1 {
				t.Fatalf("the dying runner took %d calls, want 1", taken)
			}

			start := time.Now()
			w := startWorker(t, e.s, name, manifest.Async{MaxDeliver: tt.maxDeliver}, ackWait, ok)
			rec := e.waitStatus(t, sub.ID, tt.status)
			if took := time.Since(start); took > 5*ackWait {
				t.Errorf("taken up again after %s; the ack wait is %s", took, ackWait)
			}
			if n := w.runs.Load(); n != tt.runs {
				t.Errorf("the call ran %d times after its runner died, want %d", n, tt.runs)
			}
			waitFor(t, "the call to leave the stream", func() bool {
				info, err := cons.Info(e.ctx)
				return err == nil && info.NumPending == 0 && info.NumAckPending == 0
			})
			if tt.status == calls.Succeeded {
				if rec.Attempts != 2 || string(rec.Response.Body) != "done" {
					t.Errorf("record = %+v, want succeeded at attempt 2", rec)
				}
				return
			}
			if rec.Error == nil || rec.Error.Code != invocation.CodeRunnerLost || rec.Response != nil || !rec.StartedAt.IsZero() {
				t.Errorf("record = %+v (error %+v), want runner_lost, never started here", rec, rec.Error)
			}
			if rec.Attempts != 1 || rec.MaxAttempts != 1 {
				t.Errorf("record says %d attempts of %d; one attempt was made", rec.Attempts, rec.MaxAttempts)
			}
			d, found := e.deadLetter(t, sub.ID)
			if !found || d.Error.Code != invocation.CodeRunnerLost || d.Error.Status != http.StatusBadGateway || d.Attempts != 1 {
				t.Errorf("dead letter = %+v (error %+v, found %v)", d, d.Error, found)
			}
		})
	}
}

// TestWorkerHeartbeat: a call running for several ack waits is not given
// to another runner meanwhile.
func TestWorkerHeartbeat(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	const ackWait = time.Second
	w := startWorker(t, e.s, "f", manifest.Async{}, ackWait, func(c *calls.Call) calls.Result {
		time.Sleep(2*ackWait + 500*time.Millisecond)
		return ok(c)
	})
	sub := e.submit(t, "f", "x")
	if rec := e.waitStatus(t, sub.ID, calls.Running); rec.Attempts != 1 {
		t.Errorf("running record = %+v", rec)
	}
	rec := e.waitStatus(t, sub.ID, calls.Succeeded)
	if n := w.runs.Load(); n != 1 || rec.Attempts != 1 {
		t.Errorf("a call running past its ack wait ran %d times (record: %d attempts), want once", n, rec.Attempts)
	}
}

// TestDeadLetters: a dead-lettered call is listed, re-driven under its
// id with attempts afresh (and its submission time), or discarded.
func TestDeadLetters(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	var fail atomic.Bool
	fail.Store(true)
	var mu sync.Mutex
	submitted := map[string][]time.Time{}
	w := startWorker(t, e.s, "f", manifest.Async{MaxDeliver: 2, Backoff: []time.Duration{0}}, 0, func(c *calls.Call) calls.Result {
		mu.Lock()
		submitted[c.ID] = append(submitted[c.ID], c.Submitted)
		mu.Unlock()
		if fail.Load() {
			return calls.Result{Status: 500}
		}
		return ok(c)
	})
	redo, drop := e.submit(t, "f", "redo"), e.submit(t, "f", "drop")
	e.waitStatus(t, redo.ID, calls.Failed)
	e.waitStatus(t, drop.ID, calls.Failed)
	dls, err := calls.DeadLetters(e.ctx, e.js, 0)
	if err != nil || len(dls) != 2 {
		t.Fatalf("DeadLetters = %+v, %v; want 2", dls, err)
	}
	if one, err := calls.DeadLetters(e.ctx, e.js, 1); err != nil || len(one) != 1 || one[0].ID != dls[0].ID {
		t.Errorf("DeadLetters(limit 1) = %+v, %v", one, err)
	}
	if w.runs.Load() != 4 {
		t.Fatalf("%d runs, want 2 calls × 2 attempts", w.runs.Load())
	}

	fail.Store(false)
	d, err := calls.Retry(e.ctx, e.js, redo.ID)
	if err != nil || d.ID != redo.ID || d.Attempts != 2 {
		t.Fatalf("Retry = %+v, %v", d, err)
	}
	rec := e.waitStatus(t, redo.ID, calls.Succeeded)
	if rec.Attempts != 1 || string(rec.Response.Body) != "done" {
		t.Errorf("re-driven call's record = %+v, want succeeded at its first new attempt", rec)
	}
	mu.Lock()
	subs := submitted[redo.ID]
	mu.Unlock()
	if len(subs) != 3 || !subs[2].Equal(subs[0]) {
		t.Errorf("the re-driven call was submitted at %v; want its first submission kept", subs)
	}
	if _, found := e.deadLetter(t, redo.ID); found {
		t.Error("the re-driven call is still dead-lettered")
	}

	if d, err := calls.Discard(e.ctx, e.js, drop.ID); err != nil || d.ID != drop.ID {
		t.Errorf("Discard = %+v, %v", d, err)
	}
	if dls, err := calls.DeadLetters(e.ctx, e.js, 0); err != nil || len(dls) != 0 {
		t.Errorf("DeadLetters after Retry and Discard = %+v, %v", dls, err)
	}
	if rec, err := e.q.Get(e.ctx, drop.ID); err != nil || rec.Status != calls.Failed {
		t.Errorf("discarded call's record = %+v, %v; want failed", rec, err)
	}
	for _, id := range []string{drop.ID, redo.ID, calls.NewID(), "bad id"} {
		if _, err := calls.Retry(e.ctx, e.js, id); !errors.Is(err, calls.ErrNotDeadLettered) {
			t.Errorf("Retry(%q) = %v, want ErrNotDeadLettered", id, err)
		}
		if _, err := calls.Discard(e.ctx, e.js, id); !errors.Is(err, calls.ErrNotDeadLettered) {
			t.Errorf("Discard(%q) = %v, want ErrNotDeadLettered", id, err)
		}
	}
	if n := w.runs.Load(); n != 5 {
		t.Errorf("%d runs, want 5", n)
	}
}

// TestWorkerSettleOutlastsAckWait: an attempt whose settling waits for
// NATS (here: the dead-letter stream is gone for a while) keeps its call,
// however long that takes: it is not delivered again meanwhile.
func TestWorkerSettleOutlastsAckWait(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	const ackWait = time.Second
	dlq, err := e.js.Stream(e.ctx, calls.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	dlqConfig := dlq.CachedInfo().Config
	if err := e.js.DeleteStream(e.ctx, calls.DLQStream); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, e.s, "f", manifest.Async{MaxDeliver: 2}, ackWait, func(*calls.Call) calls.Result { return calls.Result{Status: 400} })
	sub := e.submit(t, "f", "x")
	waitFor(t, "the call to run", func() bool { return w.runs.Load() == 1 })
	time.Sleep(2*ackWait + 500*time.Millisecond) // the settling waits for the stream meanwhile
	if _, err := e.js.CreateStream(e.ctx, dlqConfig); err != nil {
		t.Fatal(err)
	}
	rec := e.waitStatus(t, sub.ID, calls.Failed)
	if rec.Attempts != 1 || rec.Error == nil || rec.Error.Code != "function_error" {
		t.Errorf("record = %+v (error %v), want failed at its only attempt with the function's error", rec, rec.Error)
	}
	waitFor(t, "the call to leave the stream", func() bool { return e.streamMsgs(t, calls.Stream) == 0 })
	if dls, err := calls.DeadLetters(e.ctx, e.js, 0); err != nil || len(dls) != 1 || dls[0].Attempts != 1 {
		t.Errorf("dead letters = %+v, %v; want the one attempt's", dls, err)
	}
	if n := w.runs.Load(); n != 1 {
		t.Errorf("%d runs, want 1", n)
	}
}

// TestDeadLetterTooLarge: a failed call whose request, with the error's
// headers, no longer fits a NATS message is dead-lettered without its
// body (and cannot be re-driven), instead of being delivered forever.
func TestDeadLetterTooLarge(t *testing.T) {
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), MaxPayload: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	js := newJS(t, s)
	e := &env{s: s, js: js, q: calls.NewQueue(js), ctx: t.Context()}
	if err := calls.Setup(e.ctx, js, calls.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	w := startWorker(t, s, "f", manifest.Async{MaxDeliver: 1}, time.Second, func(*calls.Call) calls.Result { return calls.Result{Status: 400} })
	sub := e.submit(t, "f", string(make([]byte, 1<<20-200))) // fits with its own headers, not with a dead letter's
	start := time.Now()
	rec := e.waitStatus(t, sub.ID, calls.Failed)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("failed after %s", took)
	}
	if rec.Attempts != 1 || rec.Error == nil || rec.Error.Code != "function_error" {
		t.Errorf("record = %+v", rec)
	}
	d, found := e.deadLetter(t, sub.ID)
	if !found || !d.BodyDropped || d.Size != 0 || d.Attempts != 1 || d.Error.Code != "function_error" {
		t.Errorf("dead letter = %+v (found %v), want it without its body", d, found)
	}
	if _, err := calls.Retry(e.ctx, js, sub.ID); err == nil || errors.Is(err, calls.ErrNotDeadLettered) || !strings.Contains(err.Error(), "body") {
		t.Errorf("Retry = %v, want a refusal naming the dropped body", err)
	}
	if _, found := e.deadLetter(t, sub.ID); !found {
		t.Error("the refused Retry removed the dead letter")
	}
	waitFor(t, "the call to leave the stream", func() bool { return e.streamMsgs(t, calls.Stream) == 0 })
	if n := w.runs.Load(); n != 1 {
		t.Errorf("%d runs, want 1", n)
	}
}
