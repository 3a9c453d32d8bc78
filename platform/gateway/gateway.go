// Package gateway is Shoal's HTTP front door: it routes /function/NAME/...
// to the function's NATS subject as one request and writes the runner's
// answer back as the HTTP response.
//
// Failures have exact, documented answers (docs/http-api.md): 404 for a
// function not in the manifest, 503 at once when no runner serves it, 504
// past its timeout, 413 for a body over the limit (never forwarded), 429
// when the runners reached are at their concurrency limit, and the
// function's own status otherwise. Every error is JSON of one shape,
// {"error": {"code": "...", "message": "..."}}.
//
// # Runners that die
//
// A runner that dies with invocations in flight never answers them, and
// on its own the gateway can only wait for the function's timeout. With
// [Config.AckRunners] on, every invocation asks the runner that takes it
// for an ack (Shoal-Ack, docs/nats-api.md), so the gateway knows which
// runner runs what; a process that learns a runner is gone (`shoal up`
// sees its worker exit) calls [Gateway.RunnerLost], and the invocations
// that runner took are answered 502 runner_lost at once.
package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/callback"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/console"
	"github.com/shoal-dev/shoal/platform/health"
	"github.com/shoal-dev/shoal/token"
)

// DefaultMaxBody is the default limit on a request body: 8 MiB.
const DefaultMaxBody = 8 << 20

// DefaultMaxInFlight is the default limit on invocations in flight at one
// gateway, counted from when the body has been read until the answer is
// written. Each holds its body and answer in memory, so the limit bounds
// that memory: at most MaxInFlight × (MaxBody + answer) bytes.
const DefaultMaxInFlight = 1024

// timeoutGrace is how much longer than a function's timeout the gateway
// waits: the runner answers 504 itself at the timeout, so the gateway's
// own deadline only fires when the runner is gone.
const timeoutGrace = 2 * time.Second

// overloadRetries is how many more runners the gateway tries when the one
// reached is at its concurrency limit. A refusal is immediate and nothing
// ran, so retrying is safe and spreads load in a busy queue group.
const overloadRetries = 2

// Config configures a gateway.
type Config struct {
	// NATS is the connection invocations travel on. The gateway takes
	// ownership: Shutdown closes it. Connect it with
	// nats.ReconnectBufSize(-1), so that a request sent while NATS is
	// unreachable fails at once (503) instead of waiting in a buffer.
	NATS *nats.Conn
	// Manifest declares the routable functions at start; nil starts with
	// none. [Gateway.SetFunctions] replaces them live (the catalog).
	Manifest *manifest.Manifest
	// MaxBody limits a request body in bytes; 0 means DefaultMaxBody.
	MaxBody int64
	// MaxInFlight limits the invocations in flight; past it the gateway
	// answers 429 overloaded at once. 0 means DefaultMaxInFlight.
	MaxInFlight int
	// Verifier checks the bearer token of every invocation of a function
	// that is not public; it is required when the manifest has such a
	// function.
	Verifier *token.Verifier
	// JWKS returns the JSON Web Key Set served at /.well-known/jwks.json:
	// the public keys Shoal's tokens are signed with. nil serves an empty
	// set.
	JWKS func() ([]byte, error)
	// AckRunners makes every invocation ask the runner that takes it for
	// an ack, so that [Gateway.RunnerLost] can fail at once the
	// invocations of a runner that is gone. A Shoal runner acks an
	// invocation still running after its ack delay (10 ms), which costs an
	// extra NATS message for those; leave it off when nothing calls
	// RunnerLost.
	AckRunners bool
	// Workers, when set, answers GET /system/workers with the status of
	// the worker processes behind this gateway (shoal up's supervisor),
	// as JSON. The route needs a token holding SystemPermission.
	Workers func(context.Context) (any, error)
	// Functions, when set, answers GET /system/functions with the
	// deployed functions and the runners serving each, as JSON. The
	// route needs a token holding SystemPermission.
	Functions func(context.Context) (any, error)
	// Ready, when set, is part of GET /readyz: the gateway is ready when
	// it is connected to NATS and Ready returns nil (e.g. once the
	// catalog is loaded).
	Ready func() error
	// SystemPermission is the permission the GET /system/ routes
	// require; default DefaultSystemPermission.
	SystemPermission string
	// SystemWritePermission is the permission the /system/ routes that
	// act require (re-driving and discarding dead-lettered calls);
	// default DefaultSystemWritePermission.
	SystemWritePermission string
	// Calls, when set, takes asynchronous calls at
	// /async-function/NAME and answers GET /calls/ID; nil answers them
	// 501.
	Calls *calls.Queue
	// Operator, when set, is a JetStream context allowed to read,
	// re-drive and discard dead-lettered calls (shoal up's admin
	// connection): the console's GET /system/dlq, POST
	// /system/dlq/ID/retry and DELETE /system/dlq/ID. The gateway role
	// may not: dead letters hold the callers' requests with their tokens,
	// and runners trust a re-driven call's submission time. Nil answers
	// those routes 501.
	Operator jetstream.JetStream
	// Callbacks decides which X-Callback-Url a submission may give; nil
	// allows public addresses only (callback.ParsePolicy).
	Callbacks *callback.Policy
	// Metrics, when set, is gathered with the gateway's own metrics at
	// GET /metrics (shoal up adds its workers' metrics this way).
	Metrics prometheus.Gatherer
	// Logger receives the gateway's log; nil discards it.
	Logger *slog.Logger
}

