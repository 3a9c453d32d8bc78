package gateway

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/calls"
)

// asyncPrefix starts every asynchronous invocation URL:
// /async-function/NAME[/sub/path].
const asyncPrefix = "/async-function/"

// callsPrefix starts the URL of a call's record: /calls/ID.
const callsPrefix = "/calls/"

// Headers of asynchronous submission.
const (
	// HeaderCallID carries a call's id in the answer to its submission.
	HeaderCallID = "X-Call-Id"
	// HeaderCallbackURL, on a submission, asks for the result to be
	// POSTed to that URL.
	HeaderCallbackURL = "X-Callback-Url"
	// HeaderIdempotencyKey, on a submission, makes a resubmission with
	// the same key (by the same caller, to the same function) return the
	// first call instead of queueing another.
	HeaderIdempotencyKey = "Idempotency-Key"
	// maxIdempotencyKey is the longest Idempotency-Key accepted.
	maxIdempotencyKey = 256
)

// submitTimeout bounds the submission of an asynchronous call: the
// stored, replicated write and the record.
const submitTimeout = 10 * time.Second

// accepted is the body of a 202 answer to a submission.
type accepted struct {
	ID       string       `json:"id"`
	Function string       `json:"function"`
	Status   calls.Status `json:"status"`
	// Duplicate is set when the Idempotency-Key named an earlier call.
	Duplicate bool   `json:"duplicate,omitempty"`
	URL       string `json:"url"`
}

// submit is the gateway side of an asynchronous invocation: checked as a
// synchronous one is, then stored durably in the calls stream, and
// answered 202 with the call's id once it is on disk.
func (g *Gateway) submit(w http.ResponseWriter, r *http.Request, tr *invocation.Trace) {
	rt, subpath, claims, ok := g.route(w, r, asyncPrefix)
	if !ok {
		return
	}
	name := rt.fn.Name
	principal := ""
	if claims != nil {
		principal = claims.Subject
	}
	if g.calls == nil {
		invocation.Errorf(http.StatusNotImplemented, invocation.CodeNotImplemented, "this gateway does not take asynchronous calls").WriteHTTP(w)
		return
	}
	if rt.fn.Async.Disabled {
		invocation.Errorf(http.StatusMethodNotAllowed, invocation.CodeAsyncDisabled,
			"function %q does not take asynchronous calls (async.enabled is false in its definition); call it at /function/%s", name, name).WriteHTTP(w)
		return
	}
	key := r.Header.Get(HeaderIdempotencyKey)
	if len(key) > maxIdempotencyKey || len(r.Header.Values(HeaderIdempotencyKey)) > 1 {
		invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "give one %s of at most %d bytes", HeaderIdempotencyKey, maxIdempotencyKey).WriteHTTP(w)
		return
	}
	cb := r.Header.Get(HeaderCallbackURL)
	if cb != "" {
		if _, err := g.callbacks.CheckURL(cb); err != nil {
			invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "%s: %v", HeaderCallbackURL, err).WriteHTTP(w)
			return
		}
	}
	// A submission holds its body until the call is stored: it is
	// admitted as an invocation is.
	buf, ok := g.admit(w, r)
	if !ok {
		return
	}
	defer g.release(buf)
	// The gateway's headers are not the function's: Idempotency-Key and
	// X-Callback-Url travel as the protocol's own (Shoal-Call-Id,
	// Shoal-Callback-Url), not to the function.
	msg := invocation.NewRequestMsg("", r, subpath, buf.Bytes())
	tr.Apply(msg.Header)
	msg.Header.Del(HeaderCallbackURL)
	msg.Header.Del(HeaderIdempotencyKey)
	ctx, cancel := context.WithTimeout(r.Context(), submitTimeout)
	defer cancel()
	sub, err := g.calls.Submit(ctx, calls.Submission{Function: name, Msg: msg, IdempotencyKey: key, Principal: principal, Callback: cb})
	if sub == nil {
		g.submitError(name, err, tr).WriteHTTP(w)
		return
	}
	if err != nil {
		// Stored: the call will run; only its "queued" record is missing
		// until a runner takes it.
		g.log.Warn("asynchronous call queued, but not recorded", "function", name, "call", sub.ID, "error", err, tr.LogAttr())
	}
	st := calls.Queued
	if sub.Record != nil {
		st = sub.Record.Status
	}
	h := w.Header()
	h.Set(HeaderCallID, sub.ID)
	h.Set("Location", callsPrefix+sub.ID)
	g.writeJSON(w, r, http.StatusAccepted, accepted{ID: sub.ID, Function: name, Status: st, Duplicate: sub.Duplicate, URL: callsPrefix + sub.ID})
}

