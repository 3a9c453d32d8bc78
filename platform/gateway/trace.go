package gateway

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/calls"
)

// Request ids and trace context (docs/http-api.md#request-ids-and-tracing).
//
// The gateway is the first hop a caller's request meets: it keeps the
// caller's X-Request-Id when valid and generates one otherwise, continues
// the caller's traceparent when valid and starts a trace otherwise, and
// creates a span of its own. The runner receives the request id and a
// traceparent naming the gateway's span. Every HTTP answer carries the
// request id and a traceresponse naming the gateway's span, errors
// included: the gateway sets them before anything else and again after
// copying a runner's reply, so a function cannot replace them.

// startTrace starts the gateway's part in a request's trace, and sets
// X-Request-Id and Traceresponse on its answer.
func startTrace(w http.ResponseWriter, r *http.Request) invocation.Trace {
	tr := invocation.StartHTTPTrace(r.Header)
	tr.SetResponse(w.Header())
	return tr
}

// readReply is invocation.ReadReply for a reply to an invocation traced
// by tr: the runner's X-Request-Id and Traceresponse do not reach the
// answer, whose own (the gateway's span) stay.
func readReply(dst http.Header, h nats.Header, tr *invocation.Trace) (int, error) {
	// Removed first, so that ReadReply has nothing to merge (nor
	// allocate); set again after, for a responder that spelled them in
	// another case.
	delete(h, invocation.HeaderRequestID)
	delete(h, invocation.HeaderTraceresponse)
	status, err := invocation.ReadReply(dst, h)
	tr.SetResponse(dst)
	return status, err
}

// serveLogged serves a request as serve does, and logs an invocation, an
// asynchronous submission or a call's record read at DEBUG level, with
// its status, duration and trace. Only called when DEBUG is on: the
// status it needs costs a wrapped writer.
func (g *Gateway) serveLogged(w http.ResponseWriter, r *http.Request, tr *invocation.Trace) {
	var msg, prefix string
	switch p := r.URL.Path; {
	case strings.HasPrefix(p, functionPrefix):
		msg, prefix = "invocation", functionPrefix
	case strings.HasPrefix(p, asyncPrefix):
		msg, prefix = "asynchronous call submitted", asyncPrefix
	case strings.HasPrefix(p, callsPrefix):
		msg, prefix = "call record read", callsPrefix
	default:
		g.serve(w, r, tr)
		return
	}
	start := time.Now()
	sw := &observed{ResponseWriter: w} // for its status alone: not pooled, no function
	// Logged also when a streamed answer is aborted (a panic with
	// http.ErrAbortHandler).
	defer g.logServed(r, tr, sw, msg, prefix, start)
	g.serve(sw, r, tr)
}

// logServed writes serveLogged's line.
func (g *Gateway) logServed(r *http.Request, tr *invocation.Trace, sw *observed, msg, prefix string, start time.Time) {
	attrs := make([]slog.Attr, 0, 10)
	if prefix == callsPrefix {
		if id := strings.TrimPrefix(r.URL.Path, callsPrefix); calls.ValidID(id) {
			attrs = append(attrs, slog.String("call", id))
		}
	} else {
		name, _, _ := splitPath(r.URL.EscapedPath(), prefix)
		attrs = append(attrs, slog.String("function", name))
		if id := sw.Header().Get(HeaderCallID); id != "" && prefix == asyncPrefix {
			attrs = append(attrs, slog.String("call", id))
		}
	}
	// Status 0: the client went away before the answer.
	attrs = append(attrs, slog.String("method", r.Method), slog.Int("status", sw.status), slog.Duration("duration", time.Since(start)))
	attrs = tr.AppendLogAttrs(attrs)
	g.log.LogAttrs(r.Context(), slog.LevelDebug, msg, attrs...)
}

// unwrapWriter returns the writer net/http made, under any wrappers that
// have an Unwrap method: http.MaxBytesReader needs it to have the server
// close a connection whose request body was over the limit.
func unwrapWriter(w http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}
