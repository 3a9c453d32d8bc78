// Package loadgen is a closed-loop load generator built for low overhead,
// so that on a small machine, where it shares the CPUs with the servers it
// measures (as wrk does), it takes as little of them as it can.
//
// Run drives a fixed number of workers, each owning one Requester and
// making one request at a time, for a warm-up and then a measured period,
// both bounded by time. It counts every request, classifies failures
// (transport, status, body, NATS) and records the latency of every
// measured request, so percentiles are exact (sorted samples, not a
// histogram) up to MaxSamples. HTTPClient is a minimal HTTP/1.1 keep-alive
// client over one net.Conn (pre-formatted request, Content-Length and
// chunked answers, body checked byte for byte), much cheaper per request
// than net/http's client; IdleConns holds many idle keep-alive
// connections open, for memory measurements.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is the class of a failed request.
type Kind int

// The kinds of failure.
const (
	// Transport is a connection that could not be made, broke, or
	// carried something that is not a valid answer.
	Transport Kind = iota
	// Status is an answer whose status is not a success (HTTP: not 2xx).
	Status
	// Body is a successful answer whose body is not the one expected.
	Body
	// NATS is a NATS request that failed: no responders, a timeout.
	NATS
)

// String names the kind: transport, status, body or nats.
func (k Kind) String() string {
	switch k {
	case Transport:
		return "transport"
	case Status:
		return "status"
	case Body:
		return "body"
	case NATS:
		return "nats"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is a failed request and its kind.
type Error struct {
	Kind Kind
	Err  error
}

// Error returns the kind and the message.
func (e *Error) Error() string { return e.Kind.String() + ": " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error of kind k with a formatted message.
func Errorf(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Err: fmt.Errorf(format, args...)}
}

// KindOf returns the kind of a request's error: an *Error's own, else
// Transport.
func KindOf(err error) Kind {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Kind
	}
	return Transport
}

// Requester makes requests one at a time; each worker of Run owns one.
type Requester interface {
	// Do makes one request and waits for its answer; an error is a
	// failed request, of the kind KindOf tells.
	Do() error
	// Close releases the requester. Run may call it while Do runs, to
	// end a request that overstays Config.Timeout; Do must then return.
	Close() error
}

// RequesterFunc makes a function a Requester whose Close does nothing:
// for requests that bound their own time, like NATS requests with a
// timeout.
type RequesterFunc func() error

// Do calls f.
func (f RequesterFunc) Do() error { return f() }

// Close does nothing.
func (f RequesterFunc) Close() error { return nil }

// Config is what Run does.
type Config struct {
	// Workers is the number of concurrent requesters (connections).
	Workers int
	// Warmup is how long requests are made before measuring; they are
	// counted apart (Result.Warmup).
	Warmup time.Duration
	// Duration is how long requests are measured. Every request started
	// within it is waited for and measured.
	Duration time.Duration
	// Timeout bounds the request each worker has in flight when Duration
	// ends: past it, the requesters are closed. 0 means 10s.
	Timeout time.Duration
	// Progress, if set, is called about once a second, from one
	// goroutine, while Run runs.
	Progress func(Progress)
}

// Progress is what Run reports while it runs.
type Progress struct {
	// Warmup is true during the warm-up.
	Warmup bool
	// Elapsed is the time since the current phase began.
	Elapsed time.Duration
	// Rate is the requests per second completed since the last report
	// (failed ones included).
	Rate float64
}

// Errors counts failed requests by kind.
type Errors struct {
	Transport uint64 `json:"transport"`
	Status    uint64 `json:"status"`
	Body      uint64 `json:"body"`
	NATS      uint64 `json:"nats"`
}

// Total is the number of failed requests.
func (e Errors) Total() uint64 { return e.Transport + e.Status + e.Body + e.NATS }

func (e *Errors) add(k Kind) {
	switch k {
	case Status:
		e.Status++
	case Body:
		e.Body++
	case NATS:
		e.NATS++
	default:
		e.Transport++
	}
}

func (e *Errors) merge(o Errors) {
	e.Transport += o.Transport
	e.Status += o.Status
	e.Body += o.Body
	e.NATS += o.NATS
}

// Latency sums up the latencies of the successful measured requests.
type Latency struct {
	P50, P90, P99, Max, Mean time.Duration
	// Samples is how many latencies the figures come from: every
	// successful measured request, or a uniform sample of MaxSamples of
	// them past that.
	Samples int
}

// Result is what Run measured.
type Result struct {
	// Requests is the number of successful measured requests.
	Requests uint64
	// Errors counts the failed measured requests by kind.
	Errors Errors
	// Warmup is the number of requests made during the warm-up,
	// successful or not.
	Warmup uint64
	// Elapsed is the measured period: from the end of the warm-up to the
	// answer of the last measured request.
	Elapsed time.Duration
	// Latency sums up the successful measured requests' latencies.
	Latency Latency
	// Samples are the measured latencies, sorted (at most MaxSamples).
	Samples []time.Duration
	// FirstErrors are the first few distinct error messages.
	FirstErrors []string
}

// Rate is the successful requests per second of the measured period.
func (r *Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Percentile returns the latency below which a fraction q (0 to 1) of the
// samples fall (nearest rank), or 0 without samples.
func (r *Result) Percentile(q float64) time.Duration { return percentile(r.Samples, q) }

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999999) - 1 // nearest rank: ceil(q*n)-1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// MaxSamples bounds the latencies kept, 16 Mi (128 MiB): beyond it each
// worker keeps a uniform sample (reservoir sampling) of its own share.
const MaxSamples = 1 << 24

// maxFirstErrors is how many distinct error messages a Result keeps.
const maxFirstErrors = 5

// worker is one requester's loop and its figures. Its counter is read
// by the progress reports, on a cache line of its own.
type worker struct {
	done    atomic.Uint64 // requests completed, any phase
	_       [56]byte
	r       Requester
	ok      uint64
	warm    uint64
	errs    Errors
	lat     []time.Duration
	seen    uint64 // successful measured requests offered to lat
	limit   int
	last    time.Time // when the last measured request ended
	firstEr []string
	rng     *rand.PCG
}

// Run makes requests with cfg.Workers requesters, made by newRequester
// before any request, in a closed loop: each worker sends its next
// request when the previous one is answered. It returns what the
// measured period saw. If ctx ends first, the requesters are closed and
// Run returns what it has with ctx's error.
func Run(ctx context.Context, cfg Config, newRequester func(worker int) (Requester, error)) (*Result, error) {
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("loadgen: %d workers: want at least 1", cfg.Workers)
	}
	if cfg.Duration <= 0 || cfg.Warmup < 0 {
		return nil, fmt.Errorf("loadgen: duration %s, warm-up %s: want a positive duration and no negative warm-up", cfg.Duration, cfg.Warmup)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ws := make([]*worker, cfg.Workers)
	closeAll := func() {
		for _, w := range ws {
			if w != nil {
				_ = w.r.Close() // nothing left to report it to
			}
		}
	}
	perWorker := max(MaxSamples/cfg.Workers, 1)
	for i := range ws {
		r, err := newRequester(i)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("loadgen: requester %d: %w", i, err)
		}
		ws[i] = &worker{r: r, limit: perWorker, lat: make([]time.Duration, 0, min(perWorker, 8192)),
			rng: rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))}
	}

	start := time.Now()
	warmEnd := start.Add(cfg.Warmup)
	end := warmEnd.Add(cfg.Duration)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Go(func() { w.loop(&stop, warmEnd, end) })
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()

	// The watchdog and the progress reports, until every worker is done.
	var ctxErr error
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	overdue := time.NewTimer(time.Until(end.Add(timeout)))
	defer overdue.Stop()
	lastTick, lastDone := start, uint64(0)
	cancelled := ctx.Done()
