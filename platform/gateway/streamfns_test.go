package gateway_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/process"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
)

// serveSSE is an http function on PORT: / sends two events 300 ms
// apart, /small answers at once, /bulk?n=N answers bulkBytes(N), /crash
// sends an event and exits.
func serveSSE() {
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", sse)
	mux.HandleFunc("/small", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "small") })
	mux.HandleFunc("/bulk", bulk)
	mux.HandleFunc("/crash", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "data: one\n\n")
		_ = http.NewResponseController(w).Flush()
		time.Sleep(100 * time.Millisecond)
		os.Exit(3)
	})
	_ = http.Serve(l, mux)
}

// streamPayload is the NATS max_payload of the streaming tests: small,
// so that answers larger than a message stay quick to send.
const streamPayload = 256 << 10

// sseGap is the time between sse's events.
const sseGap = 300 * time.Millisecond

// sse writes an event, flushes, and writes the second sseGap later.
func sse(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	_, _ = io.WriteString(w, "data: one\n\n")
	_ = http.NewResponseController(w).Flush()
	select {
	case <-time.After(sseGap):
	case <-r.Context().Done():
		return
	}
	_, _ = io.WriteString(w, "data: two\n\n")
}

// bulkBytes is the answer of bulk: n pseudo-random bytes, the same for
// the same n.
func bulkBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16)}).Read(b)
	return b
}

// bulk answers bulkBytes(n) in writes of 64 KiB, without flushing.
func bulk(w http.ResponseWriter, r *http.Request) {
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	b := bulkBytes(n)
	w.Header().Set("Content-Type", "application/octet-stream")
	for len(b) > 0 {
		k := min(len(b), 64<<10)
		if _, err := w.Write(b[:k]); err != nil {
			return
		}
		b = b[k:]
	}
}

// streamManifest declares the streaming tests' functions; ssep is sse,
// small and bulk served by a process (the test binary).
const streamManifest = `version: 1
functions:
  sse: {handler: {builtin: sse}, public: true}
  ssep: {handler: {builtin: ssep}, public: true}
  bulk: {handler: {builtin: bulk}, public: true}
  quick: {handler: {builtin: quick}, public: true}
  firehose: {handler: {builtin: firehose}, public: true, timeout: 30s}
  tick: {handler: {builtin: tick}, public: true, timeout: 10s}
  tickshort: {handler: {builtin: tick}, public: true, timeout: 500ms}
  stubborn: {handler: {builtin: stubborn}, public: true, timeout: 500ms}
  late: {handler: {builtin: late}, public: true, timeout: 10s}
`

// firehoseTotal is what firehose writes in all.
const firehoseTotal = 64 << 20

// streamPlatform is a broker with a small max_payload, a runner of the
// streaming functions and a gateway with runner acks on, as `shoal up`
// runs it.
type streamPlatform struct {
	url     string
	runner  *runner.Runner
	broker  *broker.Server
	gateway *gateway.Gateway
	// written counts the bytes firehose wrote.
	written atomic.Int64
	// cancelled receives when tick saw its context end.
	cancelled chan time.Time
}

func startStreaming(t testing.TB) *streamPlatform {
	t.Helper()
	p := &streamPlatform{cancelled: make(chan time.Time, 10)}
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), MaxPayload: streamPayload})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	p.broker = s

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	proc, err := process.StartHTTP(ctx, process.HTTPConfig{Config: process.Config{
		Name: "ssep", Command: []string{self}, Dir: t.TempDir(), Env: []string{envMode + "=sse"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = proc.Close(ctx)
	})

	fns := map[string]http.Handler{
		"sse":  http.HandlerFunc(sse),
		"ssep": proc,
		"bulk": http.HandlerFunc(bulk),
		"quick": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, "quick")
			_ = http.NewResponseController(w).Flush()
		}),
		"firehose": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			b := make([]byte, 32<<10)
			for p.written.Load() < firehoseTotal {
				if _, err := w.Write(b); err != nil {
					return
				}
				_ = http.NewResponseController(w).Flush()
				p.written.Add(int64(len(b)))
			}
		}),
		"tick": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for {
				_, _ = io.WriteString(w, "tick\n")
				_ = http.NewResponseController(w).Flush()
				select {
				case <-time.After(20 * time.Millisecond):
				case <-r.Context().Done():
					p.cancelled <- time.Now()
					return
				}
			}
		}),
		// late streams ticks after 300 ms, until its context ends.
		"late": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(300 * time.Millisecond)
			for {
				_, _ = io.WriteString(w, "tick\n")
				_ = http.NewResponseController(w).Flush()
				select {
				case <-time.After(20 * time.Millisecond):
				case <-r.Context().Done():
					p.cancelled <- time.Now()
					return
				}
			}
		}),
		// stubborn runs 2 s whatever its context says.
		"stubborn": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			for range 40 {
				_, _ = io.WriteString(w, "tick\n")
				_ = http.NewResponseController(w).Flush()
				time.Sleep(50 * time.Millisecond)
			}
		}),
	}
	m, err := manifest.Parse("stream.yaml", []byte(streamManifest), manifest.Options{Builtins: slices.Collect(maps.Keys(fns))})
	if err != nil {
		t.Fatal(err)
	}
	p.runner = runnertest.Start(t, s.ClientURL(), runner.Config{Manifest: m, Builtins: fns})
	nc, err := nats.Connect(s.ClientURL(), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(gateway.Config{NATS: nc, Manifest: m, AckRunners: true})
	if err != nil {
		t.Fatal(err)
	}
	p.url = serve(t, g)
	p.gateway = g
	return p
}
