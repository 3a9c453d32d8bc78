package calls

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/callback"
)

// DefaultAckWait is how long a call may go without word from its runner
// before JetStream gives it to another: a runner extends it every third of
// it while the call runs, so it bounds how late the call of a runner that
// died is taken up again, not how long a call may run.
const DefaultAckWait = 30 * time.Second

// maxBatch bounds one pull, whatever the free concurrency.
const maxBatch = 64

// pollWait is how long one pull waits for calls before asking again. A
// pull asks for the function's free slots as they are when it is sent;
// a synchronous invocation that takes a slot while the pull waits does
// not shrink it, so a call arriving then runs one over the limit. The
// wait bounds that window; it costs one small request per function and
// runner per pollWait while idle.
const pollWait = time.Second

// saveTimeout bounds the writes that end an attempt (record, dead
// letter, callback, ack), retried while NATS is reconnecting.
const saveTimeout = 20 * time.Second

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	// Runner is the runner's id, written into the records of the calls
	// it runs.
	Runner string
	// AckWait is the consumers' ack wait; 0 means DefaultAckWait.
	AckWait time.Duration
	// Logger receives the worker's log; nil discards it.
	Logger *slog.Logger
	// Settled, when set, is told how each attempt the worker settles
	// ended: function and one of the Settled* results. It must return
	// promptly.
	Settled func(function, result string)
}

// Results of an attempt, as WorkerConfig.Settled is told them.
const (
	// SettledSucceeded: the call succeeded; acknowledged.
	SettledSucceeded = "succeeded"
	// SettledRetried: the attempt failed with attempts left; handed
	// back with the function's back-off.
	SettledRetried = "retried"
	// SettledFailed: the call failed for good; dead-lettered.
	SettledFailed = "failed"
	// SettledInterrupted: the runner's shutdown cut the attempt short;
	// handed back at once, not counted as an attempt.
	SettledInterrupted = "interrupted"
	// SettledHandedBack: the outcome could not be recorded; the call is
	// handed back and delivered again.
	SettledHandedBack = "handed_back"
)

// Worker is a runner's side of asynchronous calls: it pulls calls from
// the functions' consumers and settles each attempt. It is safe for
// concurrent use.
type Worker struct {
	js        jetstream.JetStream
	q         *Queue
	runner    string
	ackWait   time.Duration
	log       *slog.Logger
	onSettled func(function, result string)
}

// NewWorker returns a Worker on js.
func NewWorker(js jetstream.JetStream, cfg WorkerConfig) *Worker {
	w := &Worker{js: js, q: NewQueue(js), runner: cfg.Runner, ackWait: cfg.AckWait, log: cfg.Logger, onSettled: cfg.Settled}
	if w.onSettled == nil {
		w.onSettled = func(string, string) {}
	}
	if w.ackWait <= 0 {
		w.ackWait = DefaultAckWait
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	return w
}

// Call is one delivery of a call to a runner.
type Call struct {
	ID       string
	Function string
	// Header and Data are the invocation, as a synchronous one carries
	// them (its Shoal-* headers are the protocol's, as there).
	Header nats.Header
	Data   []byte
	// Submitted is when the call was first submitted: a token it
	// carries is checked as of then, so that a call is not refused for
	// the time it waited.
	Submitted time.Time
	// Attempt numbers this delivery, from 1.
	Attempt  int
	Callback string

	msg jetstream.Msg
	seq uint64
	// started is when this attempt started running.
	started time.Time
	// interruptions counts the earlier deliveries of this message cut
	// short by a runner's shutdown (Result.Interrupted).
	interruptions int
	// endHeartbeat stops extending the ack deadline (see Run).
	endHeartbeat func()
}

// Consumer ensures the durable consumer of function name on Stream (the
// gateway's calls and re-driven ones) exists, as this worker's
// configuration says.
func (w *Worker) Consumer(ctx context.Context, name string) (jetstream.Consumer, error) {
	return w.consumer(ctx, Stream, name)
}

// consumer ensures the durable consumer of function name on stream.
func (w *Worker) consumer(ctx context.Context, stream, name string) (jetstream.Consumer, error) {
	filters := []string{Subject(name), RetrySubject(name)}
	if stream == ClientStream {
		filters = []string{ClientSubject(name)}
	}
	c, err := w.js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:        name,
		Description:    "Shoal: asynchronous calls of function " + name,
		FilterSubjects: filters,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        w.ackWait,
		// Attempts are counted by the runners against the function's
		// max_deliver, which may change while calls wait; JetStream
		// itself never gives up on a call (see Run).
		MaxDeliver:    -1,
		MaxAckPending: -1,
	})
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, ErrNotSetUp
	}
	if err != nil {
		return nil, fmt.Errorf("calls: consumer for function %q on %s: %w", name, stream, err)
	}
	return c, nil
}

