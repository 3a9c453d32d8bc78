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
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/shoal-dev/shoal"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/token"
)

// Config configures a runner.
type Config struct {
	// Manifest declares the functions; the runner serves those it has a
	// handler for.
	Manifest *manifest.Manifest
	// Builtins are the built-in functions by handler name.
	Builtins map[string]http.Handler
	// Verifier checks the bearer token of every invocation of a function
	// that is not public, again after the gateway: callers may come
	// straight over NATS. It is required when a served function is not
	// public.
	Verifier *token.Verifier
	// Metadata is added to the runner's service metadata (e.g. a worker id).
	Metadata map[string]string
	// Logger receives the runner's log; nil discards it.
	Logger *slog.Logger
}

// Runner serves the functions of a manifest on one NATS connection.
type Runner struct {
	nc       *nats.Conn
	ackFlush *flushGroup
	svc      micro.Service
	verifier *token.Verifier
	log      *slog.Logger
	eps      map[string]*endpoint
	served   []string
	// maxBody bounds a buffered answer so that it fits in a NATS message.
	maxBody int

	// id is the service instance id; ackHeader, the header of every ack,
	// carries it. Messages are encoded, never modified, once built, so
	// the acks share it.
	id        string
	ackHeader nats.Header

	// ctx is the parent of every invocation's context; cancel ends the
	// invocations still running when a stop runs out of time.
	ctx    context.Context
	cancel context.CancelFunc
	// unanswered counts admitted invocations whose caller has no answer yet.
	unanswered atomic.Int64
	stopOnce   sync.Once
	stopErr    error
}

// replyHeaderRoom is kept free of a NATS message for the reply's headers
// when bounding an answer's body.
const replyHeaderRoom = 64 << 10

// Start registers the runner with the NATS services framework and begins
// serving. The runner takes ownership of nc: Stop drains and closes it.
// nc must serve this runner alone: Stop waits until every subscription on
// it has drained.
func Start(nc *nats.Conn, cfg Config) (*Runner, error) {
	if cfg.Manifest == nil {
		return nil, errors.New("runner: no manifest")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runner{
		nc:       nc,
		ackFlush: &flushGroup{nc: nc},
		verifier: cfg.Verifier,
		log:      log,
		eps:      map[string]*endpoint{},
		maxBody:  max(int(nc.MaxPayload())-replyHeaderRoom, 0),
		ctx:      ctx,
		cancel:   cancel,
	}
	// Build every endpoint before registering: micro may ask for stats
	// as soon as the service exists, and r.eps is read-only from then on.
	var served []*endpoint
	for _, fn := range cfg.Manifest.Functions {
		h, ok := cfg.Builtins[fn.Handler.Builtin]
		if !ok {
			log.Warn("function not served: this runner has no handler for it", "function", fn.Name, "handler", fn.Handler.String())
			continue
		}
		if !fn.Public && cfg.Verifier == nil {
			cancel()
			return nil, fmt.Errorf("runner: function %q needs a token, and the runner has no token verifier configured", fn.Name)
		}
		ep := &endpoint{r: r, fn: fn, handler: h, limit: int64(fn.Concurrency)}
		r.eps[fn.Name] = ep
		r.served = append(r.served, fn.Name)
		served = append(served, ep)
	}
	meta := map[string]string{"pid": strconv.Itoa(os.Getpid())}
	if host, err := os.Hostname(); err == nil {
		meta["host"] = host
	}
	for k, v := range cfg.Metadata {
		meta[k] = v
	}
	svc, err := micro.AddService(nc, micro.Config{
		Name:         invocation.ServiceName,
		Version:      shoal.Version,
		Description:  "Shoal function runner",
		Metadata:     meta,
		QueueGroup:   invocation.QueueGroup,
		StatsHandler: r.endpointStats,
		ErrorHandler: func(_ micro.Service, err *micro.NATSError) {
			log.Error("nats subscription error", "subject", err.Subject, "error", err.Description)
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("runner: register service: %w", err)
	}
	r.svc = svc
	r.id = svc.Info().ID
	r.ackHeader = invocation.NewAckMsg("", r.id).Header
	for _, ep := range served {
		if err := svc.AddEndpoint(ep.fn.Name, ep,
			micro.WithEndpointSubject(invocation.Subject(ep.fn.Name)),
			micro.WithEndpointMetadata(endpointMetadata(ep.fn)),
		); err != nil {
			_ = svc.Stop()
			cancel()
			return nil, fmt.Errorf("runner: add endpoint for function %q: %w", ep.fn.Name, err)
		}
	}
	// Return once the server has the subscriptions, so that an invocation
	// sent after Start finds this runner.
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		_ = svc.Stop()
		cancel()
		return nil, fmt.Errorf("runner: confirm subscriptions with the NATS server: %w", err)
	}
	return r, nil
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

// Functions returns the names of the functions this runner serves.
func (r *Runner) Functions() []string { return r.served }

// ID is the runner's service instance id, as `nats micro ls` shows it and
// as acks carry it (invocation.HeaderAck): a caller told that this runner
// is gone can fail the invocations it acked.
func (r *Runner) ID() string { return r.id }

// Stats returns the runner's figures for one function.
func (r *Runner) Stats(function string) (EndpointStats, bool) {
	ep, ok := r.eps[function]
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
	var errs []error
	drained := false
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
		if err := r.svc.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop service: %w", err))
		}
		// 3. Wait until every subscription has drained, i.e. every
		//    delivered invocation has been admitted (or refused).
		subsDrained := waitUntil(ctx, func() bool { return r.nc.NumSubscriptions() == 0 || !r.nc.IsConnected() })
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
			// 4. Wait until every admitted invocation has been answered.
			drained = waitUntil(ctx, func() bool { return r.unanswered.Load() == 0 })
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
	// 6. Send the last answers and close.
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
