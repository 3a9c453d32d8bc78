// Package runner serves functions over NATS: one endpoint per function in
// the NATS services framework (micro), in the queue group shared by every
// runner, so each invocation reaches one runner and `nats micro ls` shows
// them all.
//
// Runners are stateless and run invocations concurrently, each on its own
// goroutine, up to the function's concurrency limit; past the limit an
// invocation is refused at once with 429 overloaded, never queued. micro
// calls an endpoint's handler sequentially, so the handler only admits an
// invocation and hands it to a goroutine; the runner keeps its own figures
// and publishes them in the `data` of each endpoint's STATS (see
// [EndpointStats]).
//
// An invocation that asks for an ack (invocation.HeaderAck) gets one,
// naming the runner ([Runner.ID]), before its answer, so that a caller
// told the runner is gone can fail it at once.
//
// An invocation whose caller accepts a streamed answer
// (invocation.HeaderStream) is answered in several messages when its
// function flushes and runs on, or answers more than a message carries,
// with flow control: see stream.go and docs/nats-api.md.
package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"

	"github.com/shoal-dev/shoal"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/token"
)

// Config configures a runner.
type Config struct {
	// Manifest declares the functions at start; nil starts with none.
	// [Runner.SetFunctions] replaces them live (the catalog). The runner
	// serves those it has a handler for.
	Manifest *manifest.Manifest
	// Builtins are the built-in functions by handler name.
	Builtins map[string]http.Handler
	// Processes starts the functions that run as processes (http and
	// exec handlers); without it, those are not served.
	Processes ProcessStarter
	// Verifier checks the bearer token of every invocation of a function
	// that is not public, again after the gateway: callers may come
	// straight over NATS. Without one, functions that are not public are
	// not served.
	Verifier *token.Verifier
	// Metadata is added to the runner's service metadata (e.g. a worker id).
	Metadata map[string]string
	// Async, when set, makes the runner take asynchronous calls of the
	// functions it serves that allow them (platform/calls), and deliver
	// callbacks.
	Async *AsyncConfig
	// Logger receives the runner's log; nil discards it.
	Logger *slog.Logger
	// AckDelay is how long an invocation that asked for an ack runs
	// before the ack is sent; 0 means DefaultAckDelay.
	AckDelay time.Duration
}

// AsyncConfig configures a runner's asynchronous calls.
type AsyncConfig struct {
	// NATS is the connection the calls are pulled, recorded and
	// acknowledged on; required. It must not be the runner's own (whose
	// drain on Stop waits for every subscription to end, and JetStream
	// requests keep one). The runner uses it until Stop returns and does
	// not close it.
	NATS *nats.Conn
	// AckWait is how long a call of a runner that died waits before
	// another runner takes it; 0 means calls.DefaultAckWait.
	AckWait time.Duration
	// Callbacks configures the delivery of callbacks.
	Callbacks calls.CallbackConfig
}

