package gateway

import (
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
)

// Streamed answers (docs/nats-api.md#streamed-answers).
//
// Every synchronous invocation accepts a streamed answer; a runner
// streams only the answers of functions that flush and run on, or that
// outgrow a NATS message. Each message is written to the client and
// flushed before it is acknowledged, so a client that reads slowly slows
// the runner down: the gateway holds at most the runner's window of
// messages per answer (invocation.StreamWindow). An answer that fails
// part way is cut short (no clean end for the client to mistake for a
// whole answer).

// streamAccept is the value of Shoal-Stream on every invocation the
// gateway sends. Messages are encoded, never modified, once built.
var streamAccept = []string{invocation.StreamAccept}

// streamCancel is the header of the acknowledgement that tells the runner
// the client went away.
var streamCancel = nats.Header{invocation.HeaderStream: {invocation.StreamCancel}}

// stream writes a streamed answer whose start, first, has been read into
// w's header with its status. The call stays registered until the end.
// An answer that cannot be completed (an error end, the runner lost, the
// deadline passed, a protocol violation) is aborted: the client sees the
// connection, or the HTTP/2 stream, reset instead of an end.
func (g *Gateway) stream(w http.ResponseWriter, r *http.Request, rt *route, c *call, first *nats.Msg, status int, deadline time.Time, tr *invocation.Trace) {
	defer g.replies.unregister(c)
	rc := http.NewResponseController(w)
	// A client that keeps its connection but stops reading would hold
	// this goroutine past the deadline in a blocked write: the
	// connection's write deadline ends it. Cleared at the end, for the
	// connection's next request (the server sets none of its own).
	_ = rc.SetWriteDeadline(deadline) // unsupported by a writer: the checks below still hold
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	body := bodyAllowed(status)
	w.WriteHeader(status)
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	msg, seq := first, 0
	for {
		part := invocation.StreamPart(msg.Header)
		if invocation.StreamSeq(msg.Header) != seq || (seq == 0) != (part == invocation.StreamStart) ||
			(seq > 0 && part != invocation.StreamData && part != invocation.StreamEnd) {
			g.log.Warn("malformed streamed answer from a runner", "function", rt.fn.Name, "seq", seq,
				"got_seq", msg.Header.Get(invocation.HeaderStreamSeq), "part", part, tr.LogAttr())
			g.cancelStream(msg.Reply)
			panic(http.ErrAbortHandler)
		}
		if part == invocation.StreamEnd && (msg.Header.Get(invocation.HeaderError) != "" || msg.Header.Get(invocation.HeaderServiceErrorCode) != "") {
			g.log.Warn("streamed answer failed part way; the answer was cut short", "function", rt.fn.Name,
				"code", msg.Header.Get(invocation.HeaderError), "error", msg.Header.Get(invocation.HeaderServiceError), tr.LogAttr())
			panic(http.ErrAbortHandler)
		}
		if body && len(msg.Data) > 0 {
			if _, err := w.Write(msg.Data); err != nil {
				g.cancelStream(msg.Reply) // the client went away
				return
			}
		}
		if err := rc.Flush(); err != nil {
			g.cancelStream(msg.Reply)
			return
		}
		if part == invocation.StreamEnd {
			return
		}
		if msg.Reply != "" {
			if err := g.nc.Publish(msg.Reply, nil); err != nil {
				g.log.Warn("cannot acknowledge a streamed answer's message", "function", rt.fn.Name, "error", err, tr.LogAttr())
				panic(http.ErrAbortHandler)
			}
		}
		seq++
		reply := msg.Reply
		select {
		case msg = <-c.answer:
			if err := lostError(msg); err != nil {
				g.log.Warn("the runner streaming an answer was lost; the answer was cut short", "function", rt.fn.Name, tr.LogAttr())
				g.cancelStream(reply) // in case it is not gone after all
				panic(http.ErrAbortHandler)
			}
		case <-r.Context().Done():
			g.cancelStream(reply)
			return
		case <-timer.C:
			g.log.Warn("streamed answer did not end within the function's timeout; the answer was cut short",
				"function", rt.fn.Name, "timeout", rt.fn.Timeout, tr.LogAttr())
			g.cancelStream(reply)
			panic(http.ErrAbortHandler)
		case <-g.replies.closed:
			panic(http.ErrAbortHandler)
		}
	}
}

// cancelStream tells the runner at reply that the answer's client is
// gone, so that it cancels the invocation.
func (g *Gateway) cancelStream(reply string) {
	if reply == "" {
		return
	}
	_ = g.nc.PublishMsg(&nats.Msg{Subject: reply, Header: streamCancel}) // the runner's timeout ends it anyway
}
