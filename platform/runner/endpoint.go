package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/token"
)

// endpoint serves one function: the runner side of the hot path. It
// lives as long as the function stays deployed; a changed definition
// replaces def, and applies from the next invocation.
type endpoint struct {
	r    *Runner
	name string
	def  atomic.Pointer[definition]

	inFlight atomic.Int64
	// wake tells the function's pull loop of asynchronous calls that a
	// concurrency slot is free.
	wake      chan struct{}
	received  atomic.Uint64
	rejected  atomic.Uint64
	completed atomic.Uint64
	errors    atomic.Uint64
	timeouts  atomic.Uint64
	panics    atomic.Uint64
	// busy is the summed processing time of completed invocations.
	busy      atomic.Int64
	lastError atomic.Pointer[string]
	metrics   endpointMetrics
}

// definition is what an endpoint runs: the function's settings and its
// handler.
type definition struct {
	fn      manifest.Function
	handler http.Handler
	lifecycle
}

// Handle admits an invocation and runs it on its own goroutine. micro calls
// it sequentially for each subscription, so it must not block; while the
// runner re-registers (Runner.SetFunctions), two subscriptions call it at
// once, which the atomic counters allow.
func (e *endpoint) Handle(req micro.Request) {
	e.received.Add(1)
	d := e.acquireCurrent()
	if limit := int64(d.fn.Concurrency); e.inFlight.Add(1) > limit {
		d.release()
		e.inFlight.Add(-1)
		e.rejected.Add(1)
		e.refuse(req, invocation.Errorf(http.StatusTooManyRequests, invocation.CodeOverloaded,
			"function %q is running %d invocations on this runner, its concurrency limit; retry shortly or add runners", e.name, limit))
		return
	}
	e.r.unanswered.Add(1)
	header := nats.Header(req.Headers())
	ack := ""
	if reply := req.Reply(); reply != "" && invocation.WantsAck(header) {
		ack = reply
	}
	go e.invoke(d, req.Reply(), header, req.Data(), ack)
}

// acquireCurrent returns the endpoint's definition, counted as used by
// one more invocation (definition.acquire). A definition replaced and
// retired between the read and the count is let go and the current one
// read again, so that an invocation never starts on processes being
// closed; a few tries bound the loop (the last definition is used as
// it is: a function being removed answers 503 from its closed handler).
func (e *endpoint) acquireCurrent() *definition {
	for try := 1; ; try++ {
		d := e.def.Load()
		if d.process == nil {
			return d // a built-in: never retired
		}
		d.acquire()
		if !d.retired.Load() || try == 3 {
			return d
		}
		d.release()
	}
}

// refuse answers on the handler's goroutine through micro, so that micro's
// own num_errors counts the refusal.
func (e *endpoint) refuse(req micro.Request, ierr *invocation.Error) {
	e.setLastError(ierr)
	if req.Reply() == "" {
		return
	}
	h := ierr.Header()
	tr := invocation.StartTrace(req.Headers())
	tr.SetResponse(h)
	if err := req.Error(strconv.Itoa(ierr.Status), ierr.Message, ierr.Body(), micro.WithHeaders(micro.Headers(h))); err != nil {
		e.r.log.Warn("cannot send refusal", "function", e.name, "error", err, tr.LogAttr())
	}
}

// DefaultAckDelay is how long an invocation that asked for an ack
// (Shoal-Ack) runs before its runner sends the ack. Most invocations end
// sooner, and their answer tells the caller all an ack would have: they
// cost no ack message. The gateway answers runner_lost, 2 s after a
// runner is reported gone, the invocations no runner acked
// (gateway.unackedGrace), so the delay must stay well below that: a live
// runner's ack is out by then.
const DefaultAckDelay = 10 * time.Millisecond

// answerOnce decides which of an invocation's would-be answers (the
// function's, the timeout's) is sent, and keeps a delayed ack ahead of it:
// the ack, if sent at all, is published before the answer.
type answerOnce struct {
	answered atomic.Bool
	// mu is held by the ack while it checks answered and publishes, and
	// by claim while it sets answered, so that an answer claimed while an
	// ack is going out is published after it.
	mu sync.Mutex
}

