package loadgen_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/loadgen"
)

// server counts the requests it receives and answers them with h.
func server(t *testing.T, h func(n int64, w http.ResponseWriter, r *http.Request)) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	srv, count, _ := serverConns(t, h)
	return srv, count
}

// serverConns is server that also counts the connections it accepts.
func serverConns(t *testing.T, h func(n int64, w http.ResponseWriter, r *http.Request)) (*httptest.Server, *atomic.Int64, *atomic.Int64) {
	t.Helper()
	var count, conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h(count.Add(1), w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &count, &conns
}

func pong(_ int64, w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("pong!")) }

func target(srv *httptest.Server) loadgen.Target {
	return loadgen.Target{Addr: srv.Listener.Addr().String(), Path: "/ping", Body: []byte("pong!")}
}

var short = loadgen.Config{Workers: 4, Warmup: 100 * time.Millisecond, Duration: 300 * time.Millisecond, Timeout: 2 * time.Second}

func TestCountsMatchTheServer(t *testing.T) {
	srv, count := server(t, pong)
	var reports atomic.Int64
	cfg := short
	cfg.Duration = 1200 * time.Millisecond
	cfg.Progress = func(loadgen.Progress) { reports.Add(1) }
	res, err := loadgen.HTTP(context.Background(), cfg, target(srv))
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.Warmup == 0 {
		t.Fatalf("requests %d, warm-up %d: want both > 0", res.Requests, res.Warmup)
	}
	if got := uint64(count.Load()); got != res.Requests+res.Warmup {
		t.Errorf("the server received %d requests; the generator counted %d measured + %d warm-up = %d",
			got, res.Requests, res.Warmup, res.Requests+res.Warmup)
	}
	if res.Errors.Total() != 0 {
		t.Errorf("errors %+v %v", res.Errors, res.FirstErrors)
	}
	if res.Latency.Samples != int(res.Requests) || len(res.Samples) != int(res.Requests) {
		t.Errorf("%d samples for %d requests", res.Latency.Samples, res.Requests)
	}
	l := res.Latency
	if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max) {
		t.Errorf("latencies out of order: %+v", l)
	}
	if res.Elapsed < cfg.Duration || res.Elapsed > cfg.Duration+time.Second {
		t.Errorf("elapsed %s for a %s run", res.Elapsed, cfg.Duration)
	}
	if reports.Load() == 0 {
		t.Error("no progress report in 1.3s")
	}
}

func TestCountsWithoutWarmup(t *testing.T) {
	srv, count := server(t, pong)
	cfg := short
	cfg.Warmup = 0
	res, err := loadgen.HTTP(context.Background(), cfg, target(srv))
	if err != nil {
		t.Fatal(err)
	}
	if res.Warmup != 0 || res.Requests == 0 || uint64(count.Load()) != res.Requests {
		t.Errorf("server %d, generator %d (warm-up %d)", count.Load(), res.Requests, res.Warmup)
	}
}

func TestErrorsAreCounted(t *testing.T) {
	cases := []struct {
		name string
		h    func(int64, http.ResponseWriter, *http.Request)
		kind func(loadgen.Errors) uint64
	}{
		{"500", func(_ int64, w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "broken", http.StatusInternalServerError)
		}, func(e loadgen.Errors) uint64 { return e.Status }},
		{"wrong body", func(_ int64, w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte("ping?"))
		}, func(e loadgen.Errors) uint64 { return e.Body }},
		{"longer body", func(_ int64, w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(strings.Repeat("pong!", 1000)))
		}, func(e loadgen.Errors) uint64 { return e.Body }},
		{"connection closed", func(_ int64, w http.ResponseWriter, _ *http.Request) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		}, func(e loadgen.Errors) uint64 { return e.Transport }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, count := server(t, tc.h)
			cfg := short
			cfg.Warmup = 0
			res, err := loadgen.HTTP(context.Background(), cfg, target(srv))
			if err != nil {
				t.Fatal(err)
			}
			got := tc.kind(res.Errors)
			if res.Requests != 0 || got == 0 || got != res.Errors.Total() {
				t.Fatalf("requests %d, errors %+v", res.Requests, res.Errors)
			}
			if got != uint64(count.Load()) {
				t.Errorf("the server answered %d requests; %d errors counted", count.Load(), got)
			}
			if len(res.FirstErrors) == 0 {
				t.Error("no error message kept")
			}
		})
	}
}

// Every third answer is a 500: the errors and the successes add up to
// what the server saw, and the connection stays in use after a 500.
func TestMixedAnswers(t *testing.T) {
	var failed atomic.Int64
	srv, count, conns := serverConns(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if n%3 == 0 {
			failed.Add(1)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		pong(n, w, r)
	})
	cfg := short
	cfg.Warmup = 0
	res, err := loadgen.HTTP(context.Background(), cfg, target(srv))
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors.Status != uint64(failed.Load()) || res.Requests+res.Errors.Status != uint64(count.Load()) {
		t.Errorf("server: %d requests, %d failed; generator: %d ok, errors %+v", count.Load(), failed.Load(), res.Requests, res.Errors)
	}
	if conns.Load() != int64(cfg.Workers) {
		t.Errorf("%d connections for %d workers: keep-alive should have kept one each", conns.Load(), cfg.Workers)
	}
}

