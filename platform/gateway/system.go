package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/traffic"
	"github.com/shoal-dev/shoal/token"
)

// Default operator permissions: reading the /system/ routes, and acting
// on them (re-driving or discarding dead-lettered calls).
const (
	DefaultSystemPermission      = "system:read"
	DefaultSystemWritePermission = "system:write"
)

// systemTimeout bounds what a /system/ route may wait on NATS.
const systemTimeout = 5 * time.Second

// authorizeSystem checks that the request's token holds perms and
// returns its claims; on failure it has written the error and returns
// nil. A gateway that verifies no tokens has no /system/ routes: it
// answers 404.
func (g *Gateway) authorizeSystem(w http.ResponseWriter, r *http.Request, perms []string) *token.Claims {
	if g.verifier == nil {
		invocation.Errorf(http.StatusNotFound, invocation.CodeNotFound, "no route for %s %s: this gateway verifies no tokens", r.Method, r.URL.Path).WriteHTTP(w)
		return nil
	}
	c, ierr := g.authorize(r, perms)
	if ierr != nil {
		ierr.WriteHTTP(w)
		return nil
	}
	return c
}

// writeJSON answers v as JSON, never cached: the gateway's own JSON
// answers (system routes, call records, 202 of submissions).
func (g *Gateway) writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		g.log.Error("encode an answer", "path", r.URL.Path, "error", err)
		invocation.Errorf(http.StatusInternalServerError, invocation.CodeInternal, "cannot encode the answer").WriteHTTP(w)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n')) // the client went away; nothing to do
}

// serveSystem answers a /system/ route with the JSON of status, for
// callers whose token holds the system permission.
func (g *Gateway) serveSystem(status func(context.Context) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if g.authorizeSystem(w, r, g.systemPerms) == nil {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), systemTimeout)
		defer cancel()
		v, err := status(ctx)
		if err != nil {
			g.log.Error("system status", "path", r.URL.Path, "error", err)
			invocation.Errorf(http.StatusInternalServerError, invocation.CodeInternal, "cannot read the status").WriteHTTP(w)
			return
		}
		g.writeJSON(w, r, http.StatusOK, v)
	}
}

