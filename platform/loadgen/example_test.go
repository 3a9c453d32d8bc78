package loadgen_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/shoal-dev/shoal/platform/loadgen"
)

// Eight keep-alive connections GET /ping for half a second after a short
// warm-up; every answer must be 2xx with the body "pong!".
func ExampleHTTP() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("pong!"))
	}))
	defer srv.Close()

	res, err := loadgen.HTTP(context.Background(), loadgen.Config{
		Workers:  8,
		Warmup:   100 * time.Millisecond,
		Duration: 500 * time.Millisecond,
	}, loadgen.Target{Addr: srv.Listener.Addr().String(), Path: "/ping", Body: []byte("pong!")})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("some requests:", res.Requests > 0, "errors:", res.Errors.Total())
	fmt.Println("p50 <= p99 <= max:", res.Latency.P50 <= res.Latency.P99 && res.Latency.P99 <= res.Latency.Max)
	// Output:
	// some requests: true errors: 0
	// p50 <= p99 <= max: true
}
