package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/platform/health"
)

// healthServer answers the probes of a process that serves no HTTP
// otherwise (a runner): GET /healthz while the process runs, GET /readyz
// while its ready check passes. Kubernetes and other supervisors use them.
type healthServer struct {
	srv *http.Server
	// ready is the readiness check; nil until the process has started
	// (not ready).
	ready atomic.Pointer[func() error]
	done  chan struct{}
}

// startHealth serves the probes on addr in the background.
func startHealth(addr string) (*healthServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health: listen on %s: %w", addr, err)
	}
	h := &healthServer{done: make(chan struct{})}
	mux := health.Handler(func() error {
		if check := h.ready.Load(); check != nil {
			return (*check)()
		}
		return errors.New("starting")
	})
	h.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(h.done)
		if err := h.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Error("health endpoint stopped", "error", err)
		}
	}()
	logger.Info("health endpoint listening", "url", "http://"+ln.Addr().String())
	return h, nil
}

// setReady sets the readiness check; nil h does nothing.
func (h *healthServer) setReady(check func() error) {
	if h != nil {
		h.ready.Store(&check)
	}
}

// stop stops serving the probes; nil h does nothing.
func (h *healthServer) stop() {
	if h == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx) // probes are short; past the second they are cut
	<-h.done
}