// Runner serves functions on one NATS connection.
type Runner struct {
	nc       *nats.Conn
	verifier *token.Verifier
	builtins map[string]http.Handler
	meta     map[string]string
	log      *slog.Logger
	// eps maps the served functions' names to their endpoints; replaced
	// whole by SetFunctions, never modified.
	eps atomic.Pointer[map[string]*endpoint]
	// maxBody bounds a buffered answer so that it fits in a NATS message.
	maxBody int

	processes ProcessStarter
	// applying serializes the applications of a list of functions
	// (SetFunctions, the retry loop), whose registration waits for the
	// NATS server outside mu.
	applying sync.Mutex
	// mu serializes changes of the served functions with Stop.
	mu sync.Mutex
	// fns are the functions last asked for; unservable, those of them
	// that run as processes this runner could not start, with why;
	// starts, the starts of processes under way or not yet applied.
	fns        []manifest.Function
	unservable map[string]string
	starts     map[string]*pendingStart
	// reapply wakes the retry loop when a start ends.
	reapply chan struct{}
	// retiring tracks the closes of replaced process handlers; loops,
	// the retry loop and the starts.
	retiring sync.WaitGroup
	loops    sync.WaitGroup
	// svc is the current registration; SetFunctions replaces it.
	svc micro.Service
	// stale are earlier registrations whose drain failed; each
	// SetFunctions and Stop tries again.
	stale   []micro.Service
	stopped bool

	// worker takes asynchronous calls; nil when they are off. pulls
	// holds the cancel of each function's pull loop, by name (under mu);
	// async tracks the loops and the callback deliveries.
	worker      *calls.Worker
	pulls       map[string]context.CancelFunc
	asyncCtx    context.Context
	asyncCancel context.CancelFunc
	// pulling tracks the pull loops, delivering the callback deliveries.
	pulling    sync.WaitGroup
	delivering sync.WaitGroup

	// id is the runner's stable id; ackHeader, the header of every ack,
	// carries it. Messages are encoded, never modified, once built, so
	// the acks share it.
	id        string
	ackHeader nats.Header
	ackDelay  time.Duration

	// ctx is the parent of every invocation's context; cancel ends the
	// invocations still running when a stop runs out of time.
	ctx    context.Context
	cancel context.CancelFunc
	// unanswered counts admitted invocations whose caller has no answer yet
	// (or whose streamed answer has not ended).
	unanswered atomic.Int64

	// streamPrefix is the subject prefix of the acknowledgements of
	// streamed answers, which streamSub receives; streams holds the
	// answers streaming, by the last token of their ack subject.
	streamPrefix string
	streamSub    *nats.Subscription
	streamSeq    atomic.Uint64
	streamsMu    sync.Mutex
	streams      map[string]*stream
	stopOnce     sync.Once
	stopErr      error
}

// replyHeaderRoom is kept free of a NATS message for the reply's headers
// when bounding an answer's body.
const replyHeaderRoom = 64 << 10

// handoverGrace is how long both registrations serve together when the
// served functions change, before the old one drains. Measured without it:
// 2 "no responders" in 7,700 requests over 200 swaps of a queue
// subscription on one connection; with 20 ms: none in 290,000.
const handoverGrace = 50 * time.Millisecond

// subscribeTimeout bounds the wait for the NATS server to confirm a
// registration's subscriptions.
const subscribeTimeout = 10 * time.Second

// Start registers the runner with the NATS services framework and begins
// serving. The runner takes ownership of nc: Stop drains and closes it.
// nc must serve this runner alone: Stop waits until every subscription on
// it has drained.
func Start(nc *nats.Conn, cfg Config) (*Runner, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runner{
		nc:        nc,
		verifier:  cfg.Verifier,
		builtins:  cfg.Builtins,
		processes: cfg.Processes,
		log:       log,
		maxBody:   max(int(nc.MaxPayload())-replyHeaderRoom, 0),
		id:        nuid.Next(),
		ackDelay:  cmp.Or(cfg.AckDelay, DefaultAckDelay),
		ctx:       ctx,
		cancel:    cancel,
	}
	r.ackHeader = invocation.NewAckMsg("", r.id).Header
	r.streams = map[string]*stream{}
	r.streamPrefix = streamInboxPrefix(nc) + nuid.Next() + "."
	sub, err := nc.Subscribe(r.streamPrefix+"*", r.streamAck)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("runner: subscribe to the acknowledgements of streamed answers: %w", err)
	}
	r.streamSub = sub
	r.meta = map[string]string{"pid": strconv.Itoa(os.Getpid()), invocation.RunnerMetadata: r.id}
	if host, err := os.Hostname(); err == nil {
		r.meta["host"] = host
	}
	maps.Copy(r.meta, cfg.Metadata)
	var fns []manifest.Function
	if cfg.Manifest != nil {
		fns = cfg.Manifest.Functions
	}
	for _, fn := range fns {
		if !fn.Public && cfg.Verifier == nil {
			cancel()
			return nil, fmt.Errorf("runner: function %q needs a token, and the runner has no token verifier configured", fn.Name)
		}
	}
	empty := map[string]*endpoint{}
	r.eps.Store(&empty)
	r.starts, r.reapply = map[string]*pendingStart{}, make(chan struct{}, 1)
	// Functions run as processes start in the background: they are
	// served once ready (the retry loop applies them).
	r.mu.Lock()
	_, _, starting := r.startProcesses(fns, false)
	r.mu.Unlock()
	eps, defs := r.endpoints(fns, empty, nil, nil, starting)
	r.eps.Store(&eps)
	r.fns = fns
	startCtx, cancelStart := context.WithTimeout(context.Background(), subscribeTimeout)
	defer cancelStart()
	svc, err := r.register(startCtx, eps, defs)
	if err != nil {
		r.mu.Lock()
		r.stopped = true // starts under way close what they start
		r.mu.Unlock()
		cancel()
		r.loops.Wait()
		return nil, err
	}
	r.svc = svc
	if r.processes != nil {
		r.loops.Go(r.retryLoop)
	}
	if cfg.Async != nil {
		if err := r.startAsync(cfg.Async); err != nil {
			cancel()
			_ = svc.Stop()
			return nil, err
		}
	}
	return r, nil
}