// Pull takes calls of function name and hands each to handle, until ctx
// ends. It asks for no more calls than free reports (the function's free
// concurrency on this runner), so a busy runner leaves calls to others;
// when free is 0 it waits for wake (or polls). handle must not block:
// it starts the call and returns. A failure to reach the stream is
// logged and tried again.
//
// It pulls from the function's consumers on both Stream and ClientStream,
// each asking for at most half the free slots, and for none the other
// asks for already, but for one: with both streams busy, the function
// may run one call over its concurrency on this runner.
func (w *Worker) Pull(ctx context.Context, name string, free func() int, wake <-chan struct{}, handle func(*Call)) {
	var asked atomic.Int64
	var wg sync.WaitGroup
	for _, stream := range []string{Stream, ClientStream} {
		wg.Go(func() {
			fetchLoop{
				log:  w.log.With("function", name, "stream", stream),
				open: func(ctx context.Context) (jetstream.Consumer, error) { return w.consumer(ctx, stream, name) },
				take: func() int {
					// Half the free slots each, at least one while any
					// is free, so that neither stream's long pull
					// starves the other's.
					f := free()
					n := min(f-int(asked.Load()), (f+1)/2, maxBatch)
					if f > 0 {
						n = max(n, 1)
					}
					n = max(n, 0)
					asked.Add(int64(n))
					return n
				},
				done:   func(n int) { asked.Add(int64(-n)) },
				wake:   wake,
				handle: func(msg jetstream.Msg) { handle(w.call(name, msg)) },
			}.run(ctx)
		})
	}
	wg.Wait()
}

// fetchLoop pulls messages from a durable consumer until ctx ends, never
// more at a time than there is room for: what Pull does for a function's
// calls and DeliverCallbacks for callbacks.
type fetchLoop struct {
	log *slog.Logger
	// open creates or binds the consumer; called again when it is lost.
	open func(context.Context) (jetstream.Consumer, error)
	// take says how many messages to ask for now, 0 for none (the loop
	// then waits for wake, or 100 ms); done is called with that number
	// once the pull has ended.
	take func() int
	done func(n int)
	wake <-chan struct{}
	// handle takes a message; it must not block.
	handle func(jetstream.Msg)
}

