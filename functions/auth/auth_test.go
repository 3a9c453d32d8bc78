package auth_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/invocation"
)

// testSigner issues "tok-SUBJECT" and records what it was asked.
type testSigner struct {
	mu    sync.Mutex
	calls []signCall
}

type signCall struct {
	subject     string
	permissions []string
	ttl         time.Duration
}

func (s *testSigner) Sign(subject string, permissions []string, ttl time.Duration) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, signCall{subject, permissions, ttl})
	return "tok-" + subject, time.Now().Add(ttl), nil
}

func (s *testSigner) signed() []signCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// fixture is the auth function on a real NATS server, with alice
// ("correct horse", permissions echo and ping) in the store.
type fixture struct {
	js       jetstream.JetStream
	users    *auth.Users
	compares interface{ Load() int64 } // bcrypt comparisons made
	signer   *testSigner
	handler  http.Handler
	log      *bytes.Buffer
}

func newFixture(t *testing.T, limits auth.Limits, ttl time.Duration) *fixture {
	t.Helper()
	ctx := testContext(t)
	_, js := startJS(t)
	f := &fixture{js: js, users: newUsers(t, js), signer: &testSigner{}, log: &bytes.Buffer{}}
	f.compares = auth.CountCompares(f.users)
	if err := f.users.Add(ctx, "alice", "correct horse", []string{"echo", "ping"}); err != nil {
		t.Fatal(err)
	}
	f.handler = auth.Handler(auth.Config{
		Users:   f.users,
		Limiter: newLimiter(t, js, limits),
		Signer:  f.signer,
		TTL:     ttl,
		Logger:  slog.New(slog.NewTextHandler(&lockedWriter{w: f.log}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	return f
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

var testLimits = auth.Limits{PerUser: 3, PerAddr: 10, Window: time.Minute}

// login posts body to /token; header is pairs of name, value.
func login(h http.Handler, body string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/token", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func loginBody(user, password string) string {
	b, _ := json.Marshal(auth.TokenRequest{Username: user, Password: password})
	return string(b)
}

// wantError checks an answer is an error in the platform's shape.
func wantError(t *testing.T, w *httptest.ResponseRecorder, status int, code invocation.Code) *invocation.Error {
	t.Helper()
	e, ok := invocation.ParseError(w.Code, w.Body.Bytes())
	if w.Code != status || !ok || e.Code != code {
		t.Fatalf("answer %d %s, want %d %s", w.Code, w.Body, status, code)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	return e
}

func TestHandlerIssuesToken(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		ttl         time.Duration
		wantTTL     time.Duration
		contentType string
	}{
		{"default lifetime", 0, time.Hour, "application/json"},
		{"configured lifetime", 10 * time.Minute, 10 * time.Minute, "application/json; charset=utf-8"},
		{"no Content-Type", 0, time.Hour, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, testLimits, tc.ttl)
			r := httptest.NewRequest(http.MethodPost, "/token", strings.NewReader(loginBody("alice", "correct horse")))
			if tc.contentType != "" {
				r.Header.Set("Content-Type", tc.contentType)
			}
			w := httptest.NewRecorder()
			f.handler.ServeHTTP(w, r)
			if w.Code != http.StatusOK {
				t.Fatalf("answer %d %s", w.Code, w.Body)
			}
			for name, want := range map[string]string{
				"Content-Type":  "application/json",
				"Cache-Control": "no-store",
				"Pragma":        "no-cache",
			} {
				if got := w.Header().Get(name); got != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
			var got auth.TokenResponse
			dec := json.NewDecoder(w.Body)
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatal(err)
			}
			secs := int64(tc.wantTTL / time.Second)
			if got.AccessToken != "tok-alice" || got.TokenType != "Bearer" || got.ExpiresIn < secs-1 || got.ExpiresIn > secs {
				t.Errorf("body = %+v, want tok-alice, Bearer, %d seconds", got, secs)
			}
			calls := f.signer.signed()
			if len(calls) != 1 || calls[0].subject != "alice" || !slices.Equal(calls[0].permissions, []string{"echo", "ping"}) || calls[0].ttl != tc.wantTTL {
				t.Errorf("signer calls = %+v, want one for alice [echo ping] %v", calls, tc.wantTTL)
			}
		})
	}
}

// A wrong password, an unknown user and a name that cannot be a username
// get the same answer, to the byte, and each counts as a failure.
func TestHandlerBadCredentialsTellNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, auth.Limits{PerUser: 100, PerAddr: 100, Window: time.Minute}, 0)
	var bodies []string
	for _, tc := range []struct{ user, password string }{
		{"alice", "wrong horse"},
		{"mallory", "correct horse"},
		{"not a username!", "correct horse"},
	} {
		w := login(f.handler, loginBody(tc.user, tc.password), "X-Forwarded-For", "192.0.2.1")
		e := wantError(t, w, http.StatusUnauthorized, invocation.CodeBadCredentials)
		if e.Message != "invalid username or password" {
			t.Errorf("message = %q", e.Message)
		}
		bodies = append(bodies, w.Body.String())
	}
	if bodies[0] != bodies[1] || bodies[1] != bodies[2] {
		t.Errorf("bodies differ:\n%s", strings.Join(bodies, ""))
	}
	if n, _, _ := storedCounter(t, f.js, auth.AddrKey("192.0.2.1")); n != 3 {
		t.Errorf("failures counted for the address = %d, want 3", n)
	}
	if n, _, _ := storedCounter(t, f.js, auth.UserKey("not a username!")); n != 1 {
		t.Errorf("failures counted for the invalid name = %d, want 1", n)
	}
	if calls := f.signer.signed(); len(calls) != 0 {
		t.Errorf("tokens signed: %+v", calls)
	}
}

func TestHandlerRejectsMalformedLogins(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testLimits, 0)
	for _, tc := range []struct {
		name        string
		body        string
		contentType string
		status      int
		code        invocation.Code
	}{
		{"not JSON", `username=alice&password=x`, "application/json", 400, invocation.CodeBadRequest},
		{"truncated JSON", `{"username": "alice", "password": "correct`, "application/json", 400, invocation.CodeBadRequest},
		{"unknown field", `{"username": "alice", "password": "correct horse", "scope": "admin"}`, "application/json", 400, invocation.CodeBadRequest},
		{"empty username", `{"username": "", "password": "correct horse"}`, "application/json", 400, invocation.CodeBadRequest},
		{"empty password", `{"username": "alice", "password": ""}`, "application/json", 400, invocation.CodeBadRequest},
		{"missing password", `{"username": "alice"}`, "application/json", 400, invocation.CodeBadRequest},
		{"null", `null`, "application/json", 400, invocation.CodeBadRequest},
		{"empty body", ``, "application/json", 400, invocation.CodeBadRequest},
		{"array", `[{"username": "alice", "password": "correct horse"}]`, "application/json", 400, invocation.CodeBadRequest},
		{"number as password", `{"username": "alice", "password": 12345678}`, "application/json", 400, invocation.CodeBadRequest},
		{"two objects", `{"username": "alice", "password": "correct horse"}{}`, "application/json", 400, invocation.CodeBadRequest},
		{"form content type", loginBody("alice", "correct horse"), "application/x-www-form-urlencoded", 400, invocation.CodeBadRequest},
		{"malformed content type", loginBody("alice", "correct horse"), "application/json; charset", 400, invocation.CodeBadRequest},
		{"body over 4 KiB", loginBody("alice", strings.Repeat("p", 4<<10)), "application/json", 413, invocation.CodePayloadTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/token", strings.NewReader(tc.body))
			r.Header.Set("Content-Type", tc.contentType)
			w := httptest.NewRecorder()
			f.handler.ServeHTTP(w, r)
			wantError(t, w, tc.status, tc.code)
		})
	}
	if n := f.compares.Load(); n != 0 {
		t.Errorf("bcrypt ran %d times for malformed logins", n)
	}
	if n, _, ok := storedCounter(t, f.js, auth.UserKey("alice")); ok {
		t.Errorf("malformed logins counted as %d failures", n)
	}
}

