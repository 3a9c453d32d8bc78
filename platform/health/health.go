// Package health answers the probes supervisors and Kubernetes send:
// GET /healthz while the process serves, GET /readyz while it can do its
// work. The gateway serves them on its own listener; a runner, which
// serves no HTTP otherwise, on its --health address.
package health

import (
	"net/http"

	"github.com/shoal-dev/shoal/invocation"
)

// Handler serves GET /healthz, always 200 {"status":"ok"}, and GET
// /readyz, 200 the same way while ready returns nil and 503 unavailable
// with the reason otherwise (the platform's JSON error shape). Any other
// path is 404.
func Handler(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", writeOK)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(); err != nil {
			invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable, "not ready: %v", err).WriteHTTP(w)
			return
		}
		writeOK(w, r)
	})
	return mux
}

func writeOK(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte("{\"status\":\"ok\"}\n")) // the prober went away; nothing to do
}