// MaxHeaderBytes limits the request line and headers of one request; a
// larger request is refused with 431 before any of it reaches a function.
// Tokens are at most 8 KiB (see the token package), well inside it.
const MaxHeaderBytes = 64 << 10

// Gateway serves the HTTP API.
type Gateway struct {
	nc *nats.Conn
	// routes maps function names to routes; replaced whole by
	// SetFunctions, never modified. setMu serializes SetFunctions, so
	// that each carries the metrics of the routes it replaces over.
	routes  atomic.Pointer[map[string]*route]
	setMu   sync.Mutex
	maxBody int64
	// inFlight counts invocations being served, against maxInFlight.
	inFlight    atomic.Int64
	maxInFlight int64
	log         *slog.Logger
	verifier    *token.Verifier
	jwks        func() ([]byte, error)
	ready       func() error
	calls       *calls.Queue
	operator    jetstream.JetStream
	callbacks   *callback.Policy
	// systemPerms and systemWritePerms are the operator permissions
	// reading and acting on /system/ routes need.
	systemPerms      []string
	systemWritePerms []string
	mux              http.Handler
	srv              *http.Server
	metrics          *metrics

	// replies receives the replies of invocations, and their acks when
	// acks are on.
	replies *replyMux
	// id tells this gateway's stats requests and replies from other
	// gateways' (HeaderGateway); statsSub receives theirs (fleet.go).
	id       string
	statsSub *nats.Subscription
}

// route is a routable function with what the hot path needs precomputed.
type route struct {
	fn      manifest.Function
	subject string
	wait    time.Duration
	// unusable, when set, answers every invocation: the function needs
	// a token and this gateway verifies none.
	unusable *invocation.Error
	// metrics are the function's metric children.
	metrics *fnMetrics
}

