package gateway_test

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/functions/ping"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
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
