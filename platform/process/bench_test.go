//go:build linux

package process_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/process"
)

// benchParallelism is the callers per GOMAXPROCS of BenchmarkHTTP, and
// so the processes per-slot runs: 8 on 2 cores.
const benchParallelism = 4

// BenchmarkHTTP measures GET /ping -> pong! from this binary's server
// mode, side by side, so that their ratios come from one run on one
// machine:
//
//   - direct: a net/http client straight to the server over loopback
//     TCP, the ceiling;
//   - direct-unix: the same over a Unix socket, the ceiling of
//     shared-unix;
//   - shared-port, shared-unix: process.HTTP's ServeHTTP forwarding to
//     one process, over its port or its socket;
//   - per-slot: one process per invocation in flight, as many processes
//     as callers, all started (and warm) before the timer.
//
// Each calls the handler with httptest.NewRecorder, as the runner calls
// it, from GOMAXPROCS*benchParallelism goroutines. Allocations are this
// process's only: the server's are in its own.
func BenchmarkHTTP(b *testing.B) {
	callers := runtime.GOMAXPROCS(0) * benchParallelism
	b.Run("direct", func(b *testing.B) {
		addr := startChild(b, "tcp")
		benchHandler(b, directClient(b, "tcp", addr))
	})
	b.Run("direct-unix", func(b *testing.B) {
		addr := startChild(b, "unix")
		benchHandler(b, directClient(b, "unix", addr))
	})
	b.Run("shared-port", func(b *testing.B) {
		cfg := benchConfig(b)
		cfg.Listen = process.ListenPort
		benchHandler(b, startHTTP(b, cfg))
	})
	b.Run("shared-unix", func(b *testing.B) {
		cfg := benchConfig(b)
		cfg.Listen = process.ListenUnix
		benchHandler(b, startHTTP(b, cfg))
	})
	b.Run("per-slot", func(b *testing.B) {
		cfg := benchConfig(b)
		cfg.PerSlot, cfg.Slots = true, callers
		h := startHTTP(b, cfg)
		warmSlots(b, h, callers)
		benchHandler(b, h)
	})
}

// benchConfig is serverConfig without the test's log: a benchmark's
// processes log nothing worth keeping.
func benchConfig(b *testing.B) process.HTTPConfig {
	cfg := serverConfig(b)
	cfg.Logger = nil
	return cfg
}

// benchHandler calls h with GET /ping from GOMAXPROCS*benchParallelism
// goroutines, and checks each answer.
func benchHandler(b *testing.B, h http.Handler) {
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/ping", nil))
			if rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), pong) {
				b.Errorf("got %d %q, want 200 %q", rec.Code, rec.Body.Bytes(), pong)
				return
			}
		}
	})
}

// warmSlots holds n invocations at once until n processes answered, so
// that per-slot starts its processes before the timer, not in it.
func warmSlots(b *testing.B, h http.Handler, n int) {
	b.Helper()
	pids := map[string]bool{}
	var mu sync.Mutex
	for round := 0; len(pids) < n; round++ {
		if round == 10 {
			b.Fatalf("%d processes answered after %d rounds, want %d", len(pids), round, n)
		}
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				rec := call(h, "GET", "/pid?sleep=100ms", nil, 20*time.Second)
				mu.Lock()
				defer mu.Unlock()
				if rec.Code == 200 {
					pids[rec.Body.String()] = true
				}
			})
		}
		wg.Wait()
	}
}

// startChild runs this binary's server directly, without the process
// package, on a free loopback port ("tcp") or a Unix socket in a new
// directory ("unix"), and returns its address once it answers.
func startChild(b *testing.B, network string) string {
	b.Helper()
	var addr, env string
	switch network {
	case "tcp":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		l.Close()
		addr, env = net.JoinHostPort("127.0.0.1", port), process.EnvPort+"="+port
	case "unix":
		// os.MkdirTemp, not b.TempDir: a socket's path must be short.
		dir, err := os.MkdirTemp("", "bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		addr = filepath.Join(dir, "s.sock")
		env = process.EnvSocket + "=" + addr
	}
	cmd := exec.Command(testBinary(b)[0])
	cmd.Env = []string{envMode + "=server", env}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	client := directClient(b, network, addr)
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec := call(client, "GET", "/ping", nil, time.Second)
		if rec.Code == 200 {
			return addr
		}
		if time.Now().After(deadline) {
			b.Fatalf("the server at %s %s did not answer within 10s: %d %s", network, addr, rec.Code, rec.Body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// directHandler serves a request by sending it with a net/http client to
// a server, as process.HTTP does but with nothing else: no process
// management, no reverse proxy.
type directHandler struct {
	client *http.Client
	base   string
}

// directClient returns a handler that sends requests to the server at
// addr, with a transport like process.HTTP's.
func directClient(b *testing.B, network, addr string) http.Handler {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	rt := &http.Transport{
		Proxy:               nil,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
	}
	b.Cleanup(rt.CloseIdleConnections)
	host := addr
	if network == "unix" {
		host = "localhost"
	}
	return &directHandler{client: &http.Client{Transport: rt}, base: "http://" + host}
}

func (d *directHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, d.base+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	resp, err := d.client.Do(req)
	if err != nil {
		http.Error(w, err.Error(), 502)
		return
	}
	defer resp.Body.Close()
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// BenchmarkExec measures one invocation of an exec function at a time,
// a POST of 1 KiB that the process echoes, side by side:
//
//   - cat: the cheapest process, started directly;
//   - bash-c-cat: the same behind a shell, as most exec functions are;
//   - cat-rlimits: cat with an OpenFiles limit, which starts it through
//     the trampoline (this binary, re-executed; see sys_linux.go): its
//     cost over cat is the trampoline's, which depends on the runner's
//     binary.
func BenchmarkExec(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 64)
	cases := []struct {
		name    string
		command []string
		limits  process.Limits
	}{
		{"cat", []string{"cat"}, process.Limits{}},
		{"bash-c-cat", []string{"bash", "-c", "cat"}, process.Limits{}},
		{"cat-rlimits", []string{"cat"}, process.Limits{OpenFiles: 64}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			e, err := process.NewExec(process.ExecConfig{Config: process.Config{
				Name: "bench", Command: c.command, Dir: b.TempDir(), Limits: c.limits,
			}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := e.Close(ctx); err != nil {
					b.Error(err)
				}
			})
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				e.ServeHTTP(rec, httptest.NewRequest("POST", "/", bytes.NewReader(body)))
				if rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), body) {
					b.Fatalf("got %d, %d bytes %.100q; want 200 and the %d bytes sent", rec.Code, rec.Body.Len(), rec.Body.Bytes(), len(body))
				}
			}
		})
	}
}