// startAsync starts taking asynchronous calls and delivering callbacks.
func (r *Runner) startAsync(cfg *AsyncConfig) error {
	if cfg.NATS == nil || cfg.NATS == r.nc {
		return errors.New("runner: asynchronous calls need a NATS connection of their own (AsyncConfig.NATS)")
	}
	js, err := jetstream.New(cfg.NATS)
	if err != nil {
		return fmt.Errorf("runner: jetstream: %w", err)
	}
	r.worker = calls.NewWorker(js, calls.WorkerConfig{Runner: r.id, AckWait: cfg.AckWait, Logger: r.log, Settled: r.asyncSettled})
	r.pulls = map[string]context.CancelFunc{}
	r.asyncCtx, r.asyncCancel = context.WithCancel(context.Background())
	cb := cfg.Callbacks
	if cb.Logger == nil {
		cb.Logger = r.log
	}
	r.delivering.Go(func() { calls.DeliverCallbacks(r.asyncCtx, js, cb) })
	r.mu.Lock()
	r.pullFunctions(*r.eps.Load())
	r.mu.Unlock()
	return nil
}

// pullFunctions starts pulling the calls of the functions of eps that
// take asynchronous calls, and stops pulling those of the others. It
// runs with r.mu held.
func (r *Runner) pullFunctions(eps map[string]*endpoint) {
	if r.worker == nil {
		return
	}
	for name, cancel := range r.pulls {
		if ep, ok := eps[name]; !ok || ep.def.Load().fn.Async.Disabled {
			cancel()
			delete(r.pulls, name)
		}
	}
	for name, ep := range eps {
		if _, ok := r.pulls[name]; ok || ep.def.Load().fn.Async.Disabled {
			continue
		}
		ctx, cancel := context.WithCancel(r.asyncCtx)
		r.pulls[name] = cancel
		take := func(c *calls.Call) {
			ep.metrics.taken.Add(1)
			ep.takeCall(c)
		}
		r.pulling.Go(func() { r.worker.Pull(ctx, name, ep.free, ep.wake, take) })
	}
}

