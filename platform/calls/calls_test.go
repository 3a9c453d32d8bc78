package calls_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/calls"
)

func TestLimitsCheck(t *testing.T) {
	tests := []struct {
		name   string
		change func(*calls.Limits)
		want   string // in the error; "" for none
	}{
		{"defaults", func(*calls.Limits) {}, ""},
		{"no max age", func(l *calls.Limits) { l.MaxAge = 0 }, ""},
		{"no queued calls", func(l *calls.Limits) { l.MaxQueued = 0 }, "max queued calls 0"},
		{"queue under 1MiB", func(l *calls.Limits) { l.MaxBytes = 1<<20 - 1 }, "max queued bytes"},
		{"max age under a minute", func(l *calls.Limits) { l.MaxAge = 59 * time.Second }, "max call age 59s"},
		{"no dedupe window", func(l *calls.Limits) { l.Dedupe = 0 }, "dedupe window"},
		{"results kept under a second", func(l *calls.Limits) { l.ResultsTTL = time.Millisecond }, "results TTL"},
		{"dead letters kept under a minute", func(l *calls.Limits) { l.DLQMaxAge = time.Second }, "dead-letter max age"},
		{"dead letters under 1MiB", func(l *calls.Limits) { l.DLQMaxBytes = 1 }, "dead-letter max bytes"},
		{"negative replicas", func(l *calls.Limits) { l.Replicas = -1 }, "replicas -1"},
		{"six replicas", func(l *calls.Limits) { l.Replicas = 6 }, "replicas 6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := calls.DefaultLimits()
			tt.change(&l)
			err := l.Check()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Check = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Check = %v, want an error with %q", err, tt.want)
			}
		})
	}
	t.Run("every fault is reported", func(t *testing.T) {
		err := calls.Limits{}.Check()
		for _, want := range []string{"max queued calls", "max queued bytes", "dedupe", "results TTL", "dead-letter max age", "dead-letter max bytes"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Check of zero limits = %v, want it to name %q", err, want)
			}
		}
	})
}

func TestSetup(t *testing.T) {
	s := brokertest.Start(t)
	js := newJS(t, s)
	ctx := t.Context()
	streamInfo := func(name string) *jetstream.StreamInfo {
		t.Helper()
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info
	}

	bad := calls.DefaultLimits()
	bad.MaxQueued = 0
	if err := calls.Setup(ctx, js, bad); err == nil || !strings.Contains(err.Error(), "max queued calls") {
		t.Errorf("Setup with bad limits = %v, want the Check error", err)
	}
	if _, err := js.Stream(ctx, calls.Stream); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("Setup with bad limits created the stream (%v)", err)
	}

	l := calls.DefaultLimits()
	for range 2 { // idempotent
		if err := calls.Setup(ctx, js, l); err != nil {
			t.Fatalf("Setup: %v", err)
		}
	}
	q := streamInfo(calls.Stream).Config
	if q.Retention != jetstream.WorkQueuePolicy || q.Discard != jetstream.DiscardNew || q.MaxMsgs != l.MaxQueued ||
		q.MaxBytes != l.MaxBytes || q.MaxAge != l.MaxAge || q.Duplicates != l.Dedupe || q.Replicas != 1 {
		t.Errorf("calls stream config = %+v", q)
	}
	if d := streamInfo(calls.DLQStream).Config; d.MaxAge != l.DLQMaxAge || d.MaxBytes != l.DLQMaxBytes {
		t.Errorf("dead-letter stream config = %+v", d)
	}
	if c := streamInfo(calls.CallbackStream).Config; c.Retention != jetstream.WorkQueuePolicy || c.MaxAge != l.ResultsTTL {
		t.Errorf("callback stream config = %+v", c)
	}

	// A second Setup applies changed limits, and keeps what is queued.
	msg := nats0()
	if _, err := calls.NewQueue(js).Submit(ctx, calls.Submission{Function: "f", Msg: msg}); err != nil {
		t.Fatal(err)
	}
	l.MaxQueued, l.ResultsTTL, l.MaxAge = 7, time.Hour, 0
	if err := calls.Setup(ctx, js, l); err != nil {
		t.Fatalf("Setup with changed limits: %v", err)
	}
	info := streamInfo(calls.Stream)
	if info.Config.MaxMsgs != 7 || info.Config.MaxAge != 0 || info.State.Msgs != 1 {
		t.Errorf("after the change: max msgs %d, max age %s, %d messages; want 7, 0, 1", info.Config.MaxMsgs, info.Config.MaxAge, info.State.Msgs)
	}
	kv, err := js.KeyValue(ctx, calls.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := kv.Status(ctx); err != nil || st.TTL() != time.Hour {
		t.Errorf("bucket TTL = %v (%v), want 1h", st.TTL(), err)
	}

	// The smallest limits Check accepts are limits Setup can apply.
	small := calls.Limits{MaxQueued: 1, MaxBytes: 1 << 20, MaxAge: time.Minute, Dedupe: time.Second,
		ResultsTTL: time.Second, DLQMaxAge: time.Minute, DLQMaxBytes: 1 << 20}
	if err := small.Check(); err != nil {
		t.Fatal(err)
	}
	if err := calls.Setup(ctx, newJS(t, brokertest.Start(t)), small); err != nil {
		t.Errorf("Setup with the smallest limits Check accepts: %v", err)
	}
}

