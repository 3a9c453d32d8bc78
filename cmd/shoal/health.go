package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoal-dev/shoal/platform/health"
)

// healthServer answers the probes of a process that serves no HTTP
// otherwise (a runner), and its metrics: GET /healthz while the process
// runs, GET /readyz while its ready check passes, GET /metrics in the
// Prometheus format. Kubernetes, Prometheus and shoal up use them.
type healthServer struct {
	srv *http.Server
	// reg holds the process's metrics: Go and process collectors from
	// the start, the runner's once it runs.
	reg *prometheus.Registry
	// ready is the readiness check; nil until the process has started
	// (not ready).
	ready atomic.Pointer[func() error]
	// ln is the listener; serving starts with serve, once.
	ln      net.Listener
	serving sync.Once
	started atomic.Bool
	done    chan struct{}
}

// startHealth serves the probes and metrics on addr in the background.
func startHealth(addr string) (*healthServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health: listen on %s: %w", addr, err)
	}
	h := newHealth(ln)
	h.serve()
	return h, nil
}

// startHealthFD prepares the probes and metrics on the listening socket
// inherited as file descriptor fd (shoal up's workers: see
// workerMetrics); they are served from serve on. The socket is the
// worker slot's, shared with the worker being replaced during a rolling
// restart: a worker takes connections only once it is ready, so that a
// scrape of the slot never reads a starting worker's empty figures.
func startHealthFD(fd int) (*healthServer, error) {
	if fd < 3 {
		return nil, fmt.Errorf("--health-fd %d: not a file descriptor above stderr", fd)
	}
	f := os.NewFile(uintptr(fd), "health listener")
	ln, err := net.FileListener(f) // a copy of the descriptor
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("--health-fd %d: not a listening socket: %w", fd, err)
	}
	return newHealth(ln), nil
}

func newHealth(ln net.Listener) *healthServer {
	h := &healthServer{ln: ln, done: make(chan struct{}), reg: prometheus.NewRegistry()}
	h.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/", health.Handler(func() error {
		if check := h.ready.Load(); check != nil {
			return (*check)()
		}
		return errors.New("starting")
	}))
	mux.Handle("GET /metrics", promhttp.HandlerFor(h.reg, promhttp.HandlerOpts{
		ErrorLog:            promLogger{},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	h.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return h
}

// serve starts taking connections, in the background, until stop; nil h
// does nothing. Calls after the first do nothing.
func (h *healthServer) serve() {
	if h == nil {
		return
	}
	h.serving.Do(func() {
		h.started.Store(true)
		go func() {
			defer close(h.done)
			if err := h.srv.Serve(h.ln); !errors.Is(err, http.ErrServerClosed) {
				logger.Error("health endpoint stopped", "error", err)
			}
		}()
		logger.Info("health endpoint listening", "url", "http://"+h.ln.Addr().String(), "serves", "/healthz /readyz /metrics")
	})
}

// promLogger passes promhttp's errors to the log.
type promLogger struct{}

// Println logs one error of a scrape.
func (promLogger) Println(v ...any) { logger.Warn("metrics", "error", fmt.Sprint(v...)) }

// setReady sets the readiness check; nil h does nothing.
func (h *healthServer) setReady(check func() error) {
	if h != nil {
		h.ready.Store(&check)
	}
}

// register adds c to the metrics served; nil h does nothing.
func (h *healthServer) register(c prometheus.Collector) error {
	if h == nil {
		return nil
	}
	if err := h.reg.Register(c); err != nil {
		return fmt.Errorf("health: register metrics: %w", err)
	}
	return nil
}

// stop stops serving the probes; nil h does nothing. It may be called
// more than once.
func (h *healthServer) stop() {
	if h == nil {
		return
	}
	h.serving.Do(func() {}) // from now on serve does nothing
	if !h.started.Load() {
		_ = h.ln.Close() // never served: nothing else owns it
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx) // probes are short; past the second they are cut
	<-h.done
}