// endpoints builds the endpoints of the functions this runner can serve,
// reusing those in old: an endpoint keeps its figures and its in-flight
// count across changes of its definition. It returns the endpoints and
// each one's definition; a new endpoint has its definition already, a
// reused one keeps its current definition until the caller stores the
// new one.
func (r *Runner) endpoints(fns []manifest.Function, old map[string]*endpoint, started map[string]ProcessHandler, failed map[string]string, starting map[string]bool) (map[string]*endpoint, map[string]*definition) {
	eps := make(map[string]*endpoint, len(fns))
	defs := make(map[string]*definition, len(fns))
	for _, fn := range fns {
		var d *definition
		prev := old[fn.Name]
		h, why := r.handler(fn, started, failed, starting)
		switch {
		case prev != nil && fn.Handler.RunsProcess() && manifest.SameDefinition(prev.def.Load().fn, fn):
			d = prev.def.Load() // its processes serve on
		case h != nil:
			d = &definition{fn: fn, handler: h, lifecycle: lifecycle{process: started[fn.Name], idle: make(chan struct{})}}
		case prev != nil && keepsServing(prev.def.Load(), fn):
			// A new version that does not start (its code crashes, a
			// secret is missing) leaves the running one serving, as a
			// rolling update that stalls does; it is tried again.
			d = prev.def.Load()
			if !starting[fn.Name] {
				r.log.Warn("the function's new version does not start; the previous one serves on: "+why,
					"function", fn.Name, "code", fn.Process.Code.Digest, "serving", d.fn.Process.Code.Digest)
			}
		default:
			if !starting[fn.Name] {
				r.log.Warn("function not served: "+why, "function", fn.Name, "handler", fn.Handler.String())
			}
			continue
		}
		ep := old[fn.Name]
		if ep == nil {
			ep = &endpoint{r: r, name: fn.Name, wake: make(chan struct{}, 1)}
			ep.def.Store(d)
			ep.metrics.init(fn.Name)
		}
		eps[fn.Name] = ep
		defs[fn.Name] = d
	}
	return eps, defs
}

// keepsServing reports whether the running version d of a function may
// serve on while its new definition fn cannot start: both run as
// processes and the new one grants the same access (a new version that
// changes who may call it never leaves the old one serving).
func keepsServing(d *definition, fn manifest.Function) bool {
	return d.process != nil && fn.Handler.RunsProcess() && d.fn.Public == fn.Public && slices.Equal(d.fn.Permissions, fn.Permissions)
}