func TestHandlerRoutes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testLimits, 0)
	for _, tc := range []struct {
		method, path string
		status       int
		code         invocation.Code
	}{
		{http.MethodGet, "/token", 405, invocation.CodeMethodNotAllowed},
		{http.MethodPut, "/token", 405, invocation.CodeMethodNotAllowed},
		{http.MethodDelete, "/token", 405, invocation.CodeMethodNotAllowed},
		{http.MethodPost, "/", 404, invocation.CodeNotFound},
		{http.MethodPost, "/tokens", 404, invocation.CodeNotFound},
		{http.MethodPost, "/token/", 404, invocation.CodeNotFound},
		{http.MethodGet, "/users", 404, invocation.CodeNotFound},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(loginBody("alice", "correct horse")))
			w := httptest.NewRecorder()
			f.handler.ServeHTTP(w, r)
			wantError(t, w, tc.status, tc.code)
			if allow := w.Header().Get("Allow"); tc.status == 405 && allow != "POST" {
				t.Errorf("Allow = %q, want POST", allow)
			}
		})
	}
}

// Past the limit the password is not checked: not even the right one
// gets a token, and bcrypt does not run.
func TestHandlerLimitsFailedLogins(t *testing.T) {
	t.Parallel()
	f := newFixture(t, testLimits, 0) // 3 per user, 10 per address, 1 minute
	for range 3 {
		wantError(t, login(f.handler, loginBody("alice", "wrong horse"), "X-Forwarded-For", "192.0.2.1"),
			http.StatusUnauthorized, invocation.CodeBadCredentials)
	}
	compares := f.compares.Load()
	for _, addr := range []string{"192.0.2.1", "198.51.100.9"} { // the per-user limit holds from anywhere
		w := login(f.handler, loginBody("alice", "correct horse"), "X-Forwarded-For", addr)
		e := wantError(t, w, http.StatusTooManyRequests, invocation.CodeTooManyAttempts)
		ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
		if err != nil || ra < 55 || ra > 60 {
			t.Errorf("Retry-After = %q, want the seconds left of the minute", w.Header().Get("Retry-After"))
		}
		if !strings.Contains(e.Message, "wait "+w.Header().Get("Retry-After")+" seconds") {
			t.Errorf("message %q does not say how long to wait", e.Message)
		}
	}
	if n := f.compares.Load() - compares; n != 0 {
		t.Errorf("bcrypt ran %d times past the limit", n)
	}
	if calls := f.signer.signed(); len(calls) != 0 {
		t.Errorf("tokens signed past the limit: %+v", calls)
	}
}

