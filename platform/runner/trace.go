package runner

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/calls"
)

// Request ids and trace context (docs/nats-api.md#request-ids-and-tracing).
//
// Each invocation, synchronous or an attempt of an asynchronous call,
// starts a span of the runner's own (invocation.ReceiveTrace): the
// caller's X-Request-Id is kept, or generated when a NATS caller sent none
// (or an invalid one), and the caller's traceparent continued, or a trace
// started. The function's request carries X-Request-Id and a traceparent
// naming the runner's span, so a function that calls other services
// continues the trace; the answer carries X-Request-Id and a
// traceresponse naming the runner's span.

// logAnswer logs an answered invocation: at WARN when the runner failed it
// (timeout, answer too large, shutdown; a panic has its ERROR line where
// it is caught), else at DEBUG. msg is the answer sent.
func (e *endpoint) logAnswer(msg *nats.Msg, ierr *invocation.Error, start time.Time, tr invocation.Trace) {
	level, text := answerLevel(ierr, "invocation")
	if !e.r.log.Enabled(context.Background(), level) {
		return
	}
	status := 0
	switch {
	case ierr != nil:
		status = ierr.Status
	case msg == nil: // a streamed answer whose caller went away
	default:
		if v := msg.Header[invocation.HeaderStatus]; len(v) > 0 {
			status, _ = strconv.Atoi(v[0])
		}
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs, slog.String("function", e.name), slog.Int("status", status), slog.Duration("duration", time.Since(start)))
	if ierr != nil {
		attrs = append(attrs, slog.String("code", string(ierr.Code)), slog.String("error", ierr.Message))
	}
	e.r.log.LogAttrs(context.Background(), level, text, tr.AppendLogAttrs(attrs)...)
}

// logCall logs an attempt of an asynchronous call as logAnswer logs an
// invocation, with the call's id and attempt.
func (e *endpoint) logCall(c *calls.Call, res calls.Result, start time.Time, tr invocation.Trace) {
	ierr := res.Err
	if res.Interrupted {
		ierr = nil // the runner's shutdown: handed back, the worker logs it
	}
	level, text := answerLevel(ierr, "asynchronous call attempt")
	if !e.r.log.Enabled(context.Background(), level) {
		return
	}
	status := res.Status
	if res.Err != nil {
		status = res.Err.Status
	}
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs, slog.String("function", e.name), slog.String("call", c.ID), slog.Int("attempt", c.Attempt),
		slog.Int("status", status), slog.Duration("duration", time.Since(start)))
	if res.Err != nil {
		attrs = append(attrs, slog.String("code", string(res.Err.Code)), slog.String("error", res.Err.Message))
	}
	e.r.log.LogAttrs(context.Background(), level, text, tr.AppendLogAttrs(attrs)...)
}

// answerLevel is the level and message of an answer's log line: WARN for
// a failure of the runner's making (5xx but a panic, logged at ERROR
// already), DEBUG otherwise.
func answerLevel(ierr *invocation.Error, what string) (slog.Level, string) {
	if ierr != nil && ierr.Status >= 500 && ierr.Code != invocation.CodeFunctionPanic {
		return slog.LevelWarn, what + " failed"
	}
	return slog.LevelDebug, what
}
