package gateway_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"testing"

	"github.com/shoal-dev/shoal/functions/ping"
)

// envMode names what TestMain runs this binary as: the tests, or (set
// to "ping") the http function of BenchmarkProcessRoundTrip, or ("sse")
// that of the streaming tests (serveSSE).
const envMode = "GATEWAY_TEST_MODE"

func TestMain(m *testing.M) {
	switch os.Getenv(envMode) {
	case "":
		os.Exit(m.Run())
	case "ping":
		servePing()
	case "sse":
		serveSSE()
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Getenv(envMode))
		os.Exit(2)
	}
}

// servePing serves the ping built-in as an http function's own server:
// on the Unix socket SHOAL_SOCKET if set, else on loopback port PORT.
func servePing() {
	var l net.Listener
	var err error
	if s := os.Getenv("SHOAL_SOCKET"); s != "" {
		l, err = net.Listen("unix", s)
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, http.Serve(l, ping.Handler()))
	os.Exit(1)
}