// The address is the last X-Forwarded-For entry, the one the gateway
// appended; what the client put before it does not matter.
func TestHandlerLimitsPerAddress(t *testing.T) {
	t.Parallel()
	f := newFixture(t, auth.Limits{PerUser: 100, PerAddr: 3, Window: time.Minute}, 0)
	for i, user := range []string{"u1", "u2", "u3"} {
		spoofed := "10.0.0." + strconv.Itoa(i) + ", 192.0.2.1"
		wantError(t, login(f.handler, loginBody(user, "wrong horse"), "X-Forwarded-For", spoofed),
			http.StatusUnauthorized, invocation.CodeBadCredentials)
	}
	wantError(t, login(f.handler, loginBody("alice", "correct horse"), "X-Forwarded-For", "10.9.9.9, 192.0.2.1"),
		http.StatusTooManyRequests, invocation.CodeTooManyAttempts)
	if w := login(f.handler, loginBody("alice", "correct horse"), "X-Forwarded-For", "192.0.2.1, 192.0.2.2"); w.Code != http.StatusOK {
		t.Errorf("from another address: %d %s", w.Code, w.Body)
	}
	if w := login(f.handler, loginBody("alice", "correct horse")); w.Code != http.StatusOK {
		t.Errorf("straight over NATS: %d %s", w.Code, w.Body)
	}
}