// register registers a service instance with one endpoint per function,
// described by defs, and waits until the server has its subscriptions, so
// that an invocation sent after it returns finds this runner.
func (r *Runner) register(ctx context.Context, eps map[string]*endpoint, defs map[string]*definition) (micro.Service, error) {
	meta := r.meta
	if len(r.unservable) > 0 {
		meta = maps.Clone(r.meta)
		meta[invocation.UnservableMetadata] = unservableSummary(r.unservable)
	}
	svc, err := micro.AddService(r.nc, micro.Config{
		Name:         invocation.ServiceName,
		Version:      shoal.Version,
		Description:  "Shoal function runner",
		Metadata:     meta,
		QueueGroup:   invocation.QueueGroup,
		StatsHandler: endpointStats,
		ErrorHandler: func(_ micro.Service, err *micro.NATSError) {
			r.log.Error("nats subscription error", "subject", err.Subject, "error", err.Description)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("runner: register service: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(eps)) {
		if err := svc.AddEndpoint(name, eps[name],
			micro.WithEndpointSubject(invocation.Subject(name)),
			micro.WithEndpointMetadata(endpointMetadata(defs[name].fn)),
		); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("runner: add endpoint for function %q: %w", name, err)
		}
	}
	if err := r.nc.FlushWithContext(ctx); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("runner: confirm subscriptions with the NATS server: %w", err)
	}
	return svc, nil
}

// SetFunctions replaces the functions the runner serves, live: a new
// function is served once it returns, a removed one is no longer routed
// here once it returns (invocations it already took finish), and a changed timeout,
// concurrency limit or permission list applies from the next invocation.
// Functions this runner has no handler for are skipped, as at Start.
//
// micro cannot remove an endpoint, so a change registers a new service
// instance with the new endpoints and then drains the old one: both are
// in the queue group for a moment, and no invocation finds this runner
// missing. ctx bounds the wait for the server to confirm the new
// subscriptions (at most 10 s); if it ends first, or registering fails,
// the runner keeps serving what it served, as it was. If only draining
// the old registration fails, the new one serves and the old one is
// drained again at the next call (and at Stop); the error says so.
func (r *Runner) SetFunctions(ctx context.Context, fns []manifest.Function) error {
	r.applying.Lock()
	defer r.applying.Unlock()
	return r.apply(ctx, fns, true)
}

// apply serves fns; it runs with r.applying held. The processes of a
// function run as processes are started in the background, never here:
// a new version is served once it is ready (the retry loop applies it
// then), and until then the version it replaces serves on when it may
// (keepsServing), so that a slow or hung start delays no other change.
func (r *Runner) apply(ctx context.Context, fns []manifest.Function, retry bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return errStopped
	}
	r.fns = fns
	started, failed, starting := r.startProcesses(fns, retry)
	used := map[string]*definition{}
	defer func() { r.closeUnused(started, used) }()
	// The service metadata lists what is unservable: it is registered
	// again when that list changes, not when only a reason does (one
	// naming a pid changes at every retry).
	unservableChanged := !slices.Equal(slices.Sorted(maps.Keys(r.unservable)), slices.Sorted(maps.Keys(failed)))
	r.unservable = failed
	staleErr := r.stopStale()
	old := *r.eps.Load()
	if len(started) == 0 && !unservableChanged && r.sameFunctions(old, fns) {
		// Nothing to change; a registration that still fails to drain
		// is reported, so that the caller tries again.
		return staleErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("runner: change of functions: %w", err)
	}
	eps, defs := r.endpoints(fns, old, started, failed, starting)
	ctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
	defer cancel()
	svc, err := r.register(ctx, eps, defs)
	if err != nil {
		return err
	}
	used = defs
	// Registered: the new definitions apply from now on; the processes
	// of those they replace close once their invocations end.
	var replaced []*definition
	for name, ep := range old {
		if d := ep.def.Load(); defs[name] != d {
			replaced = append(replaced, d)
		}
	}
	for name, ep := range eps {
		ep.def.Store(defs[name])
	}
	r.eps.Store(&eps)
	defer func() {
		for _, d := range replaced {
			r.retire(d)
		}
	}()
	r.pullFunctions(eps)
	prev := r.svc
	r.svc = svc
	// The server may be delivering invocations it matched against the
	// subscriptions as they were before the new ones: give them a moment
	// to reach the old ones, or, found closed, they would be answered
	// "no responders" although this runner serves the function.
	select {
	case <-time.After(handoverGrace):
	case <-ctx.Done():
	}
	reconnects := r.nc.Stats().Reconnects
	if err := prev.Stop(); err != nil {
		r.stale = append(r.stale, prev)
		return fmt.Errorf("runner: drain the previous registration (tried again later): %w", err)
	}
	// The old subscriptions are gone from the server once it answers:
	// from then on a removed function is not routed here.
	if err := r.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("runner: confirm the previous registration's drain with the NATS server: %w", err)
	}
	if r.nc.Stats().Reconnects != reconnects {
		// The connection dropped while the old registration drained: if
		// the server lost its unsubscriptions, nats.go re-subscribed
		// them on reconnecting, and the server may route invocations to
		// subscriptions this runner no longer has (they go unanswered).
		// Nothing in nats.go can unsubscribe them now; restarting the
		// runner does.
		r.log.Error("the NATS connection dropped while the runner re-registered; restart this runner if invocations time out",
			"reconnects", r.nc.Stats().Reconnects-reconnects)
	}
	return nil
}

// stopStale tries again to drain the registrations whose drain failed.
// It runs with r.mu held.
func (r *Runner) stopStale() error {
	var errs []error
	keep := r.stale[:0]
	for _, svc := range r.stale {
		if err := svc.Stop(); err != nil {
			keep = append(keep, svc)
			errs = append(errs, err)
		}
	}
	r.stale = keep
	return errors.Join(errs...)
}

// handler returns the handler this runner serves fn with, or nil and why
// it does not serve it. A function run as processes is served with the
// handler started for it, if any.
func (r *Runner) handler(fn manifest.Function, started map[string]ProcessHandler, failed map[string]string, starting map[string]bool) (http.Handler, string) {
	if !fn.Public && r.verifier == nil {
		return nil, "it needs a token and this runner verifies none"
	}
	if fn.Handler.RunsProcess() {
		if h, ok := started[fn.Name]; ok {
			return h, ""
		}
		if why, ok := failed[fn.Name]; ok {
			return nil, why
		}
		if starting[fn.Name] {
			return nil, "its processes are starting"
		}
		return nil, "this runner runs no processes"
	}
	h, ok := r.builtins[fn.Handler.Builtin]
	if !ok {
		return nil, "this runner has no handler for it"
	}
	return h, ""
}

