package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/functions/ping"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/bundle"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/launcher"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
	"github.com/shoal-dev/shoal/token"
)

// benchClients is the number of concurrent callers, like wrk's 64
// connections: parallelism times GOMAXPROCS.
const benchParallelism = 32

func benchHTTP(b *testing.B, url string) { benchHTTPAs(b, url, "") }

// benchHTTPAs is benchHTTP with an Authorization header (none if empty).
func benchHTTPAs(b *testing.B, url, authorization string) {
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 1024,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}}
	defer client.CloseIdleConnections()
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, err := http.NewRequest("GET", url, nil)
			if err != nil {
				b.Error(err)
				return
			}
			if authorization != "" {
				req.Header.Set("Authorization", authorization)
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Errorf("GET %s: %v", url, err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "pong!" {
				b.Errorf("%d %q", resp.StatusCode, body)
				return
			}
		}
	})
}

// BenchmarkRoundTrip measures GET -> pong! three ways, side by side, so
// their ratios come from one run on one machine:
//
//   - shoal: HTTP -> gateway -> NATS -> runner -> NATS -> gateway -> HTTP,
//     everything in this process on loopback TCP (one runner);
//   - shoal-acks: the same with runner acks on (Config.AckRunners), as
//     shoal up runs it: one more NATS message per invocation, and the
//     gateway's own reply mux;
//   - nats: the NATS request to the runner alone, without HTTP;
//   - plain-http: a net/http server running the ping function directly,
//     the ceiling for HTTP here.
func BenchmarkRoundTrip(b *testing.B) {
	b.Run("shoal", func(b *testing.B) {
		p := start(b, options{})
		benchHTTP(b, p.url+"/function/ping")
	})
	b.Run("shoal-acks", func(b *testing.B) {
		p := start(b, options{acks: true})
		benchHTTP(b, p.url+"/function/ping")
	})
	b.Run("nats", func(b *testing.B) {
		p := start(b, options{})
		nc := brokertest.Connect(b, p.broker)
		b.SetParallelism(benchParallelism)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				reply, err := nc.Request("fn.ping", nil, 5*time.Second)
				if err != nil {
					b.Errorf("request fn.ping: %v", err)
					return
				}
				if string(reply.Data) != "pong!" {
					b.Errorf("fn.ping answered %q (%v)", reply.Data, reply.Header)
					return
				}
			}
		})
	})
	b.Run("plain-http", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: ping.Handler()}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		benchHTTP(b, "http://"+ln.Addr().String()+"/")
	})
}

// BenchmarkProcessRoundTrip measures GET -> pong! through the whole
// platform (HTTP -> gateway -> NATS -> runner -> NATS -> gateway -> HTTP)
// for the same function run three ways, side by side on one platform
// started once, so that their ratios come from one run on one machine:
//
//   - builtin: the ping built-in, in the runner's process;
//   - http-process: ping as an http function: this binary's own server
//     (TestMain's ping mode), one process on a loopback port, that the
//     runner forwards each invocation to;
//   - exec-process: an exec function, `bash ping.sh` printing pong!,
//     one process per invocation.
//
// The runner starts the process functions as shoal up does: with
// platform/launcher, from code packed and stored in the code store
// (platform/bundle) of the benchmark's NATS server.
func BenchmarkProcessRoundTrip(b *testing.B) {
	url := startProcessPlatform(b)
	for _, fn := range []string{"builtin", "http-process", "exec-process"} {
		b.Run(fn, func(b *testing.B) { benchHTTP(b, url+"/function/"+fn) })
	}
}

// processManifest declares ping as each of BenchmarkProcessRoundTrip's
// functions; %s is this binary's path, quoted.
const processManifest = `version: 1
functions:
  builtin: {handler: {builtin: ping}, public: true, concurrency: 10000}
  http-process:
    handler: {http: {command: [%s]}}
    source: code
    env: {` + envMode + `: ping}
    public: true
    concurrency: 10000
  exec-process:
    handler: {exec: {command: [bash, ping.sh]}}
    source: code
    public: true
    concurrency: 10000
`

// startProcessPlatform starts a NATS server, stores the code of
// processManifest's functions, and starts a runner that serves them with
// a launcher and a gateway; it returns the gateway's URL. Everything
// stops when b ends.
func startProcessPlatform(b *testing.B) string {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	code := filepath.Join(dir, "code")
	if err := os.Mkdir(code, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(code, "ping.sh"), []byte("printf 'pong!'\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	m, err := manifest.Parse(filepath.Join(dir, "fn.yaml"), fmt.Appendf(nil, processManifest, strconv.Quote(exe)),
		manifest.Options{Builtins: []string{"ping"}})
	if err != nil {
		b.Fatal(err)
	}

	s := brokertest.Start(b)
	js, err := jetstream.New(brokertest.Connect(b, s))
	if err != nil {
		b.Fatal(err)
	}
	store, err := bundle.Create(ctx, js, 1)
	if err != nil {
		b.Fatal(err)
	}
	bun, err := bundle.Pack(code, bundle.PackOptions{TempDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer bun.Close()
	if _, err := store.Put(ctx, bun, "bench"); err != nil {
		b.Fatal(err)
	}
	for i := range m.Functions {
		if m.Functions[i].Handler.RunsProcess() {
			m.Functions[i].Process.Code = manifest.CodeRef{Digest: string(bun.Digest), Size: bun.Size}
		}
	}

	l, err := launcher.New(launcher.Config{JetStream: js, CacheDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	r := runnertest.Start(b, s.ClientURL(), runner.Config{
		Manifest: m, Builtins: map[string]http.Handler{"ping": ping.Handler()}, Processes: l,
	})
	// Processes start in the background: serve once they are up.
	startCtx, cancelStart := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelStart()
	if err := r.WaitStarts(startCtx); err != nil {
		b.Fatal(err)
	}
	if u := r.Unservable(); len(u) > 0 {
		b.Fatalf("the runner cannot serve %v", u)
	}
	g, err := gateway.New(gateway.Config{NATS: brokertest.Connect(b, s), Manifest: m})
	if err != nil {
		b.Fatal(err)
	}
	return serve(b, g)
}

// BenchmarkTokenCheck measures what token verification costs end to end:
// GET -> pong! through a secured platform (NATS roles, keys in KV),
// side by side for a public function, a function that needs a token with
// the verifiers' cache (the gateway and the runner each verify), and the
// same with the cache off.
func BenchmarkTokenCheck(b *testing.B) {
	run := func(b *testing.B, cacheSize int, fn string) {
		p := startSecured(b, securedOptions{cacheSize: cacheSize})
		signer, err := token.NewSigner(p.key, "shoal", "shoal")
		if err != nil {
			b.Fatal(err)
		}
		tok, _, err := signer.Sign("bench", []string{"echo"}, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		benchHTTPAs(b, p.url+"/function/"+fn, "Bearer "+tok)
	}
	b.Run("public", func(b *testing.B) { run(b, 0, "ping") })
	b.Run("token-cached", func(b *testing.B) { run(b, 0, "guarded") })
	b.Run("token-uncached", func(b *testing.B) { run(b, -1, "guarded") })
}
