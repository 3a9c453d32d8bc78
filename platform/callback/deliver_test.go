package callback_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/callback"
)

// endpoint is a callback receiver on 127.0.0.1 that counts its requests.
type endpoint struct {
	*httptest.Server
	hits atomic.Int32
}

func newEndpoint(t *testing.T, h http.HandlerFunc) *endpoint {
	t.Helper()
	e := &endpoint{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(e.Close)
	return e
}

func noContent(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }

func client(t *testing.T, timeout time.Duration, allow ...string) *http.Client {
	t.Helper()
	p, err := callback.ParsePolicy(allow)
	if err != nil {
		t.Fatal(err)
	}
	return p.Client(timeout)
}

// This test comes first: http.ProxyFromEnvironment reads the environment
// once per process, so a client that consulted it in an earlier test would
// not see the proxy set here.
func TestDeliverIgnoresProxyEnvironment(t *testing.T) {
	proxy := newEndpoint(t, noContent)
	for _, v := range []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"} {
		t.Setenv(v, proxy.URL)
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")
	// The proxy is allowed, the target is not: through the proxy the
	// request would pass, so only a direct dial, refused, is correct.
	c := client(t, 5*time.Second, "127.0.0.0/8")
	if tr, ok := c.Transport.(*http.Transport); !ok || tr.Proxy != nil {
		t.Errorf("Client transport = %T with a Proxy func; want an *http.Transport without", c.Transport)
	}
	err := callback.Deliver(context.Background(), c, "http://192.0.2.1/done", nil, []byte(`{}`))
	if !errors.Is(err, callback.ErrRefused) {
		t.Errorf("Deliver through HTTP_PROXY = %v, want %v", err, callback.ErrRefused)
	}
	if n := proxy.hits.Load(); n != 0 {
		t.Errorf("the proxy from the environment got %d requests, want 0", n)
	}
}

func TestDeliverPolicy(t *testing.T) {
	srv := newEndpoint(t, noContent)
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		allow     []string
		host      string
		delivered bool
	}{
		{"loopback refused by default", nil, "127.0.0.1", false},
		{"loopback allowed by prefix", []string{"127.0.0.0/8"}, "127.0.0.1", true},
		{"loopback allowed by address", []string{"127.0.0.1"}, "127.0.0.1", true},
		{"another prefix does not allow it", []string{"10.0.0.0/8", "::1"}, "127.0.0.1", false},
		{"localhost refused by default", nil, "localhost", false},
		{"localhost allowed by name", []string{"localhost"}, "localhost", true},
		{"names match whatever the case", []string{"LocalHost"}, "LOCALHOST", true},
		{"localhost allowed by its address", []string{"127.0.0.0/8"}, "localhost", true},
		{"a wildcard needs a subdomain", []string{"*.localhost"}, "localhost", false},
		{"another name does not allow it", []string{"hooks.example.com"}, "localhost", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := srv.hits.Load()
			u := "http://" + net.JoinHostPort(tt.host, port) + "/done?token=secret"
			err := callback.Deliver(context.Background(), client(t, 5*time.Second, tt.allow...), u, nil, []byte(`{}`))
			hits := srv.hits.Load() - before
			if tt.delivered {
				if err != nil || hits != 1 {
					t.Fatalf("Deliver(%s) = %v with %d requests seen, want delivered once", u, err, hits)
				}
				return
			}
			if !errors.Is(err, callback.ErrRefused) || callback.Retryable(err) {
				t.Fatalf("Deliver(%s) = %v (retryable %v), want %v, not retryable", u, err, callback.Retryable(err), callback.ErrRefused)
			}
			if hits != 0 {
				t.Errorf("the refused endpoint saw %d requests, want 0", hits)
			}
			msg := err.Error()
			for _, want := range []string{"not a public address (loopback)", "--callback-allow="} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %q", msg, want)
				}
			}
			if tt.host == "localhost" && !strings.Contains(msg, "localhost resolves to") {
				t.Errorf("error %q does not name the host", msg)
			}
			if strings.Contains(msg, "secret") {
				t.Errorf("error %q repeats the query", msg)
			}
		})
	}
}

func TestDeliverSendsBodyAndHeaders(t *testing.T) {
	type request struct {
		method, uri string
		header      http.Header
		body        []byte
	}
	got := make(chan request, 1)
	srv := newEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- request{r.Method, r.RequestURI, r.Header, body}
	})
	body := []byte(`{"id":"c-42","status":200,"body":"aGk="}`)
	header := http.Header{
		"X-Shoal-Call-Id": {"c-42"},
		"Content-Type":    {"text/plain"}, // overridden
		"User-Agent":      {"curl"},       // overridden
	}
	err := callback.Deliver(context.Background(), client(t, 5*time.Second, "127.0.0.1"), srv.URL+"/hooks/done?sig=abc", header, body)
	if err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.method != "POST" || r.uri != "/hooks/done?sig=abc" || !bytes.Equal(r.body, body) {
		t.Errorf("got %s %s %q, want POST /hooks/done?sig=abc %q", r.method, r.uri, r.body, body)
	}
	for k, want := range map[string]string{
		"X-Shoal-Call-Id": "c-42",
		"Content-Type":    "application/json",
		"User-Agent":      "shoal-callback",
		"Content-Length":  strconv.Itoa(len(body)),
	} {
		if v := r.header.Get(k); v != want {
			t.Errorf("header %s = %q, want %q", k, v, want)
		}
	}
	if header.Get("Content-Type") != "text/plain" {
		t.Error("Deliver changed the caller's header")
	}
}