wait:
	for {
		select {
		case <-finished:
			break wait
		case <-cancelled:
			ctxErr = ctx.Err()
			cancelled = nil
			stop.Store(true)
			closeAll()
		case <-overdue.C:
			stop.Store(true)
			closeAll()
		case now := <-tick.C:
			if cfg.Progress == nil {
				continue
			}
			var done uint64
			for _, w := range ws {
				done += w.done.Load()
			}
			p := Progress{Warmup: now.Before(warmEnd), Rate: float64(done-lastDone) / now.Sub(lastTick).Seconds()}
			if p.Warmup {
				p.Elapsed = now.Sub(start)
			} else {
				p.Elapsed = min(now.Sub(warmEnd), cfg.Duration)
			}
			lastTick, lastDone = now, done
			cfg.Progress(p)
		}
	}
	closeAll()

	res := &Result{}
	last := warmEnd
	var samples []time.Duration
	n := 0
	for _, w := range ws {
		n += len(w.lat)
	}
	samples = make([]time.Duration, 0, n)
	var sum time.Duration
	for _, w := range ws {
		res.Requests += w.ok
		res.Warmup += w.warm
		res.Errors.merge(w.errs)
		if w.last.After(last) {
			last = w.last
		}
		samples = append(samples, w.lat...)
		for _, msg := range w.firstEr {
			if len(res.FirstErrors) < maxFirstErrors && !slices.Contains(res.FirstErrors, msg) {
				res.FirstErrors = append(res.FirstErrors, msg)
			}
		}
	}
	slices.Sort(samples)
	for _, d := range samples {
		sum += d
	}
	res.Elapsed = last.Sub(warmEnd)
	res.Samples = samples
	res.Latency = Latency{
		P50: percentile(samples, 0.50), P90: percentile(samples, 0.90), P99: percentile(samples, 0.99),
		Samples: len(samples),
	}
	if len(samples) > 0 {
		res.Latency.Max = samples[len(samples)-1]
		res.Latency.Mean = sum / time.Duration(len(samples))
	}
	return res, ctxErr
}

// loop makes requests until end, or until stop is set.
func (w *worker) loop(stop *atomic.Bool, warmEnd, end time.Time) {
	now := time.Now()
	for now.Before(end) && !stop.Load() {
		measured := !now.Before(warmEnd)
		err := w.r.Do()
		t := time.Now()
		w.done.Add(1)
		switch {
		case !measured:
			w.warm++
		case err != nil:
			w.errs.add(KindOf(err))
			w.last = t
			if len(w.firstEr) < maxFirstErrors {
				if msg := err.Error(); !slices.Contains(w.firstEr, msg) {
					w.firstEr = append(w.firstEr, msg)
				}
			}
		default:
			w.ok++
			w.last = t
			w.record(t.Sub(now))
		}
		if k := KindOf(err); err != nil && (k == Transport || k == NATS) {
			// A server that is not there must not make the loop spin: a
			// short pause, still bounded by end.
			time.Sleep(min(10*time.Millisecond, max(time.Until(end), 0)))
			t = time.Now()
		}
		now = t
	}
}

// record keeps a latency, or samples it once the worker's share of
// MaxSamples is full (reservoir sampling: each of the n seen so far is
// kept with the same probability).
func (w *worker) record(d time.Duration) {
	w.seen++
	if len(w.lat) < w.limit {
		w.lat = append(w.lat, d)
		return
	}
	if j := w.rng.Uint64() % w.seen; j < uint64(w.limit) {
		w.lat[j] = d
	}
}
