package auth_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	if !strings.Contains(log.String(), "login store unavailable") || !strings.Contains(log.String(), " error=") {
		t.Errorf("the fault was not logged under error=:\n%s", log.String())
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

// The log names a user only after a good login: before, the "username"
// may be a password typed in the wrong field. Failures and refusals carry
// a fingerprint of it instead, the same for the same name, and not one a
// guess can be checked against by hashing it.
func TestHandlerLogsNoSecrets(t *testing.T) {
	t.Parallel()
	f := newFixture(t, auth.Limits{PerUser: 2, PerAddr: 100, Window: time.Minute}, 0)
	login(f.handler, loginBody("alice", "correct horse"), "X-Forwarded-For", "192.0.2.1")
	login(f.handler, loginBody("hunter2", "alice"))   // the fields swapped: a valid-looking username
	login(f.handler, loginBody("hunter2", "alice"))   // again, to correlate
	login(f.handler, loginBody("hunter2", "alice"))   // limited
	login(f.handler, loginBody("bob", "wrong horse")) // another name, another fingerprint
	out := f.log.String()
	sum := sha256.Sum256([]byte("hunter2"))
	plainHash := hex.EncodeToString(sum[:])[:12]
	for _, secret := range []string{"correct horse", "wrong horse", "tok-alice", "hunter2", plainHash} {
		if strings.Contains(out, secret) {
			t.Errorf("log holds %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"token issued", "login failed", "too many failed logins", "user=alice", "addr=192.0.2.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	var hashes []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		m := regexp.MustCompile(` user_hash=([0-9a-f]{12})( |$)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("line without a user_hash of 12 hex digits: %s", line)
		}
		if strings.Contains(line, " user=") != strings.Contains(line, "token issued") {
			t.Errorf("user= on a line other than a good login's, or missing there: %s", line)
		}
		hashes = append(hashes, m[1])
	}
	if len(hashes) != 5 || hashes[1] != hashes[2] || hashes[2] != hashes[3] ||
		hashes[0] == hashes[1] || hashes[4] == hashes[1] || hashes[4] == hashes[0] {
		t.Errorf("user_hash per login = %v, want one per name: alice, hunter2 ×3, bob", hashes)
	}
}

// cluster is the auth function on two runners, each with its own NATS
// connection, user store and limiter, on one server: what a login meets
// in production, where the gateway spreads logins over runners.
type cluster struct {
	js       jetstream.JetStream
	handlers [2]http.Handler
	compares [2]*atomic.Int64 // bcrypt comparisons made on each runner
}

func newCluster(t *testing.T, limits auth.Limits) *cluster {
	t.Helper()
	ctx := testContext(t)
	s, js := startJS(t)
	c := &cluster{js: js}
	if err := newUsers(t, js).Add(ctx, "alice", "correct horse", nil); err != nil {
		t.Fatal(err)
	}
	newLimiter(t, js, limits)
	for i := range c.handlers {
		rjs := connectJS(t, s)
		users, err := auth.OpenUsers(ctx, rjs)
		if err != nil {
			t.Fatal(err)
		}
		users.Cost = bcrypt.MinCost
		c.compares[i] = auth.CountCompares(users)
		limiter, err := auth.OpenLimiter(ctx, rjs, limits)
		if err != nil {
			t.Fatal(err)
		}
		c.handlers[i] = auth.Handler(auth.Config{Users: users, Limiter: limiter, Signer: &testSigner{}})
	}
	return c
}

// loginAtOnce sends the logins body(i) for i < n at once, alternating
// runners, and counts the answers by status.
func (c *cluster) loginAtOnce(n int, body func(i int) string, header ...string) map[int]int {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[int]int{}
		start    = make(chan struct{})
	)
	for i := range n {
		wg.Go(func() {
			<-start
			w := login(c.handlers[i%2], body(i), header...)
			mu.Lock()
			statuses[w.Code]++
			mu.Unlock()
		})
	}
	close(start) // as close to the same moment as goroutines get
	wg.Wait()
	return statuses
}

func (c *cluster) bcrypts() int { return int(c.compares[0].Load() + c.compares[1].Load()) }

// Concurrent wrong passwords for one user: no more than the limit reach
// bcrypt, on whichever runner; the rest are refused. (Checking the limit,
// then the password, then counting the failure let them all through.)
func TestHandlerConcurrentLoginsPerUser(t *testing.T) {
	t.Parallel()
	const logins, perUser = 60, 5
	c := newCluster(t, auth.Limits{PerUser: perUser, PerAddr: 1000, Window: time.Minute})
	statuses := c.loginAtOnce(logins, func(i int) string { return loginBody("alice", fmt.Sprintf("guess %d", i)) },
		"X-Forwarded-For", "192.0.2.1")
	if n := c.bcrypts(); n != perUser {
		t.Errorf("bcrypt ran %d times for %d concurrent logins, want the limit %d", n, logins, perUser)
	}
	if want := map[int]int{401: perUser, 429: logins - perUser}; !maps.Equal(statuses, want) {
		t.Errorf("answers by status = %v, want %v", statuses, want)
	}
	wantCount(t, c.js, auth.UserKey("alice"), perUser)
	wantCount(t, c.js, auth.AddrKey("192.0.2.1"), perUser) // the refused ones were given back
	// The right password now is refused too.
	wantError(t, login(c.handlers[0], loginBody("alice", "correct horse")), http.StatusTooManyRequests, invocation.CodeTooManyAttempts)
}

// Concurrent logins for many names from one address: no more than the
// address's limit reach bcrypt, and the names refused are not counted.
func TestHandlerConcurrentLoginsPerAddress(t *testing.T) {
	t.Parallel()
	const logins, perAddr = 60, 20
	c := newCluster(t, auth.Limits{PerUser: 5, PerAddr: perAddr, Window: time.Minute})
	statuses := c.loginAtOnce(logins, func(i int) string { return loginBody(fmt.Sprintf("user%d", i), "correct horse") },
		"X-Forwarded-For", "192.0.2.1")
	if n := c.bcrypts(); n != perAddr {
		t.Errorf("bcrypt ran %d times for %d concurrent logins, want the limit %d", n, logins, perAddr)
	}
	if want := map[int]int{401: perAddr, 429: logins - perAddr}; !maps.Equal(statuses, want) {
		t.Errorf("answers by status = %v, want %v", statuses, want)
	}
	wantCount(t, c.js, auth.AddrKey("192.0.2.1"), perAddr)
	counted := 0
	for i := range logins {
		n, _, _ := storedCounter(t, c.js, auth.UserKey(fmt.Sprintf("user%d", i)))
		counted += n
	}
	if counted != perAddr {
		t.Errorf("attempts counted over the names = %d, want %d: a refused name gets its attempt back", counted, perAddr)
	}
	// alice, from elsewhere, is not locked out.
	if w := login(c.handlers[1], loginBody("alice", "correct horse"), "X-Forwarded-For", "192.0.2.2"); w.Code != http.StatusOK {
		t.Errorf("alice from another address: %d %s", w.Code, w.Body)
	}
}

// A good login clears the user's failures and does not use up the
// address: the users behind one NAT or proxy log in as often as they like.
func TestHandlerGoodLoginsKeepTheAddress(t *testing.T) {
	t.Parallel()
	f := newFixture(t, auth.Limits{PerUser: 3, PerAddr: 3, Window: time.Minute}, 0)
	const addr = "192.0.2.1"
	for range 2 {
		wantError(t, login(f.handler, loginBody("alice", "wrong horse"), "X-Forwarded-For", addr),
			http.StatusUnauthorized, invocation.CodeBadCredentials)
	}
	for i := range 10 {
		if w := login(f.handler, loginBody("alice", "correct horse"), "X-Forwarded-For", addr); w.Code != http.StatusOK {
			t.Fatalf("good login %d: %d %s", i+1, w.Code, w.Body)
		}
	}
	if _, _, ok := storedCounter(t, f.js, auth.UserKey("alice")); ok {
		t.Error("alice's failures are still counted after a good login")
	}
	wantCount(t, f.js, auth.AddrKey(addr), 2) // the failures, not the successes
}

// A login that cannot be counted is not checked: 503, and bcrypt does
// not run, whether the password is right or wrong.
func TestHandlerFailsClosedWithoutLimiter(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s, js := startJS(t)
	users := newUsers(t, js)
	compares := auth.CountCompares(users)
	if err := users.Add(ctx, "alice", "correct horse", nil); err != nil {
		t.Fatal(err)
	}
	newLimiter(t, js, testLimits)
	ljs := connectJS(t, s) // the limiter's connection, closed under it
	limiter, err := auth.OpenLimiter(ctx, ljs, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	ljs.Conn().Close()
	var log bytes.Buffer
	h := auth.Handler(auth.Config{Users: users, Limiter: limiter, Signer: &testSigner{},
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	for _, password := range []string{"correct horse", "wrong horse"} {
		wantError(t, login(h, loginBody("alice", password)), http.StatusServiceUnavailable, invocation.CodeUnavailable)
	}
	if n := compares.Load(); n != 0 {
		t.Errorf("bcrypt ran %d times without a limiter", n)
	}
	if !strings.Contains(log.String(), "login store unavailable") || !strings.Contains(log.String(), " error=") {
		t.Errorf("the fault was not logged under error=:\n%s", log.String())
	}
}