func TestDeliverStatus(t *testing.T) {
	srv := newEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("status"))
		if code >= 300 && code < 400 && code != http.StatusNotModified {
			w.Header().Set("Location", "/elsewhere")
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, "answer ignored")
	})
	c := client(t, 5*time.Second, "127.0.0.0/8")
	tests := []struct {
		status    int
		delivered bool
		retry     bool
		message   string
	}{
		{200, true, false, ""},
		{201, true, false, ""},
		{204, true, false, ""},
		{301, false, false, "callback answered 301 Moved Permanently; redirects are not followed"},
		{304, false, false, "callback answered 304 Not Modified"},
		{400, false, false, "callback answered 400 Bad Request"},
		{401, false, false, "callback answered 401 Unauthorized"},
		{404, false, false, "callback answered 404 Not Found"},
		{408, false, true, "callback answered 408 Request Timeout"},
		{410, false, false, "callback answered 410 Gone"},
		{425, false, true, "callback answered 425 Too Early"},
		{429, false, true, "callback answered 429 Too Many Requests"},
		{500, false, true, "callback answered 500 Internal Server Error"},
		{502, false, true, "callback answered 502 Bad Gateway"},
		{503, false, true, "callback answered 503 Service Unavailable"},
		{599, false, true, "callback answered 599"},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			u := fmt.Sprintf("%s/done?status=%d&token=secret", srv.URL, tt.status)
			err := callback.Deliver(context.Background(), c, u, nil, []byte(`{}`))
			if tt.delivered {
				if err != nil {
					t.Fatalf("Deliver answered %d = %v, want delivered", tt.status, err)
				}
				return
			}
			var e *callback.Error
			if !errors.As(err, &e) || e.StatusCode != tt.status || err.Error() != tt.message {
				t.Fatalf("Deliver answered %d = %v (%T), want an *Error with StatusCode %d and message %q", tt.status, err, err, tt.status, tt.message)
			}
			if got := callback.Retryable(fmt.Errorf("consumer: %w", err)); got != tt.retry {
				t.Errorf("Retryable(%v) = %v, want %v", err, got, tt.retry)
			}
		})
	}
}

func TestDeliverDoesNotFollowRedirects(t *testing.T) {
	target := newEndpoint(t, noContent)
	for _, code := range []int{301, 302, 303, 307, 308} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			srv := newEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/stolen", code)
			})
			err := callback.Deliver(context.Background(), client(t, 5*time.Second, "127.0.0.0/8"), srv.URL+"/done", nil, []byte(`{}`))
			if err == nil || callback.Retryable(err) || !strings.Contains(err.Error(), "redirects are not followed") {
				t.Errorf("Deliver redirected with %d = %v (retryable %v), want a failure that is not retried", code, err, callback.Retryable(err))
			}
			if srv.hits.Load() != 1 || target.hits.Load() != 0 {
				t.Errorf("requests: %d to the callback, %d to the redirect target; want 1 and 0", srv.hits.Load(), target.hits.Load())
			}
		})
	}
}

func TestDeliverTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := newEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		select { // longer than any timeout below
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before srv.Close, which waits for handlers
	tests := []struct {
		name          string
		clientTimeout time.Duration
		ctxTimeout    time.Duration
	}{
		{"client timeout", 200 * time.Millisecond, time.Minute},
		{"context deadline", time.Minute, 200 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tt.ctxTimeout)
			defer cancel()
			start := time.Now()
			err := callback.Deliver(ctx, client(t, tt.clientTimeout, "127.0.0.0/8"), srv.URL, nil, []byte(`{}`))
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("Deliver returned after %v, want about 200ms", elapsed)
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || !callback.Retryable(err) {
				t.Errorf("Deliver = %v (retryable %v), want a timeout, retryable", err, callback.Retryable(err))
			}
		})
	}
}

func TestDeliverConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	err = callback.Deliver(context.Background(), client(t, 5*time.Second, "127.0.0.0/8"), "http://"+addr+"/done", nil, []byte(`{}`))
	var e *callback.Error
	if !errors.As(err, &e) || e.StatusCode != 0 || !callback.Retryable(err) || errors.Is(err, callback.ErrRefused) {
		t.Errorf("Deliver to a closed port = %v, want a retryable connection failure", err)
	}
}

func TestDeliverReadsLittleOfTheAnswer(t *testing.T) {
	srv := newEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) { // an answer without end
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	start := time.Now()
	err := callback.Deliver(context.Background(), client(t, 20*time.Second, "127.0.0.0/8"), srv.URL, nil, []byte(`{}`))
	if err != nil {
		t.Fatalf("Deliver = %v, want delivered", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Deliver read an endless answer for %v; want it to stop early", elapsed)
	}
}

func TestDeliverBadURL(t *testing.T) {
	c := client(t, time.Second)
	for _, raw := range []string{"ftp://x/", "/relative", "http://[::1/?token=secret", ""} {
		err := callback.Deliver(context.Background(), c, raw, nil, nil)
		if err == nil || callback.Retryable(err) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Deliver(%q) = %v (retryable %v), want an error, not retryable, without the query", raw, err, callback.Retryable(err))
		}
	}
}

func TestRetryable(t *testing.T) {
	for _, err := range []error{nil, errors.New("other"), &url.Error{Op: "Post", URL: "x", Err: context.DeadlineExceeded}} {
		if callback.Retryable(err) {
			t.Errorf("Retryable(%v) = true, want false for errors Deliver did not return", err)
		}
	}
	// A consumer's tests may build their own.
	fake := &callback.Error{StatusCode: 503, Retry: true}
	if !callback.Retryable(fmt.Errorf("consumer: %w", fake)) || fake.Error() == "" {
		t.Errorf("Retryable(%v) = false, want true", fake)
	}
}

func TestClientPanicsWithoutTimeout(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Client(0) did not panic")
		}
	}()
	var p *callback.Policy
	p.Client(0)
}