// New returns a gateway for the functions of cfg.Manifest.
func New(cfg Config) (*Gateway, error) {
	if cfg.NATS == nil {
		return nil, errors.New("gateway: a NATS connection is required")
	}
	g := &Gateway{
		nc:        cfg.NATS,
		maxBody:   cfg.MaxBody,
		log:       cfg.Logger,
		verifier:  cfg.Verifier,
		jwks:      cfg.JWKS,
		ready:     cfg.Ready,
		calls:     cfg.Calls,
		operator:  cfg.Operator,
		callbacks: cfg.Callbacks,
	}
	if g.callbacks == nil {
		g.callbacks, _ = callback.ParsePolicy(nil) // no entries: the default policy
	}
	if g.maxBody <= 0 {
		g.maxBody = DefaultMaxBody
	}
	g.maxInFlight = int64(cfg.MaxInFlight)
	if g.maxInFlight <= 0 {
		g.maxInFlight = DefaultMaxInFlight
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	g.metrics = newMetrics(func() float64 { return float64(g.inFlight.Load()) }, g.maxInFlight)
	if cfg.Manifest != nil {
		for _, fn := range cfg.Manifest.Functions {
			if !fn.Public && g.verifier == nil {
				return nil, fmt.Errorf("gateway: function %q needs a token, and the gateway has no token verifier configured", fn.Name)
			}
		}
		g.SetFunctions(cfg.Manifest.Functions)
	} else {
		g.SetFunctions(nil)
	}
	replies, err := newReplyMux(g.nc, cfg.AckRunners)
	if err != nil {
		return nil, fmt.Errorf("gateway: subscribe to the reply inbox: %w", err)
	}
	g.replies = replies
	g.id = nuid.Next()
	if err := g.subscribeStats(); err != nil {
		_ = replies.sub.Unsubscribe() // the error that matters is err
		return nil, err
	}
	if mp := g.nc.MaxPayload(); mp > 0 && mp < g.maxBody {
		g.log.Warn("the NATS server's max_payload is below the body limit; larger bodies will be refused with 413",
			"max_payload", mp, "max_body", g.maxBody)
	}

	r := chi.NewRouter()
	r.Get("/.well-known/jwks.json", g.serveJWKS)
	probes := health.Handler(g.readiness)
	r.Get("/healthz", probes.ServeHTTP)
	r.Get("/readyz", probes.ServeHTTP)
	r.Get("/metrics", g.metrics.handler(cfg.Metrics, g.log).ServeHTTP)
	g.systemPerms = []string{cmp.Or(cfg.SystemPermission, DefaultSystemPermission)}
	g.systemWritePerms = []string{cmp.Or(cfg.SystemWritePermission, DefaultSystemWritePermission)}
	r.Get("/system/whoami", g.serveWhoami)
	if cfg.Workers != nil {
		r.Get("/system/workers", g.serveSystem(cfg.Workers))
	}
	if cfg.Functions != nil {
		r.Get("/system/functions", g.serveSystem(cfg.Functions))
	}
	r.Get("/system/stats", g.serveStats)
	r.Get("/system/calls", g.serveCalls)
	r.Get("/system/dlq", g.serveDLQ)
	r.Post("/system/dlq/{id}/retry", g.serveRetry)
	r.Delete("/system/dlq/{id}", g.serveDiscard)
	// The web console, and the way to it.
	for path, status := range map[string]int{"/": http.StatusFound, "/ui": http.StatusMovedPermanently} {
		redirect := http.RedirectHandler(console.Prefix, status).ServeHTTP
		r.Get(path, redirect)
		r.Head(path, redirect)
	}
	r.Handle(console.Prefix+"*", console.Handler())
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		invocation.Errorf(http.StatusNotFound, invocation.CodeNotFound, "no route for %s %s; functions are at /function/NAME", r.Method, r.URL.Path).WriteHTTP(w)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if r.Match(chi.NewRouteContext(), m, req.URL.Path) {
				allow = append(allow, m)
			}
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		invocation.Errorf(http.StatusMethodNotAllowed, invocation.CodeMethodNotAllowed, "%s %s: the route answers %s", req.Method, req.URL.Path, strings.Join(allow, ", ")).WriteHTTP(w)
	})
	g.mux = r
	g.srv = &http.Server{
		Handler:           g,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
	return g, nil
}

// SetFunctions replaces the routable functions, at once for the next
// request: a new function is routable, a removed one answers 404, and a
// changed timeout or permission list applies. Invocations in flight keep
// the definition they started with. A function that needs a token when
// this gateway verifies none answers 503 (and is logged).
func (g *Gateway) SetFunctions(fns []manifest.Function) {
	g.setMu.Lock()
	defer g.setMu.Unlock()
	var old map[string]*route
	if p := g.routes.Load(); p != nil {
		old = *p
	}
	names := make([]string, len(fns))
	for i, fn := range fns {
		names[i] = fn.Name
	}
	fms := g.metrics.functions(names, old)
	routes := make(map[string]*route, len(fns))
	for _, fn := range fns {
		rt := &route{fn: fn, subject: invocation.Subject(fn.Name), wait: fn.Timeout + timeoutGrace, metrics: fms[fn.Name]}
		if !fn.Public && g.verifier == nil {
			g.log.Error("function needs a token and this gateway verifies none; it answers 503", "function", fn.Name)
			rt.unusable = invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable,
				"function %q needs a token and this gateway is not configured to verify tokens", fn.Name)
		}
		routes[fn.Name] = rt
	}
	g.routes.Store(&routes)
}

