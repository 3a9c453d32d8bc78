// Package ping is the built-in ping function: it answers "pong!" to any
// request, so a call through the gateway, NATS and a runner shows the whole
// path works.
package ping

import "net/http"

// Handler answers "pong!" as text/plain to any method and path.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = contentType
		_, _ = w.Write(pong) // the write error is the caller's to see
	})
}

var (
	pong        = []byte("pong!")
	contentType = []string{"text/plain; charset=utf-8"}
)
