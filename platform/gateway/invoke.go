package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/token"
)

// functionPrefix starts every invocation URL: /function/NAME[/sub/path].
const functionPrefix = "/function/"

// preallocLimit is the most body buffer allocated before the bytes arrive.
const preallocLimit = 256 << 10

// invoke is the gateway side of the hot path: HTTP request in, one NATS
// request to the function's subject, the runner's reply out as the HTTP
// response.
func (g *Gateway) invoke(w http.ResponseWriter, r *http.Request, tr *invocation.Trace) {
	rt, subpath, _, ok := g.route(w, r, functionPrefix)
	if !ok {
		return
	}
	buf, ok := g.admit(w, r)
	if !ok {
		return
	}
	defer g.inFlight.Add(-1)

	msg := invocation.NewRequestMsg(rt.subject, r, subpath, buf.Bytes())
	tr.Apply(msg.Header)
	msg.Header[invocation.HeaderStream] = streamAccept
	deadline := time.Now().Add(rt.wait)
	reply, c, err := g.request(r.Context(), msg, deadline)
	// Sent (retries included): the body's buffer goes back to the pool
	// now rather than be held while a streamed answer lasts.
	msg.Data = nil
	putBuffer(buf)
	if err != nil {
		if r.Context().Err() != nil {
			return // the client went away; nobody is left to answer
		}
		rt.metrics.natsError(err)
		g.requestError(rt, err, tr).WriteHTTP(w)
		return
	}

	h := w.Header()
	status, err := readReply(h, reply.Header, tr)
	if err != nil {
		g.log.Warn("malformed reply from a runner", "function", rt.fn.Name, "error", err, tr.LogAttr())
		var ierr *invocation.Error
		errors.As(err, &ierr)
		ierr.WriteHTTP(w)
		if c != nil {
			g.cancelStream(reply.Reply)
			g.replies.unregister(c)
		}
		return
	}
	if c != nil {
		g.stream(w, r, rt, c, reply, status, deadline, tr)
		return
	}
	if bodyAllowed(status) {
		h["Content-Length"] = []string{strconv.Itoa(len(reply.Data))}
	}
	w.WriteHeader(status)
	if len(reply.Data) > 0 && bodyAllowed(status) {
		_, _ = w.Write(reply.Data) // the client went away; nothing to do
	}
}

// route finds the function of a request to PREFIX/NAME[/sub/path] and
// checks the caller's bearer token against its permissions (the claims
// are nil for a public function). The header then travels on to the
// runner, which checks it again: a caller that goes straight to NATS
// meets the same check. When ok is false, the answer has been written.
func (g *Gateway) route(w http.ResponseWriter, r *http.Request, prefix string) (rt *route, subpath string, claims *token.Claims, ok bool) {
	name, subpath, ok := splitPath(r.URL.EscapedPath(), prefix)
	if !ok {
		invocation.Errorf(http.StatusNotFound, invocation.CodeNotFound, "no route for %s; functions are at %sNAME", r.URL.Path, prefix).WriteHTTP(w)
		return nil, "", nil, false
	}
	rt, ok = (*g.routes.Load())[name]
	if !ok {
		invocation.Errorf(http.StatusNotFound, invocation.CodeFunctionNotFound, "function %q is not deployed", name).WriteHTTP(w)
		return nil, "", nil, false
	}
	observedRoute(w, rt)
	if rt.unusable != nil {
		rt.unusable.WriteHTTP(w)
		return nil, "", nil, false
	}
	if !rt.fn.Public {
		c, ierr := g.authorize(r, rt.fn.Permissions)
		if ierr != nil {
			ierr.WriteHTTP(w)
			return nil, "", nil, false
		}
		claims = c
	}
	return rt, subpath, claims, true
}

// admit reads the body of a request to forward, refusing one over the
// limit before any of it is forwarded, and answering at once while NATS
// is unreachable (rather than let it wait in a reconnect buffer). It
// counts the request against the in-flight limit once its body is in: a
// client slow to send its body holds a connection, not a place among
// those waiting on runners. When ok is false, the answer has been
// written; else the caller releases buf when done.
func (g *Gateway) admit(w http.ResponseWriter, r *http.Request) (buf *bytes.Buffer, ok bool) {
	if r.ContentLength > g.maxBody {
		invocation.Errorf(http.StatusRequestEntityTooLarge, invocation.CodePayloadTooLarge,
			"the request body of %d bytes is larger than the limit of %d bytes", r.ContentLength, g.maxBody).WriteHTTP(w)
		return nil, false
	}
	if !g.nc.IsConnected() {
		observedNATSUnavailable(w)
		invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable,
			"the gateway cannot reach NATS right now; retry shortly").WriteHTTP(w)
		return nil, false
	}
	buf, ierr := g.readBody(w, r)
	if ierr != nil {
		ierr.WriteHTTP(w)
		return nil, false
	}
	if g.inFlight.Add(1) > g.maxInFlight {
		g.inFlight.Add(-1)
		putBuffer(buf)
		invocation.Errorf(http.StatusTooManyRequests, invocation.CodeOverloaded,
			"the gateway is serving %d invocations, its limit; retry shortly or add gateways", g.maxInFlight).WriteHTTP(w)
		return nil, false
	}
	return buf, true
}