func (l fetchLoop) run(ctx context.Context) {
	var cons jetstream.Consumer
	failures := 0
	pause := func(err error) {
		failures++
		if failures == 1 || failures%30 == 0 {
			l.log.Warn("cannot pull from a JetStream consumer; trying again", "error", err, "failures", failures)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	lost := func(err error) bool {
		return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted)
	}
	for ctx.Err() == nil {
		if cons == nil {
			c, err := l.open(ctx)
			if err != nil {
				pause(err)
				continue
			}
			cons = c
		}
		n := l.take()
		if n <= 0 {
			select {
			case <-ctx.Done():
			case <-l.wake:
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, pollWait)
		batch, err := cons.Fetch(n, jetstream.FetchContext(fctx))
		if err == nil {
			for msg := range batch.Messages() {
				l.handle(msg)
			}
			err = batch.Error()
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, nats.ErrTimeout) {
				err = nil // the pull's own wait ended
			}
		}
		cancel()
		l.done(n)
		switch {
		case err == nil:
			failures = 0
		case ctx.Err() == nil:
			if lost(err) {
				cons = nil
			}
			pause(err)
		}
	}
}

// call reads a delivered message.
func (w *Worker) call(name string, msg jetstream.Msg) *Call {
	c := &Call{Function: name, Header: msg.Headers(), Data: msg.Data(), msg: msg, Attempt: 1}
	if c.Header == nil {
		c.Header = nats.Header{}
	}
	if meta, err := msg.Metadata(); err == nil {
		c.Attempt = int(meta.NumDelivered)
		c.Submitted = meta.Timestamp
		c.seq = meta.Sequence.Stream
	}
	if msg.Subject() == RetrySubject(name) {
		if t, err := time.Parse(time.RFC3339Nano, c.Header.Get(HeaderSubmitted)); err == nil {
			c.Submitted = t
		}
	}
	c.ID = c.Header.Get(HeaderCallID)
	if c.ID == "" {
		c.ID = c.Header.Get(HeaderMsgID)
	}
	if c.ID == "" {
		c.ID = "seq-" + strconv.FormatUint(c.seq, 10)
	}
	if msg.Subject() == ClientSubject(name) && !strings.HasPrefix(c.ID, ClientIDPrefix) {
		// A client names its calls within its own namespace only.
		c.ID = ClientID(c.ID)
	}
	c.Callback = c.Header.Get(HeaderCallback)
	return c
}

// Result is how an attempt ended: the function's answer, or an error
// answered in its place (timeout, panic, refused token ...).
type Result struct {
	Status int
	Header http.Header
	Body   []byte
	Err    *invocation.Error
	// Interrupted is set when the runner cut the call short as it shut
	// down: not the function's failure, so the call is handed back at
	// once and the attempt does not count.
	Interrupted bool
}

func (r Result) status() int {
	if r.Err != nil {
		return r.Err.Status
	}
	return r.Status
}

// retryable reports whether another attempt may do better: the function
// failed (5xx, a timeout, a panic), was overloaded, or the runner
// stopped; a 4xx answer is the call's own fault.
func (r Result) retryable() bool {
	s := r.status()
	return s >= 500 || s == http.StatusRequestTimeout || s == http.StatusTooManyRequests
}

// Run runs one delivered call: it marks it running, keeps its ack
// deadline moving while exec runs, and settles the attempt with exec's
// result: succeeded; failed with attempts left (retried after the
// function's back-off); or failed for good (dead-lettered). A call
// delivered once more than async allows, because the runner of its last
// attempt died, is dead-lettered without running. The call's token is
// checked by exec as of c.Submitted.
func (w *Worker) Run(c *Call, async manifest.Async, exec func() Result) {
	// The heartbeat runs until the attempt is settled: recording and
	// settling may wait for NATS longer than the ack wait (saveTimeout),
	// and the call must not be delivered again meanwhile.
	c.endHeartbeat = w.heartbeat(c)
	defer c.endHeartbeat()
	if !ValidID(c.ID) {
		// Kept under an id that can name it, for the dead letters.
		bad := c.ID
		c.ID = "seq-" + strconv.FormatUint(c.seq, 10)
		if strings.HasPrefix(bad, ClientIDPrefix) {
			c.ID = ClientID(c.ID)
		}
		w.settle(c, async, Result{Err: invocation.Errorf(http.StatusBadRequest, invocation.CodeBadRequest,
			"call id %.200q is not valid: use 1 to 128 letters, digits, - and _", bad)}, false)
		return
	}
	if c.Attempt > 1 && w.settled(c) {
		return
	}
	if c.Attempt > async.Attempts() {
		// This delivery does not run: the call's attempts are the
		// deliveries before it, and so its record and dead letter say.
		c.Attempt--
		w.settle(c, async, Result{Err: invocation.Errorf(http.StatusBadGateway, invocation.CodeRunnerLost,
			"the runner of attempt %d of %d stopped before it finished; no attempts are left", c.Attempt, async.Attempts())}, false)
		return
	}
	c.started = time.Now().UTC()
	rec := w.record(c, async, Running)
	ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
	if err := w.save(ctx, rec); err != nil {
		// The call runs all the same: its record catches up at the end.
		w.log.Warn("cannot record an asynchronous call as running", "function", c.Function, "call", c.ID, "error", err)
	}
	cancel()
	w.settle(c, async, exec(), true)
}

// settled reports whether a call delivered again has been settled
// already (its runner recorded the outcome, then died or lost NATS before
// the acknowledgement reached the server), and then finishes what that
// runner may not have (queueing the callback) and acknowledges it. It
// also takes the interruptions of earlier attempts off c.Attempt. When
// the record cannot be read, the call is handed back (handled true):
// without it, the attempts cannot be counted.
func (w *Worker) settled(c *Call) bool {
	ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
	defer cancel()
	var rec *Record
	err := broker.Retry(ctx, 5*time.Second, func(ctx context.Context) error {
		var err error
		rec, err = w.q.Get(ctx, c.ID)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		w.nak(c, fmt.Errorf("read the record of a call delivered again: %w", err))
		return true
	}
	if rec == nil || rec.Seq != c.seq {
		return false // no word of this message: run it
	}
	if rec.Status == Succeeded || rec.Status == Failed {
		w.log.Info("asynchronous call delivered again after it was settled; acknowledged", "function", c.Function, "call", c.ID, "status", rec.Status)
		if c.Callback != "" && rec.Callback != nil && rec.Callback.State == CallbackPending {
			// Queued once at most: its Nats-Msg-Id de-duplicates.
			if err := broker.Retry(ctx, 5*time.Second, func(ctx context.Context) error { return w.queueCallback(ctx, c, rec) }); err != nil {
				w.nak(c, fmt.Errorf("queue the callback: %w", err))
				return true
			}
		}
		c.endHeartbeat()
		if err := broker.Retry(ctx, 5*time.Second, c.msg.DoubleAck); err != nil {
			w.log.Warn("cannot acknowledge a settled asynchronous call", "function", c.Function, "call", c.ID, "error", err)
		}
		return true
	}
	c.interruptions = rec.Interruptions
	c.Attempt = max(c.Attempt-c.interruptions, 1)
	return false
}

// heartbeat tells JetStream every third of the ack wait that the call is
// still being worked on, until stop is called. stop may be called more
// than once; once it returns, no more word goes out, so that the call's
// acknowledgement (or its handing back) is the last.
func (w *Worker) heartbeat(c *Call) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(w.ackWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := c.msg.InProgress(); err != nil {
					w.log.Warn("cannot extend an asynchronous call's ack deadline", "function", c.Function, "call", c.ID, "error", err)
				}
			}
		}
	})
	return sync.OnceFunc(func() { close(done); wg.Wait() })
}