func TestNotSetUp(t *testing.T) {
	s := brokertest.Start(t)
	js := newJS(t, s)
	q := calls.NewQueue(js)
	ctx := t.Context()
	if _, err := q.Submit(ctx, calls.Submission{Function: "f", Msg: nats0()}); !errors.Is(err, calls.ErrNotSetUp) {
		t.Errorf("Submit = %v, want ErrNotSetUp", err)
	}
	if _, err := q.Get(ctx, calls.NewID()); !errors.Is(err, calls.ErrNotSetUp) {
		t.Errorf("Get = %v, want ErrNotSetUp", err)
	}
	if _, err := calls.DeadLetters(ctx, js, 0); !errors.Is(err, calls.ErrNotSetUp) {
		t.Errorf("DeadLetters = %v, want ErrNotSetUp", err)
	}
	if _, err := q.Recent(ctx, 10, ""); !errors.Is(err, calls.ErrNotSetUp) {
		t.Errorf("Recent = %v, want ErrNotSetUp", err)
	}
	if _, err := calls.RecentDeadLetters(ctx, js, 10); !errors.Is(err, calls.ErrNotSetUp) {
		t.Errorf("RecentDeadLetters = %v, want ErrNotSetUp", err)
	}
	// A queue made before Setup works once it has run.
	if err := calls.Setup(ctx, js, calls.DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	sub, err := q.Submit(ctx, calls.Submission{Function: "f", Msg: nats0()})
	if err != nil {
		t.Fatalf("Submit after Setup: %v", err)
	}
	if rec, err := q.Get(ctx, sub.ID); err != nil || rec.Status != calls.Queued {
		t.Errorf("Get after Setup = %+v, %v", rec, err)
	}
}

func TestSubmitAndGet(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	before := time.Now().UTC()
	sub := e.submit(t, "f", "the body", func(s *calls.Submission) { s.Callback = "https://hooks.example.com/done?sig=secret" })
	if !calls.ValidID(sub.ID) || len(sub.ID) != 26 || sub.Duplicate {
		t.Errorf("Submit = %+v, want a fresh 26-character id", sub)
	}
	rec, err := e.q.Get(e.ctx, sub.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.ID != sub.ID || rec.Function != "f" || rec.Status != calls.Queued || rec.Attempts != 0 ||
		rec.SubmittedAt.Before(before) || rec.SubmittedAt.After(time.Now()) || rec.Response != nil || rec.Error != nil {
		t.Errorf("record = %+v", rec)
	}
	if rec.Callback == nil || rec.Callback.URL != "https://hooks.example.com/done" || rec.Callback.State != calls.CallbackPending {
		t.Errorf("callback = %+v, want the URL without its query, pending", rec.Callback)
	}

	// The call is on the stream, on calls.f, with its id and callback.
	st, err := e.js.Stream(e.ctx, calls.Stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(e.ctx, calls.Subject("f"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(calls.HeaderCallID) != sub.ID || m.Header.Get(calls.HeaderMsgID) != sub.ID ||
		m.Header.Get(calls.HeaderCallback) != "https://hooks.example.com/done?sig=secret" || string(m.Data) != "the body" ||
		m.Header.Get("Shoal-Method") != "POST" {
		t.Errorf("message on the stream: %v %q", m.Header, m.Data)
	}

	for _, id := range []string{calls.NewID(), "not a valid id", "", strings.Repeat("a", 129)} {
		if _, err := e.q.Get(e.ctx, id); !isNotFound(err) {
			t.Errorf("Get(%q) = %v, want ErrNotFound", id, err)
		}
	}
}

func TestIdempotency(t *testing.T) {
	e := setup(t, calls.DefaultLimits())
	key := func(principal, k string) func(*calls.Submission) {
		return func(s *calls.Submission) { s.Principal, s.IdempotencyKey = principal, k }
	}
	first := e.submit(t, "f", "1", key("alice", "order-42"))
	if first.Duplicate || first.ID != calls.IdempotentID("f", "alice", "order-42") {
		t.Fatalf("first submission = %+v", first)
	}
	again := e.submit(t, "f", "2", key("alice", "order-42"))
	if again.ID != first.ID || !again.Duplicate || again.Record == nil || again.Record.Status != calls.Queued {
		t.Errorf("resubmission = %+v (record %+v), want the first id, a duplicate, its queued record", again, again.Record)
	}
	if n := e.streamMsgs(t, calls.Stream); n != 1 {
		t.Errorf("%d messages queued after a resubmission, want 1", n)
	}

	// Within the window JetStream itself recognises the resubmission,
	// even without the record.
	kv, err := e.js.KeyValue(e.ctx, calls.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(e.ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	third := e.submit(t, "f", "3", key("alice", "order-42"))
	if third.ID != first.ID || !third.Duplicate {
		t.Errorf("resubmission without the record = %+v, want a duplicate of %s", third, first.ID)
	}
	if n := e.streamMsgs(t, calls.Stream); n != 1 {
		t.Errorf("%d messages queued after a resubmission without the record, want 1", n)
	}

	// Another caller, function or key is another call.
	ids := map[string]bool{first.ID: true}
	for _, sub := range []*calls.Submitted{
		e.submit(t, "f", "", key("bob", "order-42")),
		e.submit(t, "f", "", key("", "order-42")),
		e.submit(t, "g", "", key("alice", "order-42")),
		e.submit(t, "f", "", key("alice", "order-43")),
		e.submit(t, "f", ""),
		e.submit(t, "f", ""),
	} {
		if sub.Duplicate || ids[sub.ID] {
			t.Errorf("submission %+v shares an id", sub)
		}
		ids[sub.ID] = true
	}
	if n := e.streamMsgs(t, calls.Stream); n != 7 {
		t.Errorf("%d messages queued, want 7", n)
	}
}

// TestQueueFull: a full stream refuses at once, and loses nothing it had
// accepted.
// TestQueueFullBytes: the byte limit refuses like the count limit does
// (JetStream's "maximum bytes exceeded"), and keeps what it accepted.
func TestQueueFullBytes(t *testing.T) {
	l := calls.DefaultLimits()
	l.MaxBytes = 1 << 20
	e := setup(t, l)
	body := strings.Repeat("x", 300<<10)
	accepted := 0
	var err error
	for range 10 { // 1 MiB holds three such calls, not four
		msg := nats0()
		msg.Data = []byte(body)
		if _, err = e.q.Submit(e.ctx, calls.Submission{Function: "f", Msg: msg}); err != nil {
			break
		}
		accepted++
	}
	if !errors.Is(err, calls.ErrQueueFull) || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("after %d accepted calls: %v, want ErrQueueFull naming the bytes", accepted, err)
	}
	if accepted != 3 {
		t.Errorf("%d calls of 300 KiB accepted under 1 MiB, want 3", accepted)
	}
	if n := e.streamMsgs(t, calls.Stream); n != uint64(accepted) {
		t.Errorf("%d messages queued, want the %d accepted", n, accepted)
	}
}

func TestQueueFull(t *testing.T) {
	l := calls.DefaultLimits()
	l.MaxQueued = 5
	e := setup(t, l)
	var ids []string
	for i := range 5 {
		ids = append(ids, e.submit(t, "f", string(rune('a'+i))).ID)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	_, err := e.q.Submit(ctx, calls.Submission{Function: "f", Msg: nats0()})
	if !errors.Is(err, calls.ErrQueueFull) {
		t.Fatalf("6th submission = %v, want ErrQueueFull", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the refusal took %s", took)
	}
	if n := e.streamMsgs(t, calls.Stream); n != 5 {
		t.Errorf("%d messages queued, want the 5 accepted", n)
	}

	w := startWorker(t, e.s, "f", manifest.Async{}, 0, ok)
	for _, id := range ids {
		if rec := e.waitStatus(t, id, calls.Succeeded); string(rec.Response.Body) != "done" {
			t.Errorf("call %s: %+v", id, rec.Response)
		}
	}
	if n := w.runs.Load(); n != 5 {
		t.Errorf("%d runs, want 5", n)
	}
	waitFor(t, "the stream to empty", func() bool { return e.streamMsgs(t, calls.Stream) == 0 })
	e.submit(t, "f", "room again")
}