// claim reports whether the caller is the one to answer; withAck says
// whether an ack may be under way.
func (a *answerOnce) claim(withAck bool) bool {
	if !withAck {
		return a.answered.CompareAndSwap(false, true)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.answered.CompareAndSwap(false, true)
}

// invoke runs one admitted invocation and answers it exactly once: with the
// function's answer, or with 504 when its timeout passes first. A caller
// that asked for an ack (ack is its reply subject) gets it, before the
// answer, if the invocation is still running after the runner's ack
// delay.
func (e *endpoint) invoke(d *definition, reply string, header nats.Header, data []byte, ack string) {
	start := time.Now()
	header, tr := invocation.ReceiveTrace(header)
	var once answerOnce
	withAck := ack != ""
	if withAck {
		t := time.AfterFunc(e.r.ackDelay, func() {
			once.mu.Lock()
			defer once.mu.Unlock()
			if once.answered.Load() {
				return
			}
			if err := e.r.nc.PublishMsg(&nats.Msg{Subject: ack, Header: e.r.ackHeader}); err != nil {
				e.r.log.Warn("cannot send ack", "function", e.name, "error", err, tr.LogAttr())
			}
		})
		defer t.Stop()
	}
	ctx, cancel := context.WithTimeout(e.r.ctx, d.fn.Timeout)
	defer cancel()
	w := getWriter(e.r.maxBody)
	streamable := reply != "" && invocation.AcceptsStream(header)
	if streamable {
		w.st.init(w, e, d, reply, &once, withAck, ctx, cancel, start, tr)
	}

	stopTimer := context.AfterFunc(ctx, func() {
		if once.claim(withAck) {
			ierr := e.expired(ctx, d)
			e.finish(reply, ierr.Msg(reply), ierr, start, tr)
			return
		}
		if streamable {
			// A streamed answer: ended with the error, as the
			// function may run on.
			w.st.expire()
		}
	})

	ierr := e.run(ctx, d, w, header, data, tr)
	d.release()
	// The function has returned: its concurrency slot is free before its
	// caller hears back, so that a caller's next invocation never finds
	// it taken (429) by the one just answered.
	e.release()
	stopped := stopTimer()
	streaming, recyclable := w.st.settle()
	if recyclable && (stopped || !streamable) {
		// Else the timeout's callback, or the stream's acks, may
		// still reach w.
		defer putWriter(w)
	}
	if streaming {
		w.st.end(ierr)
		return
	}
	if !once.claim(withAck) {
		e.r.log.Warn("function answered after its timeout; the answer was dropped",
			"function", e.name, "took", time.Since(start).Round(time.Millisecond), "timeout", d.fn.Timeout, tr.LogAttr())
		return
	}
	if ierr == nil && ctx.Err() != nil {
		// The function returned because its time was up (its context
		// ended) before the timer's answer went out: it did not answer
		// in time, whatever it wrote.
		ierr = e.expired(ctx, d)
	}
	if ierr != nil {
		e.finish(reply, ierr.Msg(reply), ierr, start, tr)
		return
	}
	e.finish(reply, invocation.NewResponseMsg(reply, w.statusCode(), w.header, w.body.Bytes()), nil, start, tr)
}

// expired is the answer to an invocation whose context ended: 504 when its
// timeout passed, 503 when the runner stopped before it answered.
func (e *endpoint) expired(ctx context.Context, d *definition) *invocation.Error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		e.timeouts.Add(1)
		return invocation.Errorf(http.StatusGatewayTimeout, invocation.CodeTimeout,
			"function %q did not answer within its timeout of %s", e.name, d.fn.Timeout)
	}
	return invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable,
		"the runner shut down before function %q answered", e.name)
}