// record is the call's record as of this attempt.
func (w *Worker) record(c *Call, async manifest.Async, st Status) *Record {
	rec := &Record{
		ID: c.ID, Function: c.Function, Status: st, Attempts: c.Attempt, MaxAttempts: async.Attempts(),
		SubmittedAt: c.Submitted.UTC(), StartedAt: c.started, Runner: w.runner,
		Seq: c.seq, Interruptions: c.interruptions,
	}
	if c.Callback != "" {
		rec.Callback = &Callback{URL: callback.Redact(c.Callback), State: CallbackPending}
	}
	return rec
}

// settle ends an attempt. ran says whether the function ran (a record
// with a start time is kept then).
func (w *Worker) settle(c *Call, async manifest.Async, res Result, ran bool) {
	ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
	defer cancel()
	now := time.Now().UTC()
	ok := res.Err == nil && res.Status < 400
	// Interruptions are forgiven up to max_deliver of them: a call that
	// outlasts every runner's drain (or brings its runner down) would
	// otherwise bounce between runners until the stream's max age.
	if res.Interrupted && c.interruptions < async.Attempts() {
		c.interruptions++
		rec := w.record(c, async, Queued)
		rec.Attempts--
		rec.Error = res.error()
		if err := w.save(ctx, rec); err != nil {
			w.log.Warn("cannot record an interrupted attempt", "function", c.Function, "call", c.ID, "error", err)
		}
		c.endHeartbeat()
		if err := c.msg.Nak(); err != nil {
			w.log.Warn("cannot hand an interrupted asynchronous call back; the ack wait will", "function", c.Function, "call", c.ID, "error", err)
		}
		w.log.Info("asynchronous call cut short by the runner's shutdown; handed back", "function", c.Function, "call", c.ID)
		w.onSettled(c.Function, SettledInterrupted)
		return
	}
	if !ok && res.retryable() && ran && c.Attempt < async.Attempts() {
		delay := async.Delay(c.Attempt)
		rec := w.record(c, async, Queued)
		rec.Error = res.error()
		rec.NextAttemptAt = now.Add(delay)
		if err := w.save(ctx, rec); err != nil {
			w.log.Warn("cannot record a failed attempt", "function", c.Function, "call", c.ID, "error", err)
		}
		c.endHeartbeat()
		if err := c.msg.NakWithDelay(delay); err != nil {
			// The ack wait brings the call back all the same.
			w.log.Warn("cannot schedule the retry of an asynchronous call", "function", c.Function, "call", c.ID, "error", err)
		}
		w.log.Info("asynchronous call failed; retrying", "function", c.Function, "call", c.ID, "attempt", c.Attempt, "of", async.Attempts(), "in", delay, "error", res.error().Error())
		w.onSettled(c.Function, SettledRetried)
		return
	}
	rec := w.record(c, async, Succeeded)
	rec.FinishedAt = now
	if ran {
		rec.Response = &Response{Status: res.status(), Header: res.Header, Body: res.Body}
	}
	if !ok {
		rec.Status = Failed
		rec.Error = res.error()
		if res.Err != nil {
			rec.Response = nil
		}
		if err := broker.Retry(ctx, 5*time.Second, func(ctx context.Context) error { return w.deadLetter(ctx, c, rec) }); err != nil {
			w.nak(c, fmt.Errorf("dead-letter: %w", err))
			return
		}
	}
	if err := w.save(ctx, rec); err != nil {
		w.nak(c, fmt.Errorf("record the result: %w", err))
		return
	}
	w.publishResult(c, rec, res)
	if c.Callback != "" {
		if err := broker.Retry(ctx, 5*time.Second, func(ctx context.Context) error { return w.queueCallback(ctx, c, rec) }); err != nil {
			w.nak(c, fmt.Errorf("queue the callback: %w", err))
			return
		}
	}
	c.endHeartbeat()
	if err := broker.Retry(ctx, 5*time.Second, c.msg.DoubleAck); err != nil {
		// Unacknowledged, the call comes back after the ack wait and
		// runs again: at least once.
		w.log.Warn("cannot acknowledge a finished asynchronous call; it will run again", "function", c.Function, "call", c.ID, "error", err)
	}
	if ok {
		w.onSettled(c.Function, SettledSucceeded)
	} else {
		w.onSettled(c.Function, SettledFailed)
	}
}