// sameFunctions reports whether serving fns would change nothing: the
// same functions, defined alike.
func (r *Runner) sameFunctions(eps map[string]*endpoint, fns []manifest.Function) bool {
	n := 0
	for _, fn := range fns {
		if ep, ok := eps[fn.Name]; ok && fn.Handler.RunsProcess() {
			d := ep.def.Load()
			_, failing := r.unservable[fn.Name]
			_, pending := r.starts[fn.Name]
			if manifest.SameDefinition(d.fn, fn) || ((failing || pending) && keepsServing(d, fn)) {
				n++
				continue
			}
		}
		if h, _ := r.handler(fn, nil, nil, nil); h == nil {
			continue
		}
		n++
		ep, ok := eps[fn.Name]
		if !ok || !manifest.SameDefinition(ep.def.Load().fn, fn) {
			return false
		}
	}
	return n == len(eps)
}

// endpointMetadata describes a function in `nats micro info`.
func endpointMetadata(fn manifest.Function) map[string]string {
	m := map[string]string{
		"handler":     fn.Handler.String(),
		"timeout":     fn.Timeout.String(),
		"concurrency": strconv.Itoa(fn.Concurrency),
		"public":      strconv.FormatBool(fn.Public),
	}
	if fn.Description != "" {
		m["description"] = fn.Description
	}
	if len(fn.Permissions) > 0 {
		m["permissions"] = strings.Join(fn.Permissions, ",")
	}
	return m
}

// Functions returns the names of the functions this runner serves, sorted.
func (r *Runner) Functions() []string { return slices.Sorted(maps.Keys(*r.eps.Load())) }

// ID is the runner's id, stable for its life: acks carry it
// (invocation.HeaderAck), so that a caller told that this runner is gone
// can fail the invocations it acked, and its service metadata gives it
// under "runner" (invocation.RunnerMetadata). The NATS services instance id
// `nats micro ls` shows changes whenever the served functions do.
func (r *Runner) ID() string { return r.id }

// InstanceID is the NATS services instance id of the runner's current
// registration, which `nats micro ls` shows and $SRV.*.shoal-runner.ID
// subjects address; it changes whenever the served functions do.
func (r *Runner) InstanceID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.svc.Info().ID
}

// Stats returns the runner's figures for one function.
func (r *Runner) Stats(function string) (EndpointStats, bool) {
	ep, ok := (*r.eps.Load())[function]
	if !ok {
		return EndpointStats{}, false
	}
	return ep.stats(), true
}

// Stop leaves the queue groups and waits, until ctx is done, for every
// invocation that reached this runner to be answered; then it closes the
// connection. Invocations still running when ctx is done are answered 503
// unavailable. If NATS is unreachable when Stop starts, Stop first waits
// for the connection to come back (nothing is routed to the runner
// meanwhile); if it drops during the drain, Stop answers what is in
// flight 503 and closes at once. Only if ctx ends before the
// subscriptions have even handed over what was delivered (a deadline of
// milliseconds) are those last invocations lost with the connection;
// their callers time out.
func (r *Runner) Stop(ctx context.Context) error {
	r.stopOnce.Do(func() { r.stopErr = r.stop(ctx) })
	return r.stopErr
}