func TestClientAddr(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		xff  []string
		want string
	}{
		{"none: a caller over NATS", nil, "nats"},
		{"one address", []string{"192.0.2.1"}, "192.0.2.1"},
		{"the last of a list", []string{"10.0.0.1, 172.16.0.1,192.0.2.1"}, "192.0.2.1"},
		{"the last of several headers", []string{"10.0.0.1", "192.0.2.1"}, "192.0.2.1"},
		{"blank", []string{" "}, "nats"},
		{"IPv4 in IPv6", []string{"::ffff:192.0.2.1"}, "192.0.2.1"},
		{"IPv6 as its /64", []string{"2001:db8:1:2:3:4:5:6"}, "2001:db8:1:2::/64"},
		{"IPv6 with a zone", []string{"fe80::1%eth0"}, "fe80::/64"},
		{"not an address", []string{"unknown"}, "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.xff {
				h.Add("X-Forwarded-For", v)
			}
			if got := auth.ClientAddr(h); got != tc.want {
				t.Errorf("ClientAddr(%q) = %q, want %q", tc.xff, got, tc.want)
			}
		})
	}
}

// When NATS is gone, logins fail with 503, never 401 or 200.
func TestHandlerUnavailableWithoutNATS(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s, adminJS := startJS(t)
	users := newUsers(t, adminJS)
	if err := users.Add(ctx, "alice", "correct horse", nil); err != nil {
		t.Fatal(err)
	}
	newLimiter(t, adminJS, testLimits)

	// The function's own connection, closed under it.
	js := connectJS(t, s)
	fnUsers, err := auth.OpenUsers(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	fnUsers.Cost = bcrypt.MinCost
	fnLimiter, err := auth.OpenLimiter(ctx, js, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	h := auth.Handler(auth.Config{Users: fnUsers, Limiter: fnLimiter, Signer: &testSigner{},
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if w := login(h, loginBody("alice", "correct horse")); w.Code != http.StatusOK {
		t.Fatalf("before closing: %d %s", w.Code, w.Body)
	}
	js.Conn().Close()
	for _, password := range []string{"correct horse", "wrong horse"} {
		w := login(h, loginBody("alice", password))
		wantError(t, w, http.StatusServiceUnavailable, invocation.CodeUnavailable)
		if w.Header().Get("Retry-After") == "" {
			t.Error("no Retry-After on 503")
		}
	}
	if !strings.Contains(log.String(), "login store unavailable") {
		t.Errorf("the fault was not logged:\n%s", log.String())
	}
}

func TestHandlerWithoutStoresOrSigner(t *testing.T) {
	t.Parallel()
	w := login(auth.Handler(auth.Config{}), loginBody("alice", "correct horse"))
	e := wantError(t, w, http.StatusServiceUnavailable, invocation.CodeUnavailable)
	if e.Message != "this runner cannot issue tokens" {
		t.Errorf("message = %q", e.Message)
	}
}

func TestHandlerPanicsOnNegativeTTL(t *testing.T) {
	t.Parallel()
	defer func() {
		if p := recover(); p == nil || !strings.HasPrefix(p.(string), "auth: ") {
			t.Errorf("panic = %v, want one prefixed auth:", p)
		}
	}()
	auth.Handler(auth.Config{TTL: -time.Second})
}

// The log tells who logged in and failed, never a password or a token.
func TestHandlerLogsNoSecrets(t *testing.T) {
	t.Parallel()
	f := newFixture(t, auth.Limits{PerUser: 2, PerAddr: 100, Window: time.Minute}, 0)
	login(f.handler, loginBody("alice", "correct horse"), "X-Forwarded-For", "192.0.2.1")
	login(f.handler, loginBody("alice", "wrong horse 1"))
	login(f.handler, loginBody("alice", "wrong horse 2"))
	login(f.handler, loginBody("alice", "wrong horse 3")) // limited
	login(f.handler, loginBody("hunter2 typed as a name", "x"))
	out := f.log.String()
	for _, secret := range []string{"correct horse", "wrong horse", "tok-alice", "hunter2"} {
		if strings.Contains(out, secret) {
			t.Errorf("log holds %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"token issued", "login failed", "too many failed logins", "user=alice", "addr=192.0.2.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
