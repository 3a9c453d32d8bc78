// Command hello is a Shoal function written as a plain net/http server.
//
// Shoal starts it with either SHOAL_SOCKET (listen: unix, a Unix socket
// path) or PORT (listen: port) set, and sends the function's requests
// there. Run it by hand with `PORT=8080 ./hello`.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ln, err := listen()
	if err != nil {
		log.Fatalf("hello: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(greet), ReadHeaderTimeout: 10 * time.Second}

	// Shoal stops a function with SIGTERM: finish the requests in flight,
	// then exit.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()

	log.Printf("hello: serving on %s %s", ln.Addr().Network(), ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("hello: %v", err)
	}
}

// listen opens the socket Shoal asked for: SHOAL_SOCKET if set, else PORT
// on the loopback interface, which is all the runner needs to reach.
func listen() (net.Listener, error) {
	if path := os.Getenv("SHOAL_SOCKET"); path != "" {
		return net.Listen("unix", path)
	}
	if port := os.Getenv("PORT"); port != "" {
		return net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	}
	return nil, errors.New("set SHOAL_SOCKET or PORT, e.g. PORT=8080 ./hello")
}

// greet answers every request with a greeting naming its method and path.
func greet(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if name == "" {
		name = "world"
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Hello, %s! (%s %s, function %q)\n", name, r.Method, r.URL.Path, os.Getenv("SHOAL_FUNCTION"))
}