// submitError maps a failed submission to its answer.
func (g *Gateway) submitError(name string, err error, tr *invocation.Trace) *invocation.Error {
	switch {
	case errors.Is(err, calls.ErrQueueFull):
		g.log.Warn("asynchronous call refused: queue full", "function", name, "error", err, tr.LogAttr())
		return &invocation.Error{Status: http.StatusTooManyRequests, Code: invocation.CodeQueueFull, RetryAfter: 5 * time.Second,
			Message: "the queue of asynchronous calls is full; nothing was queued, retry later"}
	case errors.Is(err, nats.ErrMaxPayload):
		// As for a synchronous invocation: no retry can store it.
		return invocation.Errorf(http.StatusRequestEntityTooLarge, invocation.CodePayloadTooLarge,
			"the request is larger than the NATS server accepts (max_payload %d bytes, headers included)", g.nc.MaxPayload())
	case errors.Is(err, calls.ErrNotSetUp):
		g.log.Error("asynchronous call refused", "function", name, "error", err, tr.LogAttr())
		return invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable,
			"asynchronous calls are not set up on this deployment (run shoal deploy), or JetStream does not answer; nothing was queued")
	case errors.Is(err, context.DeadlineExceeded):
		g.log.Warn("asynchronous call not confirmed in time", "function", name, "error", err, tr.LogAttr())
		return invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable,
			"the call could not be stored in time; it may or may not be queued: resubmit with the same Idempotency-Key to be sure")
	default:
		g.log.Error("asynchronous call failed", "function", name, "error", err, tr.LogAttr())
		return invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable,
			"the call could not be stored; retry shortly (with an Idempotency-Key, a retry cannot queue it twice)")
	}
}

// serveCall answers GET /calls/ID with the call's record. Reading it
// takes what invoking the function takes: a token with its permissions,
// or, for a function no longer deployed, the system permission.
func (g *Gateway) serveCall(w http.ResponseWriter, r *http.Request, tr *invocation.Trace) {
	id := strings.TrimPrefix(r.URL.Path, callsPrefix)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		invocation.Errorf(http.StatusMethodNotAllowed, invocation.CodeMethodNotAllowed, "a call's record is read with GET").WriteHTTP(w)
		return
	}
	if g.calls == nil {
		invocation.Errorf(http.StatusNotImplemented, invocation.CodeNotImplemented, "this gateway does not take asynchronous calls").WriteHTTP(w)
		return
	}
	notFound := invocation.Errorf(http.StatusNotFound, invocation.CodeCallNotFound, "no call %q: never submitted, or its record has expired", id)
	if !calls.ValidID(id) {
		notFound.WriteHTTP(w)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), submitTimeout)
	defer cancel()
	rec, err := g.calls.Get(ctx, id)
	switch {
	case errors.Is(err, calls.ErrNotFound):
		notFound.WriteHTTP(w)
		return
	case err != nil:
		g.log.Error("read a call's record", "call", id, "error", err, tr.LogAttr())
		invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable, "cannot read the call's record right now; retry shortly").WriteHTTP(w)
		return
	}
	if ierr := g.authorizeCall(r, rec); ierr != nil {
		ierr.WriteHTTP(w)
		return
	}
	g.writeJSON(w, r, http.StatusOK, rec)
}

// authorizeCall checks that the caller may read rec.
func (g *Gateway) authorizeCall(r *http.Request, rec *calls.Record) *invocation.Error {
	rt, ok := (*g.routes.Load())[rec.Function]
	if ok && rt.fn.Public {
		return nil
	}
	if g.verifier == nil {
		return invocation.Errorf(http.StatusNotFound, invocation.CodeCallNotFound, "no call %q: never submitted, or its record has expired", rec.ID)
	}
	perms := g.systemPerms
	if ok {
		perms = rt.fn.Permissions
	}
	_, ierr := g.authorize(r, perms)
	return ierr
}
