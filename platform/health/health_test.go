package health_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/platform/health"
)

func TestHandler(t *testing.T) {
	var notReady error
	srv := httptest.NewServer(health.Handler(func() error { return notReady }))
	defer srv.Close()
	tests := []struct {
		name     string
		notReady error
		method   string
		path     string
		status   int
		body     string
	}{
		{"alive", nil, "GET", "/healthz", 200, `{"status":"ok"}`},
		{"alive while not ready", errors.New("catalog not loaded"), "GET", "/healthz", 200, `{"status":"ok"}`},
		{"ready", nil, "GET", "/readyz", 200, `{"status":"ok"}`},
		{"not ready says why", errors.New("catalog not loaded"), "GET", "/readyz", 503, `"code":"unavailable","message":"not ready: catalog not loaded"`},
		{"other paths", nil, "GET", "/metrics", 404, ""},
		{"other methods", nil, "POST", "/healthz", 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			notReady = tt.notReady
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status || !strings.Contains(string(body), tt.body) {
				t.Errorf("%s %s = %d %s, want %d with %s", tt.method, tt.path, resp.StatusCode, body, tt.status, tt.body)
			}
		})
	}
}

func ExampleHandler() {
	ready := func() error { return nil } // e.g. connected to NATS, functions loaded
	http.Handle("/", health.Handler(ready))
}
