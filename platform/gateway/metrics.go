package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/platform/traffic"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/token"
)

// The gateway's Prometheus metrics (docs/metrics.md lists them all).
//
// Label values come from the deployed functions only: a request for a
// name that is not deployed counts under function="_unknown", so that
// callers cannot create series at will. Each route carries its metric
// children, made when SetFunctions deploys it, so that the hot path
// neither hashes labels nor allocates: it loads the observer and the
// counter of the status from the route and adds to them.

// Values of the route label.
const (
	routeSync  = "sync"  // /function/NAME
	routeAsync = "async" // /async-function/NAME
)

// routeKinds indexes fnMetrics.kinds: 0 is routeSync, 1 routeAsync.
var routeKinds = [2]string{routeSync, routeAsync}

const (
	kindSync  = 0
	kindAsync = 1
)

// UnknownFunction is the function label of requests for a function that
// is not deployed (404), or that name none. Function names start with a
// letter, so it names no function.
const UnknownFunction = "_unknown"

// StatusClientGone is the code counted for a request whose client went
// away before the answer was written (nginx's 499): nothing was answered.
const StatusClientGone = 499

// Reasons of shoal_gateway_nats_errors_total, as the label says them.
const (
	NATSNoResponders = "no_responders" // no runner serves the function (503 no_runner)
	NATSTimeout      = "timeout"       // no answer within the function's timeout plus grace (504)
	NATSRunnerLost   = "runner_lost"   // the runner was reported gone (502)
	NATSUnavailable  = "unavailable"   // NATS unreachable or the connection closing (503)
	NATSOther        = "other"         // anything else (max_payload exceeded, unexpected errors)
)

var natsReasons = [...]string{NATSNoResponders, NATSTimeout, NATSRunnerLost, NATSUnavailable, NATSOther}

const (
	natsNoResponders = iota
	natsTimeout
	natsRunnerLost
	natsUnavailable
	natsOther
)

// authReasons are the values of shoal_gateway_auth_failures_total's
// reason label: token.AuthError's reasons, and "other" for any other.
var authReasons = []string{
	token.ReasonMissing, token.ReasonMalformed, token.ReasonExpired, token.ReasonInvalid,
	token.ReasonKeyUnavailable, token.ReasonInsufficientScope, "other",
}

// DurationBuckets are the upper bounds, in seconds, of the request and
// invocation duration histograms: sub-millisecond to ten seconds.
var DurationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// metricsHandlerLimit bounds the scrapes of /metrics served at once (the
// route is public, and in shoal up a scrape asks every worker too).
const metricsHandlerLimit = 4

// metrics holds the gateway's collectors and the children of the
// functions deployed.
type metrics struct {
	reg          *prometheus.Registry
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	natsErrors   *prometheus.CounterVec
	authFailures map[string]prometheus.Counter
	// mu serializes the creation and deletion of children.
	mu sync.Mutex
	// unknown counts the requests for functions not deployed.
	unknown *fnMetrics
	// traffic keeps the live figures of GET /system/stats.
	traffic *traffic.Recorder
}

// fnMetrics are the metric children of one deployed function, shared by
// its successive definitions.
type fnMetrics struct {
	m          *metrics
	name       string
	kinds      [2]kindMetrics
	natsErrors [len(natsReasons)]prometheus.Counter
	// traffic is the function's live figures; nil for unknown names.
	traffic *traffic.Series
	// removed is set, under m.mu, once the function is no longer
	// deployed and its series are deleted: invocations still in flight
	// then count into children no longer exported, never new ones.
	removed bool
}

// kindMetrics are a function's children for one route (sync or async).
type kindMetrics struct {
	duration prometheus.Observer
	// codes holds a counter per status code seen so far; replaced whole
	// (copy on write) when a code is seen for the first time.
	codes atomic.Pointer[[]codeCounter]
}

type codeCounter struct {
	code int
	c    prometheus.Counter
}

// discarded receives what in-flight requests of a removed function count
// for a status code they are the first to see.
var discarded = prometheus.NewCounter(prometheus.CounterOpts{Name: "discarded"})

