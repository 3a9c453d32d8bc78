package runner

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/calls"
)

// The runner's Prometheus metrics (docs/metrics.md lists them all). Most
// are read from the endpoints' own counters when scraped ([Runner.Collector]);
// the hot path adds one atomic increment and one histogram observation
// per invocation.

// Values of the outcome label of shoal_runner_invocations_total.
const (
	// OutcomeOK: the function answered, whatever status it chose.
	OutcomeOK = "ok"
	// OutcomeError: the runner answered an error in the function's
	// place (token refused, malformed invocation, answer too large,
	// runner shutting down).
	OutcomeError = "error"
	// OutcomeTimeout: the function did not answer within its timeout.
	OutcomeTimeout = "timeout"
	// OutcomePanic: the function panicked.
	OutcomePanic = "panic"
	// OutcomeRejected: refused on arrival, the function being at its
	// concurrency limit on this runner (429 overloaded); it did not run.
	OutcomeRejected = "rejected"
)

// outcomes indexes endpointMetrics.outcomes.
var outcomes = [...]string{OutcomeOK, OutcomeError, OutcomeTimeout, OutcomePanic}

const (
	outcomeOK = iota
	outcomeError
	outcomeTimeout
	outcomePanic
)

// settlements are the values of the result label of
// shoal_runner_async_calls_settled_total, calls.Settled*.
var settlements = [...]string{calls.SettledSucceeded, calls.SettledRetried, calls.SettledFailed, calls.SettledInterrupted, calls.SettledHandedBack}

// DurationBuckets are the upper bounds, in seconds, of the invocation
// duration histogram: sub-millisecond to ten seconds.
var DurationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// endpointMetrics are what an endpoint counts for the metrics alone.
type endpointMetrics struct {
	outcomes [len(outcomes)]atomic.Uint64
	duration prometheus.Histogram
	taken    atomic.Uint64
	settled  [len(settlements)]atomic.Uint64
}

func (m *endpointMetrics) init(function string) {
	m.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:        durationName,
		Help:        durationHelp,
		Buckets:     DurationBuckets,
		ConstLabels: prometheus.Labels{"function": function},
	})
}

// done counts an answered invocation or asynchronous call: ierr is the
// error answered in the function's place, if any; took, the time from
// admission to answer.
func (m *endpointMetrics) done(ierr *invocation.Error, took time.Duration) {
	o := outcomeOK
	if ierr != nil {
		switch ierr.Code {
		case invocation.CodeTimeout:
			o = outcomeTimeout
		case invocation.CodeFunctionPanic:
			o = outcomePanic
		default:
			o = outcomeError
		}
	}
	m.outcomes[o].Add(1)
	m.duration.Observe(took.Seconds())
}

// settledAs counts an asynchronous call's attempt settled as result.
func (m *endpointMetrics) settledAs(result string) {
	for i, s := range settlements {
		if s == result {
			m.settled[i].Add(1)
			return
		}
	}
}

// asyncSettled is the calls.Worker's Settled hook.
func (r *Runner) asyncSettled(function, result string) {
	if ep, ok := (*r.eps.Load())[function]; ok {
		ep.metrics.settledAs(result)
	}
}

const (
	durationName = "shoal_runner_invocation_duration_seconds"
	durationHelp = "Time from an invocation's admission to its answer, by function; asynchronous calls included."
)

var (
	invocationsDesc = prometheus.NewDesc("shoal_runner_invocations_total",
		"Invocations that reached this runner, by function and outcome: ok (the function answered, any status), error (the runner answered in its place), timeout, panic, rejected (at its concurrency limit; did not run). Asynchronous calls included.",
		[]string{"function", "outcome"}, nil)
	inUseDesc = prometheus.NewDesc("shoal_runner_concurrency_in_use",
		"Invocations running now, by function, including any still running past their timeout.",
		[]string{"function"}, nil)
	limitDesc = prometheus.NewDesc("shoal_runner_concurrency_limit",
		"The function's concurrency limit on this runner (fn.yaml concurrency).",
		[]string{"function"}, nil)
	takenDesc = prometheus.NewDesc("shoal_runner_async_calls_taken_total",
		"Asynchronous calls this runner pulled from the queue to run, by function.",
		[]string{"function"}, nil)
	settledDesc = prometheus.NewDesc("shoal_runner_async_calls_settled_total",
		"Attempts of asynchronous calls this runner settled, by function and result: succeeded, retried (failed, attempts left), failed (dead-lettered), interrupted (handed back at shutdown), handed_back (could not be recorded; delivered again).",
		[]string{"function", "result"}, nil)
)

// Collector returns the runner's Prometheus metrics, read at each scrape
// from the functions it serves now: a function no longer served leaves
// the output (its counts start again from zero if it comes back). The
// collector is unchecked (it describes nothing): the set of functions
// changes at run time.
func (r *Runner) Collector() prometheus.Collector { return collector{r} }

type collector struct{ r *Runner }

// Describe describes nothing: the collector is unchecked.
func (collector) Describe(chan<- *prometheus.Desc) {}

// Collect sends the metrics of every function served.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	async := c.r.worker != nil
	for name, ep := range *c.r.eps.Load() {
		m := &ep.metrics
		for i, o := range outcomes {
			ch <- prometheus.MustNewConstMetric(invocationsDesc, prometheus.CounterValue, float64(m.outcomes[i].Load()), name, o)
		}
		ch <- prometheus.MustNewConstMetric(invocationsDesc, prometheus.CounterValue, float64(ep.rejected.Load()), name, OutcomeRejected)
		ch <- prometheus.MustNewConstMetric(inUseDesc, prometheus.GaugeValue, float64(ep.inFlight.Load()), name)
		ch <- prometheus.MustNewConstMetric(limitDesc, prometheus.GaugeValue, float64(ep.def.Load().fn.Concurrency), name)
		m.duration.Collect(ch)
		if async && !ep.def.Load().fn.Async.Disabled {
			ch <- prometheus.MustNewConstMetric(takenDesc, prometheus.CounterValue, float64(m.taken.Load()), name)
			for i, s := range settlements {
				ch <- prometheus.MustNewConstMetric(settledDesc, prometheus.CounterValue, float64(m.settled[i].Load()), name, s)
			}
		}
	}
}