// release ends what admit began.
// (invoke gives the buffer back as soon as its request is sent, and the
// in-flight slot when it returns, so as not to hold the buffer while an
// answer streams.)
func (g *Gateway) release(buf *bytes.Buffer) {
	g.inFlight.Add(-1)
	putBuffer(buf)
}

// authorize checks the request's token against perms; a refusal is
// counted in the metrics, and returned as the answer to write. The
// gateway must have a verifier.
func (g *Gateway) authorize(r *http.Request, perms []string) (*token.Claims, *invocation.Error) {
	c, aerr := g.verifier.AuthorizeHeader(r.Context(), r.Header["Authorization"], perms)
	if aerr != nil {
		g.metrics.authFailure(aerr)
		return nil, authError(aerr)
	}
	return c, nil
}

// authError is the answer to a request refused for its token.
func authError(aerr *token.AuthError) *invocation.Error {
	return &invocation.Error{Status: aerr.Status, Code: invocation.Code(aerr.Code), Message: aerr.Description, Challenge: aerr.Challenge()}
}

// splitPath splits PREFIXNAME/rest, e.g. /function/NAME/rest, into NAME
// and "/rest" ("" when there is no rest).
func splitPath(p, prefix string) (name, subpath string, ok bool) {
	rest, ok := strings.CutPrefix(p, prefix)
	if !ok {
		return "", "", false
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		name, subpath = rest[:i], rest[i:]
	} else {
		name = rest
	}
	return name, subpath, name != ""
}

// request sends the invocation and waits for its answer until deadline,
// trying other runners while the one reached refuses it as overloaded.
// The call is returned, registered, when the answer is the start of a
// streamed one (replyMux.request).
func (g *Gateway) request(ctx context.Context, msg *nats.Msg, deadline time.Time) (*nats.Msg, *call, error) {
	for attempt := 0; ; attempt++ {
		reply, c, err := g.replies.request(ctx, msg, time.Until(deadline))
		if err != nil {
			return nil, nil, err
		}
		if c == nil && attempt < overloadRetries && reply.Header.Get(invocation.HeaderError) == string(invocation.CodeOverloaded) {
			continue
		}
		return reply, c, nil
	}
}

// requestError maps a failed NATS request to the documented HTTP answer.
func (g *Gateway) requestError(rt *route, err error, tr *invocation.Trace) *invocation.Error {
	name := rt.fn.Name
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeNoRunner,
			"no runner is serving function %q; start one (shoal runner) connected to this NATS", name)
	case errors.Is(err, errRunnerLost):
		return invocation.Errorf(http.StatusBadGateway, invocation.CodeRunnerLost,
			"the runner running function %q stopped before it answered; the function may have run in part", name)
	case errors.Is(err, errRunnerLostUnacked):
		return invocation.Errorf(http.StatusBadGateway, invocation.CodeRunnerLost,
			"no runner acknowledged the invocation of function %q before a runner stopped: it was most likely on that runner, and may or may not have run", name)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return invocation.Errorf(http.StatusGatewayTimeout, invocation.CodeTimeout,
			"function %q did not answer within its timeout of %s", name, rt.fn.Timeout)
	case errors.Is(err, nats.ErrMaxPayload):
		return invocation.Errorf(http.StatusRequestEntityTooLarge, invocation.CodePayloadTooLarge,
			"the request is larger than the NATS server accepts (max_payload %d bytes, headers included)", g.nc.MaxPayload())
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, nats.ErrReconnectBufExceeded), errors.Is(err, nats.ErrDisconnected):
		g.log.Warn("invocation failed: NATS unavailable", "function", name, "error", err, tr.LogAttr())
		return invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable,
			"the gateway cannot reach NATS right now; retry shortly")
	default:
		g.log.Error("invocation failed", "function", name, "error", err, tr.LogAttr())
		return invocation.Errorf(http.StatusInternalServerError, invocation.CodeInternal,
			"the gateway could not send the invocation of function %q", name)
	}
}

// readBody reads the whole body into a pooled buffer, refusing one over
// the limit before any of it is forwarded.
func (g *Gateway) readBody(w http.ResponseWriter, r *http.Request) (*bytes.Buffer, *invocation.Error) {
	buf := getBuffer()
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return buf, nil
	}
	if r.ContentLength > 0 {
		// Size the buffer for the announced body, up to a point: memory
		// follows the bytes that really arrive, not what a client claims.
		// ReadFrom wants MinRead spare bytes to see the end.
		buf.Grow(int(min(r.ContentLength, preallocLimit)) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(unwrapWriter(w), r.Body, g.maxBody))
	if err == nil {
		return buf, nil
	}
	putBuffer(buf)
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return nil, invocation.Errorf(http.StatusRequestEntityTooLarge, invocation.CodePayloadTooLarge,
			"the request body is larger than the limit of %d bytes", g.maxBody)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "the request body ended early")
	}
	return nil, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "cannot read the request body: %v", err)
}

// bodyAllowed reports whether a response with this status may have a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuffer() *bytes.Buffer { return buffers.Get().(*bytes.Buffer) }

// putBuffer recycles a body buffer once its request has been sent.
func putBuffer(b *bytes.Buffer) {
	if b.Cap() > 1<<20 {
		return // let large buffers go rather than pin them
	}
	b.Reset()
	buffers.Put(b)
}