// readiness is the gateway's /readyz check: it can route invocations
// when connected to NATS and its Ready check (functions loaded) passes.
func (g *Gateway) readiness() error {
	if !g.nc.IsConnected() {
		return errors.New("not connected to NATS")
	}
	if g.ready != nil {
		return g.ready()
	}
	return nil
}

// ServeHTTP serves the gateway's routes. Every answer carries the
// request's X-Request-Id and the gateway's traceresponse (see trace.go).
// Invocations under /function/ and /async-function/, and calls under
// /calls/, are dispatched before the router: a function takes any method,
// including ones chi's method table does not know (it answers 405 to
// those).
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tr := startTrace(w, r)
	if g.log.Enabled(r.Context(), slog.LevelDebug) {
		g.serveLogged(w, r, &tr)
		return
	}
	g.serve(w, r, &tr)
}

// serve dispatches a request whose trace has started.
func (g *Gateway) serve(w http.ResponseWriter, r *http.Request, tr *invocation.Trace) {
	switch p := r.URL.Path; {
	case strings.HasPrefix(p, functionPrefix):
		g.serveObserved(w, r, tr, kindSync)
	case strings.HasPrefix(p, asyncPrefix):
		g.serveObserved(w, r, tr, kindAsync)
	case strings.HasPrefix(p, callsPrefix):
		g.serveCall(w, r, tr)
	default:
		g.mux.ServeHTTP(w, r)
	}
}

// Serve accepts HTTP connections on ln until Shutdown.
func (g *Gateway) Serve(ln net.Listener) error {
	if err := g.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("gateway: serve: %w", err)
	}
	return nil
}

// RunnerLost tells the gateway that the runner whose id (its stable id,
// runner.Runner.ID, which its acks carry) is runner has stopped for good, e.g. its
// process exited: every invocation it took and has not answered is
// answered 502 runner_lost at once, and acks it may still have in transit
// fail their invocations too. The invocations are not retried, as the
// function may have run in part. It returns how many invocations it
// failed. It is safe to call at any time, from any goroutine; without
// [Config.AckRunners] the gateway does not know which runner took what,
// and it does nothing.
func (g *Gateway) RunnerLost(runner string) int {
	if !g.replies.acks || runner == "" {
		return 0
	}
	n := g.replies.runnerLost(runner)
	if n > 0 {
		g.log.Warn("runner lost; its invocations in flight were answered 502", "runner", runner, "invocations", n)
	}
	return n
}

// Shutdown stops accepting requests, waits until ctx is done for those in
// flight to be answered, stops answering other gateways' stats requests,
// then closes the NATS connection.
func (g *Gateway) Shutdown(ctx context.Context) error {
	// Stops the listener, closes idle connections and waits for active
	// requests, which still have NATS to finish on.
	err := g.srv.Shutdown(ctx)
	if err != nil {
		// Out of time: cut what is left (including connections that
		// never sent a request, which Shutdown leaves for 5 s).
		_ = g.srv.Close()
	}
	// Other gateways stop counting this one's figures; the subscription
	// needs the connection to end cleanly.
	if err := g.statsSub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		g.log.Warn("unsubscribe from stats requests", "subject", StatsSubject, "error", err)
	}
	g.nc.Close()
	if err != nil {
		return fmt.Errorf("gateway: drain in-flight requests: %w", err)
	}
	return nil
}

// serveJWKS answers GET /.well-known/jwks.json with the public keys tokens
// are signed with, so that other services can verify Shoal's tokens.
func (g *Gateway) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	body := []byte(`{"keys":[]}`)
	if g.jwks != nil {
		b, err := g.jwks()
		if err != nil {
			g.log.Error("cannot encode the JWKS", "error", err)
			invocation.Errorf(http.StatusInternalServerError, invocation.CodeInternal, "cannot encode the key set").WriteHTTP(w)
			return
		}
		body = b
	}
	h := w.Header()
	h.Set("Content-Type", "application/jwk-set+json")
	h.Set("Cache-Control", "public, max-age=60")
	_, _ = w.Write(body) // the client went away; nothing to do
}