// Whoami is the answer of GET /system/whoami: what the caller's token
// says and which operator routes it opens.
type Whoami struct {
	Subject     string    `json:"subject"`
	Permissions []string  `json:"permissions"`
	Issuer      string    `json:"issuer,omitempty"`
	Audience    []string  `json:"audience,omitempty"`
	IssuedAt    time.Time `json:"issued_at,omitzero"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	// Operator tells whether the token holds the system permissions:
	// Read opens every GET /system/ route, Write the dead-letter
	// actions.
	Operator struct {
		Read  bool `json:"read"`
		Write bool `json:"write"`
	} `json:"operator"`
}

// serveWhoami answers GET /system/whoami for any valid token: a console
// shows who is logged in, until when, and what they may see.
func (g *Gateway) serveWhoami(w http.ResponseWriter, r *http.Request) {
	c := g.authorizeSystem(w, r, nil)
	if c == nil {
		return
	}
	a := Whoami{Subject: c.Subject, Permissions: c.Permissions, Issuer: c.Issuer, Audience: c.Audience}
	if a.Permissions == nil {
		a.Permissions = []string{}
	}
	if c.IssuedAt != nil {
		a.IssuedAt = c.IssuedAt.UTC()
	}
	if c.ExpiresAt != nil {
		a.ExpiresAt = c.ExpiresAt.UTC()
	}
	a.Operator.Read = c.Allows(g.systemPerms)
	a.Operator.Write = c.Allows(g.systemWritePerms)
	g.writeJSON(w, r, http.StatusOK, a)
}

// Bounds of the lists the /system/ routes answer.
const (
	defaultCallsLimit = 50
	defaultDLQLimit   = 100
)

// queryLimit reads the limit query parameter: def when absent, an error
// when it is not a whole number in 1..max.
func queryLimit(r *http.Request, def, max int) (int, *invocation.Error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "limit must be a whole number from 1 to %d, not %q", max, v)
	}
	return n, nil
}

// callsUnavailable answers a /system/ call route of a gateway that takes
// no asynchronous calls.
func (g *Gateway) callsUnavailable(w http.ResponseWriter) bool {
	if g.calls == nil {
		invocation.Errorf(http.StatusNotImplemented, invocation.CodeNotImplemented, "this gateway does not take asynchronous calls").WriteHTTP(w)
		return true
	}
	return false
}

// operatorUnavailable answers a dead-letter route of a gateway that has
// no operator connection to read or act with.
func (g *Gateway) operatorUnavailable(w http.ResponseWriter) bool {
	if g.operator == nil {
		invocation.Errorf(http.StatusNotImplemented, invocation.CodeNotImplemented,
			"this gateway does not manage dead-lettered calls (its NATS role may not read them, which hold the callers' tokens): use shoal calls dlq, retry and discard with admin credentials").WriteHTTP(w)
		return true
	}
	return false
}

// callsError answers err, of reading or changing calls, for op.
func (g *Gateway) callsError(w http.ResponseWriter, r *http.Request, op, id string, err error) {
	switch {
	case errors.Is(err, calls.ErrNotDeadLettered):
		invocation.Errorf(http.StatusNotFound, invocation.CodeCallNotFound, "no dead-lettered call %q", id).WriteHTTP(w)
	case errors.Is(err, calls.ErrBodyDropped):
		invocation.Errorf(http.StatusConflict, invocation.CodeConflict, "call %q cannot be re-driven: its request body was too large to keep with its error; submit it again", id).WriteHTTP(w)
	case errors.Is(err, calls.ErrNotSetUp):
		invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable, "asynchronous calls are not set up on this deployment (run shoal deploy)").WriteHTTP(w)
	case errors.Is(err, calls.ErrQueueFull):
		invocation.Errorf(http.StatusTooManyRequests, invocation.CodeQueueFull, "the queue of asynchronous calls is full; retry later").WriteHTTP(w)
	default:
		g.log.Error(op, "call", id, "error", err, "path", r.URL.Path)
		invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable, "cannot %s right now; retry shortly", op).WriteHTTP(w)
	}
}

// serveCalls answers GET /system/calls: the records of the calls changed
// most recently, newest first, of one function or all; "truncated" when
// the listing stopped at its budget of bytes read (the records hold the
// answers' bodies), and "skipped" the records that did not decode.
func (g *Gateway) serveCalls(w http.ResponseWriter, r *http.Request) {
	if g.authorizeSystem(w, r, g.systemPerms) == nil || g.callsUnavailable(w) {
		return
	}
	limit, ierr := queryLimit(r, defaultCallsLimit, calls.MaxRecent)
	if ierr != nil {
		ierr.WriteHTTP(w)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), systemTimeout)
	defer cancel()
	l, err := g.calls.Recent(ctx, limit, r.URL.Query().Get("function"))
	if err != nil {
		g.callsError(w, r, "list the calls", "", err)
		return
	}
	if l.Records == nil {
		l.Records = []calls.Record{}
	}
	// A list of records with their answers' bodies could run to
	// hundreds of MiB: each is read whole at /calls/ID.
	for i := range l.Records {
		if l.Records[i].Response != nil {
			l.Records[i].Response.Body = nil
		}
	}
	g.writeJSON(w, r, http.StatusOK, struct {
		Calls     []calls.Record `json:"calls"`
		Truncated bool           `json:"truncated,omitempty"`
		Skipped   int            `json:"skipped,omitempty"`
	}{l.Records, l.Truncated, l.Skipped})
}

// serveDLQ answers GET /system/dlq: the dead-lettered calls, newest first.
func (g *Gateway) serveDLQ(w http.ResponseWriter, r *http.Request) {
	if g.authorizeSystem(w, r, g.systemPerms) == nil || g.callsUnavailable(w) || g.operatorUnavailable(w) {
		return
	}
	limit, ierr := queryLimit(r, defaultDLQLimit, calls.MaxRecent)
	if ierr != nil {
		ierr.WriteHTTP(w)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), systemTimeout)
	defer cancel()
	dls, err := calls.RecentDeadLetters(ctx, g.operator, limit)
	if err != nil {
		g.callsError(w, r, "list the dead letters", "", err)
		return
	}
	if dls == nil {
		dls = []calls.DeadLetter{}
	}
	g.writeJSON(w, r, http.StatusOK, struct {
		DeadLetters []calls.DeadLetter `json:"dead_letters"`
	}{dls})
}

// serveRetry answers POST /system/dlq/ID/retry: the dead-lettered call is
// queued again under its id.
func (g *Gateway) serveRetry(w http.ResponseWriter, r *http.Request) {
	g.actOnDeadLetter(w, r, "re-drive the call", calls.Retry, func(id string, d *calls.DeadLetter) any {
		g.log.Info("dead-lettered call queued again", "call", id, "function", d.Function)
		return accepted{ID: id, Function: d.Function, Status: calls.Queued, URL: callsPrefix + id}
	})
}

// serveDiscard answers DELETE /system/dlq/ID: the dead-lettered call is
// dropped for good.
func (g *Gateway) serveDiscard(w http.ResponseWriter, r *http.Request) {
	g.actOnDeadLetter(w, r, "discard the call", calls.Discard, func(id string, d *calls.DeadLetter) any {
		g.log.Info("dead-lettered call discarded", "call", id, "function", d.Function)
		return struct {
			ID        string `json:"id"`
			Function  string `json:"function"`
			Discarded bool   `json:"discarded"`
		}{id, d.Function, true}
	})
}

// actOnDeadLetter does act (op, for errors) to the dead letter the route
// names, for a token holding the write permission, through the operator
// connection, and answers what answer makes of it.
func (g *Gateway) actOnDeadLetter(w http.ResponseWriter, r *http.Request, op string,
	act func(context.Context, jetstream.JetStream, string) (*calls.DeadLetter, error), answer func(string, *calls.DeadLetter) any) {
	if g.authorizeSystem(w, r, g.systemWritePerms) == nil || g.callsUnavailable(w) || g.operatorUnavailable(w) {
		return
	}
	id := chi.URLParam(r, "id")
	if !calls.ValidID(id) {
		invocation.Errorf(http.StatusNotFound, invocation.CodeCallNotFound, "no dead-lettered call %q", id).WriteHTTP(w)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), systemTimeout)
	defer cancel()
	d, err := act(ctx, g.operator, id)
	if err != nil {
		g.callsError(w, r, op, id, err)
		return
	}
	g.writeJSON(w, r, http.StatusOK, answer(id, d))
}

// serveStats answers GET /system/stats: each deployed function's live
// figures (requests per second, error rate, p50 and p99 latency) over the
// last window seconds, in steps, from the synchronous invocations of
// every gateway that answers on NATS in time (fleet.go), this one's
// included.
func (g *Gateway) serveStats(w http.ResponseWriter, r *http.Request) {
	if g.authorizeSystem(w, r, g.systemPerms) == nil {
		return
	}
	q := r.URL.Query()
	window, ierr := querySeconds(q.Get("window"), "window", defaultStatsWindow)
	if ierr != nil {
		ierr.WriteHTTP(w)
		return
	}
	step, ierr := querySeconds(q.Get("step"), "step", defaultStatsStep)
	if ierr != nil {
		ierr.WriteHTTP(w)
		return
	}
	if err := traffic.CheckWindow(window, step); err != nil {
		invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "%v", err).WriteHTTP(w)
		return
	}
	routes := *g.routes.Load()
	names := make([]string, 0, len(routes))
	for name := range routes {
		names = append(names, name)
	}
	snap, err := g.fleetSnapshot(r.Context(), names, window, step)
	if err != nil {
		g.log.Error("live figures", "error", err)
		invocation.Errorf(http.StatusInternalServerError, invocation.CodeInternal, "cannot read the live figures").WriteHTTP(w)
		return
	}
	g.writeJSON(w, r, http.StatusOK, snap)
}

// Defaults of GET /system/stats.
const (
	defaultStatsWindow = 5 * time.Minute
	defaultStatsStep   = 5 * time.Second
)

// querySeconds reads a query parameter of whole seconds: def when
// absent.
func querySeconds(v, name string, def time.Duration) (time.Duration, *invocation.Error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	// Past a day, the multiplication below could overflow; traffic
	// refuses anything past its ten minutes anyway.
	if err != nil || n < 1 || n > 86400 {
		return 0, invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest, "%s must be a whole number of seconds from 1 to %d, not %q", name, int(traffic.MaxWindow/time.Second), v)
	}
	return time.Duration(n) * time.Second, nil
}