func newMetrics(inFlight func() float64, maxInFlight int64) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_gateway_requests_total",
			Help: "Requests to /function/ (route sync) and /async-function/ (route async), by function and HTTP status code; function=\"_unknown\" for names not deployed, code 499 when the client went away first.",
		}, []string{"function", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shoal_gateway_request_duration_seconds",
			Help:    "Time from a request's arrival at the gateway to its answer, by function and route.",
			Buckets: DurationBuckets,
		}, []string{"function", "route"}),
		natsErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_gateway_nats_errors_total",
			Help: "Invocations that failed on the NATS side, by function and reason: no_responders, timeout, runner_lost, unavailable, other.",
		}, []string{"function", "reason"}),
		authFailures: map[string]prometheus.Counter{},
	}
	auth := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shoal_gateway_auth_failures_total",
		Help: "Requests refused for their bearer token, by reason: missing, malformed, expired, invalid, key_unavailable, insufficient_scope.",
	}, []string{"reason"})
	for _, r := range authReasons {
		m.authFailures[r] = auth.WithLabelValues(r)
	}
	m.reg.MustRegister(
		m.requests, m.duration, m.natsErrors, auth,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shoal_gateway_inflight_requests",
			Help: "Invocations and asynchronous submissions being served, counted against --max-inflight.",
		}, inFlight),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shoal_gateway_inflight_requests_limit",
			Help: "The gateway's limit of requests in flight (--max-inflight); past it, 429.",
		}, func() float64 { return float64(maxInFlight) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.mu.Lock()
	m.unknown = m.newFunction(UnknownFunction)
	m.mu.Unlock()
	// After unknown: the names not deployed have no live figures.
	m.traffic = traffic.New()
	return m
}

// newFunction makes the children of a function; it runs with m.mu held.
func (m *metrics) newFunction(name string) *fnMetrics {
	f := &fnMetrics{m: m, name: name}
	if m.traffic != nil {
		f.traffic = m.traffic.Series(name)
	}
	for i, kind := range routeKinds {
		f.kinds[i].duration = m.duration.WithLabelValues(name, kind)
		f.kinds[i].codes.Store(&[]codeCounter{})
	}
	for i, reason := range natsReasons {
		f.natsErrors[i] = m.natsErrors.WithLabelValues(name, reason)
	}
	return f
}

// functions returns the children of the functions named, reusing those
// in old, and deletes the series of the functions of old not named
// (their counts start again from zero if they come back).
func (m *metrics) functions(names []string, old map[string]*route) map[string]*fnMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]*fnMetrics, len(names))
	for _, name := range names {
		if rt, ok := old[name]; ok {
			out[name] = rt.metrics
		} else if out[name] == nil {
			out[name] = m.newFunction(name)
		}
	}
	m.traffic.Retain(names)
	for name, rt := range old {
		if _, kept := out[name]; !kept && !rt.metrics.removed {
			rt.metrics.removed = true
			labels := prometheus.Labels{"function": name}
			m.requests.DeletePartialMatch(labels)
			m.duration.DeletePartialMatch(labels)
			m.natsErrors.DeletePartialMatch(labels)
		}
	}
	return out
}

// counter returns the counter of requests answered code.
func (k *kindMetrics) counter(f *fnMetrics, kind, code int) prometheus.Counter {
	for _, cc := range *k.codes.Load() {
		if cc.code == code {
			return cc.c
		}
	}
	return k.addCode(f, kind, code)
}

// addCode makes the counter of a code seen for the first time.
func (k *kindMetrics) addCode(f *fnMetrics, kind, code int) prometheus.Counter {
	m := f.m
	m.mu.Lock()
	defer m.mu.Unlock()
	codes := *k.codes.Load()
	for _, cc := range codes {
		if cc.code == code {
			return cc.c
		}
	}
	if f.removed {
		return discarded
	}
	c := m.requests.WithLabelValues(f.name, routeKinds[kind], codeLabel(code))
	next := make([]codeCounter, len(codes), len(codes)+1)
	copy(next, codes)
	next = append(next, codeCounter{code, c})
	k.codes.Store(&next)
	return c
}

// codeLabel is the code label of a status: its decimal digits, or
// "other" outside 100-599.
func codeLabel(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	return strconv.Itoa(code)
}