// nak hands a call back when its attempt could not be settled; it runs
// again (or, if that was its last attempt, is dead-lettered) later.
func (w *Worker) nak(c *Call, err error) {
	w.log.Error("cannot settle an asynchronous call; it will be delivered again", "function", c.Function, "call", c.ID, "error", err)
	w.onSettled(c.Function, SettledHandedBack)
	c.endHeartbeat()
	if err := c.msg.NakWithDelay(time.Second); err != nil {
		w.log.Warn("cannot hand an asynchronous call back; the ack wait will", "function", c.Function, "call", c.ID, "error", err)
	}
}

// error is the invocation error of a failed result.
func (r Result) error() *invocation.Error {
	if r.Err != nil {
		return r.Err
	}
	if e, ok := invocation.ParseError(r.Status, r.Body); ok {
		return e
	}
	return invocation.Errorf(r.Status, invocation.CodeFunctionError, "the function answered %d %s", r.Status, http.StatusText(r.Status))
}

// save writes rec into the bucket, without the response body if the
// record is then too large for a NATS message.
func (w *Worker) save(ctx context.Context, rec *Record) error {
	kv, err := w.q.bucket(ctx)
	if err != nil {
		return err
	}
	return broker.Retry(ctx, 5*time.Second, func(ctx context.Context) error {
		data, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		_, err = kv.Put(ctx, rec.ID, data)
		if errors.Is(err, nats.ErrMaxPayload) && rec.Response != nil && len(rec.Response.Body) > 0 {
			small := *rec.Response
			small.Body, small.BodyDropped = nil, true
			rec.Response = &small
			data, err = json.Marshal(rec)
			if err == nil {
				_, err = kv.Put(ctx, rec.ID, data)
			}
		}
		return err
	})
}