// release frees a concurrency slot, and tells the pull loop of
// asynchronous calls, if it waits for one.
func (e *endpoint) release() {
	e.inFlight.Add(-1)
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// free is how many more invocations the function may start here now.
func (e *endpoint) free() int {
	return int(int64(e.def.Load().fn.Concurrency) - e.inFlight.Load())
}

// takeCall starts an asynchronous call the pull loop received; the loop
// asked for no more than free slots.
func (e *endpoint) takeCall(c *calls.Call) {
	e.received.Add(1)
	e.inFlight.Add(1)
	e.r.unanswered.Add(1)
	go e.runCall(c)
}

// runCall runs an asynchronous call and settles it (calls.Worker.Run).
func (e *endpoint) runCall(c *calls.Call) {
	defer e.r.unanswered.Add(-1)
	d := e.acquireCurrent()
	ran := false
	e.r.worker.Run(c, d.fn.Async, func() calls.Result {
		ran = true
		return e.execCall(d, c)
	})
	if !ran {
		d.release()
		e.release()
	}
}

// execCall runs the function for an asynchronous call, within its
// timeout; the token is checked as of the call's submission. A function
// still running at its timeout keeps its concurrency slot until it
// returns, as for a synchronous invocation, but the call fails at once.
func (e *endpoint) execCall(d *definition, c *calls.Call) calls.Result {
	start := time.Now()
	ctx, cancel := context.WithTimeout(e.r.ctx, d.fn.Timeout)
	defer cancel()
	type outcome struct {
		w    *responseWriter
		ierr *invocation.Error
	}
	done := make(chan outcome, 1)
	header := nats.Header(http.Header(c.Header).Clone()) // the call's own headers stay whole, for a dead letter
	header, tr := invocation.ReceiveTrace(header)
	go func() {
		w := getWriter(e.r.maxBody)
		ierr := e.run(token.AsOf(ctx, c.Submitted), d, w, header, c.Data, tr)
		d.release()
		e.release()
		done <- outcome{w, ierr}
	}()
	var res calls.Result
	select {
	case o := <-done:
		ierr := o.ierr
		if ierr == nil && ctx.Err() != nil {
			ierr = e.expired(ctx, d)
		}
		if ierr != nil {
			res.Err = ierr
		} else {
			res.Status, res.Header, res.Body = o.w.statusCode(), o.w.header.Clone(), bytes.Clone(o.w.body.Bytes())
			tr.SetResponse(res.Header)
		}
		putWriter(o.w)
	case <-ctx.Done():
		// The function goes on; its answer, if it comes, is dropped
		// with its writer.
		res.Err = e.expired(ctx, d)
	}
	// Cut short by the runner's stop (not by the function's timeout):
	// handed back at once, and not counted as an attempt.
	res.Interrupted = res.Err != nil && errors.Is(ctx.Err(), context.Canceled)
	took := time.Since(start)
	e.completed.Add(1)
	e.busy.Add(int64(took))
	e.metrics.done(res.Err, took)
	if res.Err != nil {
		e.errors.Add(1)
		e.setLastError(res.Err)
	}
	e.logCall(c, res, start, tr)
	return res
}

// run calls the function with w, turning a panic or a malformed
// invocation into an error answer.
func (e *endpoint) run(ctx context.Context, d *definition, w *responseWriter, header nats.Header, data []byte, tr invocation.Trace) (ierr *invocation.Error) {
	req, err := invocation.NewHTTPRequest(ctx, header, data)
	if err != nil {
		errors.As(err, &ierr)
		return ierr
	}
	if !d.fn.Public {
		claims, aerr := e.r.verifier.AuthorizeHeader(ctx, req.Header["Authorization"], d.fn.Permissions)
		if aerr != nil {
			return &invocation.Error{Status: aerr.Status, Code: invocation.Code(aerr.Code), Message: aerr.Description, Challenge: aerr.Challenge()}
		}
		req = req.WithContext(token.NewContext(ctx, claims))
	}
	defer func() {
		if p := recover(); p != nil {
			e.panics.Add(1)
			e.r.log.Error("function panicked", "function", e.name, "panic", fmt.Sprint(p), tr.LogAttr(), "stack", string(debug.Stack()))
			ierr = invocation.Errorf(http.StatusInternalServerError, invocation.CodeFunctionPanic, "function %q panicked", e.name)
		}
	}()
	d.handler.ServeHTTP(w, req)
	switch {
	case w.failed != nil:
		return w.failed
	case w.overflow:
		return e.tooLarge()
	}
	return nil
}

func (e *endpoint) tooLarge() *invocation.Error {
	return invocation.Errorf(http.StatusInternalServerError, invocation.CodeResponseTooLarge,
		"function %q answered more than %d bytes, more than a NATS message here can carry", e.name, e.r.maxBody)
}

// finish sends an answer, with the invocation's request id and this
// runner's span (tr), and records it. ierr is the error the answer
// carries, if any.
func (e *endpoint) finish(reply string, msg *nats.Msg, ierr *invocation.Error, start time.Time, tr invocation.Trace) {
	if reply != "" {
		tr.SetResponse(msg.Header)
		if mp := int(e.r.nc.MaxPayload()); mp > 0 && msg.Size()-len(msg.Subject)-len(msg.Reply) > mp {
			// The function's headers do not fit beside its body.
			ierr = e.tooLarge()
			msg = ierr.Msg(reply)
			tr.SetResponse(msg.Header)
		}
	}
	e.answered(msg, ierr, start, tr)
}

// answered records an answered invocation, then sends msg, its answer
// or the last message of its streamed answer (none if nil).
func (e *endpoint) answered(msg *nats.Msg, ierr *invocation.Error, start time.Time, tr invocation.Trace) {
	defer e.r.unanswered.Add(-1)
	// Counted before the answer goes out: a caller that has its answer
	// finds the invocation in the figures.
	took := time.Since(start)
	e.completed.Add(1)
	e.busy.Add(int64(took))
	e.metrics.done(ierr, took)
	if ierr != nil {
		e.errors.Add(1)
		e.setLastError(ierr)
	}
	if msg != nil && msg.Subject != "" {
		if err := e.r.nc.PublishMsg(msg); err != nil {
			e.r.log.Warn("cannot send answer", "function", e.name, "error", err, tr.LogAttr())
		}
	}
	e.logAnswer(msg, ierr, start, tr)
}

func (e *endpoint) setLastError(ierr *invocation.Error) {
	s := ierr.Error()
	e.lastError.Store(&s)
}

// EndpointStats are a runner's figures for one function. They are the
// `data` object of the endpoint in the NATS services STATS answer; micro's
// own counters around it measure only the admission step (see the package
// documentation).
type EndpointStats struct {
	// InFlight invocations are running now, including any still running
	// past their timeout.
	InFlight int64 `json:"in_flight"`
	// Concurrency is the function's limit of invocations at once.
	Concurrency int64 `json:"concurrency"`
	// Received counts every invocation that reached this runner.
	Received uint64 `json:"received"`
	// Rejected counts those refused on arrival (429 overloaded).
	Rejected uint64 `json:"rejected"`
	// Completed counts those answered after running, errors included.
	Completed uint64 `json:"completed"`
	// Errors counts completed invocations answered with an error
	// (timeout, panic, malformed invocation, answer too large, shutdown).
	Errors   uint64 `json:"errors"`
	Timeouts uint64 `json:"timeouts"`
	Panics   uint64 `json:"panics"`
	// ProcessingTime is the summed time from admission to answer of the
	// completed invocations; AverageProcessingTime is its mean.
	ProcessingTime        time.Duration `json:"processing_time"`
	AverageProcessingTime time.Duration `json:"average_processing_time"`
	LastError             string        `json:"last_error,omitempty"`
}

func (e *endpoint) stats() EndpointStats {
	s := EndpointStats{
		InFlight:       e.inFlight.Load(),
		Concurrency:    int64(e.def.Load().fn.Concurrency),
		Received:       e.received.Load(),
		Rejected:       e.rejected.Load(),
		Completed:      e.completed.Load(),
		Errors:         e.errors.Load(),
		Timeouts:       e.timeouts.Load(),
		Panics:         e.panics.Load(),
		ProcessingTime: time.Duration(e.busy.Load()),
	}
	if s.Completed > 0 {
		s.AverageProcessingTime = s.ProcessingTime / time.Duration(s.Completed)
	}
	if p := e.lastError.Load(); p != nil {
		s.LastError = *p
	}
	return s
}

// endpointStats is the micro StatsHandler: the figures of the endpoint
// the micro endpoint hands invocations to.
func endpointStats(ep *micro.Endpoint) any {
	if e, ok := ep.Handler.(*endpoint); ok {
		return e.stats()
	}
	return nil
}
