package runner_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/functions/echo"
	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
)

const traceManifest = `version: 1
functions:
  echo: {handler: {builtin: echo}, public: true}
  panic: {handler: {builtin: panic}, public: true}
  sleep: {handler: {builtin: sleep}, public: true, timeout: 100ms}
  stubborn: {handler: {builtin: stubborn}, public: true, timeout: 50ms}
  block: {handler: {builtin: block}, public: true, concurrency: 1}
`

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits up to 5 s for the log to contain every one of parts on
// one line, and returns that line.
func (b *syncBuffer) waitFor(t *testing.T, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for line := range strings.Lines(b.String()) {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q; the log:\n%s", parts, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var (
	generatedID = regexp.MustCompile(`^[0-9a-f]{32}$`)
	traceparent = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$`)
)

// startTraceRunner starts a runner of traceManifest logging at DEBUG in
// format ("json" or "text") into the returned buffer.
func startTraceRunner(t *testing.T, format string) (*nats.Conn, *syncBuffer, *functionstest.Block) {
	t.Helper()
	s := brokertest.Start(t)
	logs := &syncBuffer{}
	opts := &slog.HandlerOptions{Level: slog.LevelDebug}
	var h slog.Handler = slog.NewJSONHandler(logs, opts)
	if format == "text" {
		h = slog.NewTextHandler(logs, opts)
	}
	block := functionstest.NewBlock()
	fns := functionstest.Builtins(map[string]http.Handler{
		"block": block,
		// stubborn ignores its context and answers late.
		"stubborn": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			time.Sleep(150 * time.Millisecond)
			_, _ = w.Write([]byte("late"))
		}),
	})
	runnertest.Start(t, s.ClientURL(), runner.Config{Manifest: loadManifest(t, traceManifest, fns), Builtins: fns, Logger: slog.New(h)})
	t.Cleanup(func() { close(block.Release) }) // before the runner stops: cleanups run last first
	return brokertest.Connect(t, s), logs, block
}

func TestTraceOverPlainNATS(t *testing.T) {
	nc, logs, _ := startTraceRunner(t, "json")
	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	tests := []struct {
		name   string
		header nats.Header
		// id is the request id that must be kept; "" wants a generated
		// one.
		id        string
		continues bool
	}{
		// What `nats req fn.echo ''` sends: no headers at all.
		{name: "no headers"},
		// What `nats req -H x-request-id:r1 -H traceparent:...` sends:
		// names as typed.
		{name: "lowercase names", header: nats.Header{
			"x-request-id": {"r1"}, "traceparent": {"00-" + callerTrace + "-00f067aa0ba902b7-01"}, "tracestate": {"a=1"},
		}, id: "r1", continues: true},
		{name: "canonical names", header: nats.Header{
			"X-Request-Id": {"r2"}, "Traceparent": {"00-" + callerTrace + "-00f067aa0ba902b7-01"},
		}, id: "r2", continues: true},
		{name: "invalid ones replaced", header: nats.Header{
			"X-Request-Id": {"has space"}, "Traceparent": {"00-" + callerTrace + "-00f067aa0ba902b7-1"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := nats.NewMsg("fn.echo")
			msg.Header = tt.header
			reply := request(t, nc, msg)
			id := reply.Header.Get(invocation.HeaderRequestID)
			if tt.id != "" && id != tt.id || tt.id == "" && !generatedID.MatchString(id) {
				t.Errorf("reply's X-Request-Id %q, want %q (or generated when empty)", id, tt.id)
			}
			rt := traceparent.FindStringSubmatch(reply.Header.Get(invocation.HeaderTraceresponse))
			if rt == nil {
				t.Fatalf("reply's traceresponse %q; headers %v", reply.Header.Get(invocation.HeaderTraceresponse), reply.Header)
			}
			var seen echo.Request
			if err := json.Unmarshal(reply.Data, &seen); err != nil {
				t.Fatal(err)
			}
			// One of each reached the function, in canonical form.
			for _, name := range []string{"X-Request-Id", "Traceparent"} {
				if len(seen.Header[name]) != 1 {
					t.Errorf("the function saw %s %q; all: %v", name, seen.Header[name], seen.Header)
				}
			}
			if got := seen.Header["X-Request-Id"]; len(got) == 1 && got[0] != id {
				t.Errorf("the function saw X-Request-Id %q, the reply has %q", got[0], id)
			}
			if got := strings.Join(seen.Header["Traceparent"], ","); got != rt[0] {
				t.Errorf("the function saw traceparent %q; the runner's span is %q", got, rt[0])
			}
			if tt.continues != (rt[1] == callerTrace) {
				t.Errorf("trace %s; caller's %s; want continued %v", rt[1], callerTrace, tt.continues)
			}
			logs.waitFor(t, `"msg":"invocation"`, `"request_id":"`+id+`"`, `"trace_id":"`+rt[1]+`"`, `"span_id":"`+rt[2]+`"`)
		})
	}
}

// The runner's WARN and ERROR lines about an invocation carry its ids,
// and so does a refusal.
func TestTraceFailures(t *testing.T) {
	nc, logs, block := startTraceRunner(t, "json")
	send := func(subject, id, query string) *nats.Msg {
		msg := nats.NewMsg(subject)
		msg.Header.Set(invocation.HeaderRequestID, id)
		msg.Header.Set(invocation.HeaderQuery, query)
		return request(t, nc, msg)
	}

	send("fn.panic", "f-panic", "")
	logs.waitFor(t, `"level":"ERROR"`, `"msg":"function panicked"`, `"request_id":"f-panic"`, `"trace_id":"`)

	send("fn.sleep", "f-timeout", "d=5s")
	logs.waitFor(t, `"level":"WARN"`, `"msg":"invocation failed"`, `"code":"timeout"`, `"request_id":"f-timeout"`, `"trace_id":"`)

	send("fn.stubborn", "f-late", "")
	logs.waitFor(t, `"level":"WARN"`, `"msg":"function answered after its timeout; the answer was dropped"`, `"request_id":"f-late"`)

	// Hold block's one slot: the next invocation is refused, with its id.
	if err := nc.PublishRequest("fn.block", nats.NewInbox(), nil); err != nil {
		t.Fatal(err)
	}
	<-block.Started
	reply := send("fn.block", "f-refused", "")
	if reply.Header.Get(invocation.HeaderError) != string(invocation.CodeOverloaded) || reply.Header.Get(invocation.HeaderRequestID) != "f-refused" ||
		!traceparent.MatchString(reply.Header.Get(invocation.HeaderTraceresponse)) {
		t.Errorf("refusal headers %v", reply.Header)
	}
}

// The text format carries the same attributes.
func TestTraceLogText(t *testing.T) {
	nc, logs, _ := startTraceRunner(t, "text")
	msg := nats.NewMsg("fn.panic")
	msg.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	msg.Header.Set("x-request-id", "t-1")
	request(t, nc, msg)
	logs.waitFor(t, "level=ERROR", `msg="function panicked"`, "function=panic", "request_id=t-1", "trace_id=4bf92f3577b34da6a3ce929d0e0e4736")
	logs.waitFor(t, "level=DEBUG", "msg=invocation", "status=500", "code=function_panic", "request_id=t-1",
		"trace_id=4bf92f3577b34da6a3ce929d0e0e4736", "parent_id=00f067aa0ba902b7", "span_id=")
}