// deadLetter stores a failed call in the dead-letter stream: its request
// as it came, and why it failed.
func (w *Worker) deadLetter(ctx context.Context, c *Call, rec *Record) error {
	h := make(nats.Header, len(c.Header)+8)
	for k, v := range c.Header {
		h[k] = v
	}
	h.Set(HeaderCallID, c.ID)
	h.Set(HeaderFunction, c.Function)
	h.Set(HeaderAttempts, strconv.Itoa(c.Attempt))
	h.Set(HeaderSubmitted, c.Submitted.UTC().Format(time.RFC3339Nano))
	h.Set(invocation.HeaderError, string(rec.Error.Code))
	h.Set(HeaderErrorMessage, rec.Error.Message)
	h.Set(invocation.HeaderStatus, strconv.Itoa(rec.Error.Status))
	h.Set(HeaderMsgID, "dlq-"+c.ID+"-"+strconv.FormatUint(c.seq, 10))
	_, err := w.js.PublishMsg(ctx, &nats.Msg{Subject: DLQSubject(c.ID), Header: h, Data: c.Data})
	if errors.Is(err, nats.ErrMaxPayload) && len(c.Data) > 0 {
		// The request fitted a NATS message, but not with the error's
		// headers: keep the error without the body, or the call would
		// come back to be dead-lettered forever.
		h.Set(HeaderBodyDropped, "true")
		_, err = w.js.PublishMsg(ctx, &nats.Msg{Subject: DLQSubject(c.ID), Header: h})
	}
	return err
}

// Headers of a dead letter.
const (
	// HeaderErrorMessage carries why the call failed.
	HeaderErrorMessage = "Shoal-Error-Message"
	// HeaderBodyDropped is set when the request body was too large to
	// keep with the error's headers.
	HeaderBodyDropped = "Shoal-Body-Dropped"
)

// publishResult publishes the call's final answer on the function's
// result subject, as a synchronous reply would carry it. Only live
// subscribers see it; the record is the durable copy.
func (w *Worker) publishResult(c *Call, rec *Record, res Result) {
	subject := ResultSubject(c.Function)
	if strings.HasPrefix(c.ID, ClientIDPrefix) {
		subject = ClientResultSubject(c.Function)
	}
	var msg *nats.Msg
	if res.Err != nil {
		msg = res.Err.Msg(subject)
	} else {
		header := make(http.Header, len(res.Header))
		for k, v := range res.Header {
			header[k] = v
		}
		msg = invocation.NewResponseMsg(subject, res.Status, header, res.Body)
	}
	msg.Header.Set(HeaderCallID, c.ID)
	msg.Header.Set(HeaderCallStatus, string(rec.Status))
	msg.Header.Set(HeaderAttempts, strconv.Itoa(c.Attempt))
	if err := w.js.Conn().PublishMsg(msg); err != nil {
		w.log.Warn("cannot publish an asynchronous call's result", "function", c.Function, "call", c.ID, "error", err)
	}
}

// queueCallback stores the result for delivery to the callback URL.
func (w *Worker) queueCallback(ctx context.Context, c *Call, rec *Record) error {
	body, err := callbackBody(rec)
	if err != nil {
		return err
	}
	h := nats.Header{}
	h.Set(HeaderCallID, c.ID)
	h.Set(HeaderFunction, c.Function)
	h.Set(HeaderCallback, c.Callback)
	h.Set(HeaderCallStatus, string(rec.Status))
	h.Set(HeaderMsgID, "cb-"+c.ID+"-"+strconv.FormatUint(c.seq, 10))
	_, err = w.js.PublishMsg(ctx, &nats.Msg{Subject: CallbackSubject(c.Function), Header: h, Data: body})
	if errors.Is(err, nats.ErrMaxPayload) && rec.Response != nil && len(rec.Response.Body) > 0 {
		small := *rec
		resp := *rec.Response
		resp.Body, resp.BodyDropped = nil, true
		small.Response = &resp
		if body, err = callbackBody(&small); err != nil {
			return err
		}
		_, err = w.js.PublishMsg(ctx, &nats.Msg{Subject: CallbackSubject(c.Function), Header: h, Data: body})
	}
	return err
}

// callbackBody is what a callback receives: the record, without the
// callback's own state.
func callbackBody(rec *Record) ([]byte, error) {
	r := *rec
	r.Callback = nil
	return json.Marshal(&r)
}