func TestChunkedAnswers(t *testing.T) {
	srv, count := server(t, func(_ int64, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		_, _ = w.Write([]byte("po"))
		w.(http.Flusher).Flush() // the rest goes chunked
		_, _ = w.Write([]byte("ng!"))
		w.Header().Set("X-Sum", "5")
	})
	cfg := short
	cfg.Warmup = 0
	res, err := loadgen.HTTP(context.Background(), cfg, target(srv))
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.Errors.Total() != 0 || res.Requests != uint64(count.Load()) {
		t.Errorf("server %d, generator %d, errors %+v %v", count.Load(), res.Requests, res.Errors, res.FirstErrors)
	}
}

func TestConnectionCloseAnswers(t *testing.T) {
	srv, count, conns := serverConns(t, func(_ int64, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = w.Write([]byte("pong!"))
	})
	cfg := short
	cfg.Warmup = 0
	res, err := loadgen.HTTP(context.Background(), cfg, target(srv))
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.Errors.Total() != 0 || res.Requests != uint64(count.Load()) || conns.Load() != count.Load() {
		t.Errorf("server %d requests on %d connections; generator %d, errors %+v %v", count.Load(), conns.Load(), res.Requests, res.Errors, res.FirstErrors)
	}
}

// A server that never answers: the requests in flight at the end are
// cut after Timeout and counted as transport errors.
func TestHungServerIsBounded(t *testing.T) {
	release := make(chan struct{})
	srv, _ := server(t, func(_ int64, _ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	cfg := loadgen.Config{Workers: 2, Duration: 100 * time.Millisecond, Timeout: 200 * time.Millisecond}
	start := time.Now()
	res, err := loadgen.HTTP(context.Background(), cfg, target(srv))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Run took %s", d)
	}
	if res.Requests != 0 || res.Errors.Transport != 2 {
		t.Errorf("requests %d, errors %+v, want 2 transport errors", res.Requests, res.Errors)
	}
}

func TestCancel(t *testing.T) {
	srv, _ := server(t, pong)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := loadgen.HTTP(ctx, loadgen.Config{Workers: 2, Duration: time.Minute}, target(srv))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("err %v after %s", err, time.Since(start))
	}
}

func TestRefusedConnections(t *testing.T) {
	srv, _ := server(t, pong)
	addr := srv.Listener.Addr().String()
	srv.Close()
	res, err := loadgen.HTTP(context.Background(), loadgen.Config{Workers: 2, Duration: 100 * time.Millisecond}, loadgen.Target{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Errors.Transport == 0 || res.Errors.Transport > 100 {
		t.Errorf("requests %d, errors %+v: want a few transport errors, paced", res.Requests, res.Errors)
	}
}

func TestRequesterFunc(t *testing.T) {
	var n atomic.Int64
	res, err := loadgen.Run(context.Background(), loadgen.Config{Workers: 3, Duration: 50 * time.Millisecond},
		func(int) (loadgen.Requester, error) {
			return loadgen.RequesterFunc(func() error {
				if n.Add(1)%2 == 0 {
					return loadgen.Errorf(loadgen.NATS, "nats: timeout")
				}
				return nil
			}), nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests+res.Errors.NATS != uint64(n.Load()) || res.Errors.NATS == 0 {
		t.Errorf("%d calls; requests %d, errors %+v", n.Load(), res.Requests, res.Errors)
	}
}

func TestPercentile(t *testing.T) {
	r := &loadgen.Result{}
	for i := 1; i <= 100; i++ {
		r.Samples = append(r.Samples, time.Duration(i))
	}
	for q, want := range map[float64]time.Duration{0.5: 50, 0.9: 90, 0.99: 99, 1: 100, 0: 1} {
		if got := r.Percentile(q); got != want {
			t.Errorf("p%v = %d, want %d", q*100, got, want)
		}
	}
}

func TestIdleConns(t *testing.T) {
	srv, count := server(t, pong)
	ic, err := loadgen.OpenIdle(context.Background(), target(srv), 50, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if ic.Open() != 50 || ic.Failed != 0 || count.Load() != 50 {
		t.Fatalf("open %d, failed %d (%v), server saw %d", ic.Open(), ic.Failed, ic.FirstError, count.Load())
	}
	if a := ic.Alive(); a != 50 && a != -1 {
		t.Errorf("%d alive of 50", a)
	}
	srv.CloseClientConnections()
	deadline := time.Now().Add(5 * time.Second)
	for ic.Alive() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a := ic.Alive(); a > 0 {
		t.Errorf("%d alive after the server closed them all", a)
	}
}

// TestOpenIdleBounded: connections to a server that accepts and never
// answers do not hold OpenIdle past its context.
func TestOpenIdleBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range accepted {
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	ic, err := loadgen.OpenIdle(ctx, loadgen.Target{Addr: ln.Addr().String(), Path: "/"}, 5, 5)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("OpenIdle returned %s after its context ended at 300ms", d)
	}
	if !errors.Is(err, context.DeadlineExceeded) && ic.Failed != 5 {
		t.Errorf("err %v, failed %d: want the context's end, or every connection failed", err, ic.Failed)
	}
	if ic.Open() != 0 {
		t.Errorf("%d connections kept that were never answered", ic.Open())
	}
	ic.Close()
}

// TestLargeBodyWithoutExpectation: an answer body larger than the
// client's first buffer is read when no body is expected.
func TestLargeBodyWithoutExpectation(t *testing.T) {
	big := strings.Repeat("x", 4096)
	srv, _ := server(t, func(_ int64, w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, big) })
	c := loadgen.NewHTTPClient(loadgen.Target{Addr: srv.Listener.Addr().String(), Path: "/"})
	defer c.Close()
	for range 2 {
		if err := c.Do(); err != nil {
			t.Fatal(err)
		}
	}
}
