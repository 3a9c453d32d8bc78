package runner_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
)

const streamManifest = `version: 1
functions:
  parts: {handler: {builtin: parts}, public: true}
  forever: {handler: {builtin: forever}, public: true, timeout: 30s}
`

// streamFunctions: parts writes "part N\n" for N in 0..9, flushing each,
// 20 ms apart; forever writes one every 20 ms until its context ends.
var streamFunctions = map[string]http.Handler{
	"parts": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for i := range 10 {
			fmt.Fprintf(w, "part %d\n", i)
			_ = http.NewResponseController(w).Flush()
			time.Sleep(20 * time.Millisecond)
		}
	}),
	"forever": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; ; i++ {
			fmt.Fprintf(w, "part %d\n", i)
			_ = http.NewResponseController(w).Flush()
			select {
			case <-time.After(20 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	}),
}

// startStream sends an invocation of fn that accepts a streamed answer,
// and returns the subscription its messages arrive on.
func startStream(t *testing.T, nc *nats.Conn, fn string) *nats.Subscription {
	t.Helper()
	sub, err := nc.SubscribeSync(nc.NewInbox())
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(invocation.Subject(fn))
	msg.Header.Set(invocation.HeaderStream, invocation.StreamAccept)
	msg.Reply = sub.Subject
	if err := nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	return sub
}

// TestStreamProtocol follows a streamed answer as a caller other than the
// gateway would: numbered messages, the runner's id and the status on
// the start, at most invocation.StreamWindow messages ahead of the acks,
// and an end without a reply subject.
func TestStreamProtocol(t *testing.T) {
	s := brokertest.Start(t)
	r := startRunner(t, s, streamManifest, streamFunctions)
	nc := brokertest.Connect(t, s)
	sub := startStream(t, nc, "parts")

	// Acknowledging nothing: the window's worth arrives, then nothing.
	var held []*nats.Msg
	for {
		msg, err := sub.NextMsg(300 * time.Millisecond)
		if err != nil {
			break
		}
		held = append(held, msg)
	}
	if len(held) != invocation.StreamWindow {
		t.Fatalf("%d messages before any ack, want %d", len(held), invocation.StreamWindow)
	}
	start := held[0]
	if invocation.StreamPart(start.Header) != invocation.StreamStart || invocation.StreamSeq(start.Header) != 0 ||
		start.Header.Get(invocation.HeaderStatus) != "200" || start.Header.Get(invocation.HeaderAck) != r.ID() ||
		start.Header.Get("X-Request-Id") == "" || start.Reply == "" {
		t.Errorf("start: %v, reply subject %q", start.Header, start.Reply)
	}
	if !strings.Contains(start.Reply, ".stream.") {
		t.Errorf("ack subject %q is not a stream subject", start.Reply)
	}

	var body strings.Builder
	for seq := 0; ; seq++ {
		var msg *nats.Msg
		if len(held) > 0 {
			msg, held = held[0], held[1:]
		} else {
			var err error
			if msg, err = sub.NextMsg(5 * time.Second); err != nil {
				t.Fatalf("message %d: %v", seq, err)
			}
		}
		if got := invocation.StreamSeq(msg.Header); got != seq {
			t.Fatalf("message %d has seq %d", seq, got)
		}
		body.Write(msg.Data)
		part := invocation.StreamPart(msg.Header)
		if part == invocation.StreamEnd {
			if msg.Reply != "" || msg.Header.Get(invocation.HeaderError) != "" {
				t.Errorf("end: reply subject %q, header %v", msg.Reply, msg.Header)
			}
			break
		}
		if seq > 0 && part != invocation.StreamData {
			t.Fatalf("message %d is %q", seq, part)
		}
		if err := nc.Publish(msg.Reply, nil); err != nil {
			t.Fatal(err)
		}
	}
	var want strings.Builder
	for i := range 10 {
		fmt.Fprintf(&want, "part %d\n", i)
	}
	if body.String() != want.String() {
		t.Errorf("body %q, want %q", body.String(), want.String())
	}
	eventually(t, func() bool {
		st, _ := r.Stats("parts")
		return st.InFlight == 0 && st.Completed == 1 && st.Errors == 0
	}, "the invocation counted as completed")
}

// TestStreamStop: a runner that stops waits for its streamed answers, and
// ends those still running at its deadline with an error.
func TestStreamStop(t *testing.T) {
	s := brokertest.Start(t)
	r := startRunner(t, s, streamManifest, streamFunctions)
	nc := brokertest.Connect(t, s)
	sub := startStream(t, nc, "forever")
	ends := make(chan *nats.Msg, 1)
	go func() {
		for {
			msg, err := sub.NextMsg(10 * time.Second)
			if err != nil {
				return
			}
			if invocation.StreamPart(msg.Header) == invocation.StreamEnd {
				ends <- msg
				return
			}
			_ = nc.Publish(msg.Reply, nil)
		}
	}()
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := r.Stop(ctx); err == nil {
		t.Error("Stop cut a streamed answer short without saying so")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("Stop returned after %s, without waiting for the streamed answer", d)
	}
	select {
	case end := <-ends:
		if code := end.Header.Get(invocation.HeaderError); code != string(invocation.CodeUnavailable) {
			t.Errorf("end: %v, want error %s", end.Header, invocation.CodeUnavailable)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no end after the runner stopped")
	}
}

// TestStreamCallerGone: a caller whose connection goes mid-stream
// acknowledges nothing more, and the NATS server answers the runner's
// next messages "no responders": the runner stops the function at once
// instead of streaming into nothing until its timeout (30 s here).
func TestStreamCallerGone(t *testing.T) {
	s := brokertest.Start(t)
	r := startRunner(t, s, streamManifest, streamFunctions)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	sub := startStream(t, nc, "forever")
	for range 3 {
		msg, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(msg.Reply, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	nc.Close() // the gateway dies
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := r.Stats("forever")
		if st.InFlight == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the function still runs 5 s after its caller's connection closed: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	began := time.Now()
	if err := r.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("Stop took %v", took)
	}
}