// authFailure counts a request refused for its token.
func (m *metrics) authFailure(aerr *token.AuthError) {
	c, ok := m.authFailures[aerr.Reason]
	if !ok {
		c = m.authFailures["other"]
	}
	c.Inc()
}

// natsError counts an invocation whose NATS request failed, by the
// reason requestError answers it with.
func (f *fnMetrics) natsError(err error) {
	var reason int
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		reason = natsNoResponders
	case errors.Is(err, errRunnerLost), errors.Is(err, errRunnerLostUnacked):
		reason = natsRunnerLost
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		reason = natsTimeout
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, nats.ErrReconnectBufExceeded), errors.Is(err, nats.ErrDisconnected):
		reason = natsUnavailable
	default:
		reason = natsOther
	}
	f.natsErrors[reason].Inc()
}

// observed wraps the ResponseWriter of an invocation or submission, to
// learn the status answered and the function it went to (and of any
// request the DEBUG log describes, for its status).
type observed struct {
	http.ResponseWriter
	status int
	fn     *fnMetrics
}

// WriteHeader notes the first final status.
func (o *observed) WriteHeader(code int) {
	if o.status == 0 && code >= 200 {
		o.status = code
	}
	o.ResponseWriter.WriteHeader(code)
}

// Write notes the implicit 200 of a body written first.
func (o *observed) Write(b []byte) (int, error) {
	if o.status == 0 {
		o.status = http.StatusOK
	}
	return o.ResponseWriter.Write(b)
}

// Unwrap gives http.ResponseController, and http.MaxBytesReader through
// unwrapWriter, the connection's own writer.
func (o *observed) Unwrap() http.ResponseWriter { return o.ResponseWriter }

var observers = sync.Pool{New: func() any { return new(observed) }}

// observedRoute tells the request's metrics which function it is for;
// route calls it once the name is found among those deployed.
func observedRoute(w http.ResponseWriter, rt *route) {
	if o, ok := w.(*observed); ok {
		o.fn = rt.metrics
	}
}

// observedNATSUnavailable counts a request refused because NATS is
// unreachable, for the function it is for.
func observedNATSUnavailable(w http.ResponseWriter) {
	if o, ok := w.(*observed); ok && o.fn != nil {
		o.fn.natsErrors[natsUnavailable].Inc()
	}
}

// serveObserved serves an invocation (kindSync) or a submission
// (kindAsync), and counts it with its status and duration.
func (g *Gateway) serveObserved(w http.ResponseWriter, r *http.Request, tr *invocation.Trace, kind int) {
	start := time.Now()
	o := observe(w)
	defer g.metrics.done(o, kind, start) // counted even if a handler panics
	if kind == kindSync {
		g.invoke(o, r, tr)
	} else {
		g.submit(o, r, tr)
	}
}

// observe wraps w for a request's metrics, until done.
func observe(w http.ResponseWriter) *observed {
	o := observers.Get().(*observed)
	o.ResponseWriter = w
	return o
}

// done counts a request that started at start, observed through o, and
// recycles o.
func (m *metrics) done(o *observed, kind int, start time.Time) {
	f, status := o.fn, o.status
	*o = observed{}
	observers.Put(o)
	if f == nil {
		f = m.unknown
	}
	if status == 0 {
		status = StatusClientGone
	}
	end := time.Now()
	d := end.Sub(start)
	k := &f.kinds[kind]
	k.counter(f, kind, status).Inc()
	k.duration.Observe(d.Seconds())
	if kind == kindSync && f.traffic != nil {
		f.traffic.Observe(end, status, d)
	}
}

// handler serves GET /metrics: the gateway's metrics, and those
// of extra (nil: none).
func (m *metrics) handler(extra prometheus.Gatherer, log *slog.Logger) http.Handler {
	var g prometheus.Gatherer = m.reg
	if extra != nil {
		g = prometheus.Gatherers{m.reg, extra}
	}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            promLogger{log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: metricsHandlerLimit,
		Timeout:             10 * time.Second,
	})
}

// promLogger passes promhttp's errors to slog.
type promLogger struct{ log *slog.Logger }

// Println logs one error of a scrape.
func (l promLogger) Println(v ...any) { l.log.Warn("metrics", "error", fmt.Sprint(v...)) }
