package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/invocation"
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
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeStatusOK(w) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		err := errors.New("starting")
		if check := h.ready.Load(); check != nil {
			err = (*check)()
		}
		if err != nil {
			invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable, "not ready: %v", err).WriteHTTP(w)
			return
		}
		writeStatusOK(w)
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

func writeStatusOK(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte("{\"status\":\"ok\"}\n")) // the prober went away; nothing to do
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