func (r *Runner) stop(ctx context.Context) error {
	// From now on no change of functions registers again.
	r.mu.Lock()
	r.stopped = true
	svc := r.svc
	r.mu.Unlock()
	var errs []error
	drained := false
	// 0. Stop taking asynchronous calls: those taken run to the end
	//    (counted in unanswered, below); the others wait in the stream
	//    for another runner.
	pulled, delivered := make(chan struct{}), make(chan struct{})
	if r.asyncCancel != nil {
		r.asyncCancel()
		go func() { r.pulling.Wait(); close(pulled) }()
		go func() { r.delivering.Wait(); close(delivered) }()
	} else {
		close(pulled)
		close(delivered)
	}
	// 1. Leaving the queue groups needs the server: nats.go sends no
	//    unsubscription while disconnected and re-subscribes draining
	//    subscriptions when it reconnects, after which the server would
	//    route invocations to a runner that no longer takes them. So wait
	//    for the connection first; while it is down, nothing is routed here.
	if !waitUntil(ctx, r.nc.IsConnected) {
		errs = append(errs, errors.New("NATS was unreachable until the drain deadline"))
	} else {
		reconnects := r.nc.Stats().Reconnects
		// 2. Unsubscribe, in drain mode: the server sends this runner no
		//    new invocations, and those already delivered to it still
		//    reach the endpoint handlers.
		r.mu.Lock()
		staleErr := r.stopStale()
		r.mu.Unlock()
		if err := errors.Join(svc.Stop(), staleErr); err != nil {
			errs = append(errs, fmt.Errorf("stop service: %w", err))
		}
		// 3. Wait until every subscription has drained, i.e. every
		//    delivered invocation has been admitted (or refused). The
		//    acknowledgements of streamed answers still arrive, until
		//    the connection closes.
		subsDrained := waitUntil(ctx, func() bool { return r.nc.NumSubscriptions() <= 1 || !r.nc.IsConnected() })
		switch {
		case r.nc.Stats().Reconnects != reconnects || !r.nc.IsConnected():
			// The connection dropped during the drain (see 1): new
			// invocations may be routed here and dropped until the
			// connection closes, so close it now; what is in flight is
			// answered 503 below.
			errs = append(errs, errors.New("the NATS connection dropped during the drain; in-flight invocations were cut short"))
		case !subsDrained:
			errs = append(errs, errors.New("subscriptions did not drain in time"))
		default:
			// 4. Wait until the pull loops have handed over the last
			//    calls they took, then until every admitted invocation
			//    and call has been answered or settled.
			select {
			case <-pulled:
			case <-ctx.Done():
			}
			drained = waitUntil(ctx, func() bool { return r.unanswered.Load() == 0 })
			select {
			case <-delivered:
			case <-ctx.Done():
				errs = append(errs, errors.New("callback deliveries did not finish in time"))
			}
		}
	}
	// 5. Cancel what still runs. An invocation not answered yet answers
	//    503 unavailable now; functions running past their timeout see
	//    their context end.
	pending := r.unanswered.Load() // before cancel answers them
	r.cancel()
	if !drained && pending > 0 {
		grace, cancel := context.WithTimeout(context.Background(), time.Second)
		waitUntil(grace, func() bool { return r.unanswered.Load() == 0 })
		cancel()
		errs = append(errs, fmt.Errorf("%d invocations were still running and were answered 503", pending))
	}
	// 6. Stop the functions' processes, and the retry loop.
	r.loops.Wait()
	r.mu.Lock()
	for _, ep := range *r.eps.Load() {
		r.retire(ep.def.Load())
	}
	r.mu.Unlock()
	retired := make(chan struct{})
	go func() { r.retiring.Wait(); close(retired) }()
	select {
	case <-retired:
	case <-time.After(retireTimeout + time.Second):
		errs = append(errs, errors.New("functions' processes did not stop in time"))
	}
	// 7. Send the last answers and close.
	if !r.nc.IsConnected() {
		errs = append(errs, errors.New("not connected to NATS: answers not yet sent are lost"))
	} else if err := r.nc.FlushTimeout(5 * time.Second); err != nil {
		errs = append(errs, fmt.Errorf("flush replies: %w", err))
	}
	r.nc.Close()
	if len(errs) > 0 {
		return fmt.Errorf("runner: stop: %w", errors.Join(errs...))
	}
	return nil
}

// waitUntil polls cond until it holds or ctx is done, and reports whether
// it held. Polling keeps the hot path free of shutdown bookkeeping.
func waitUntil(ctx context.Context, cond func() bool) bool {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return cond()
		case <-t.C:
		}
	}
	return true
}
