package auth_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
)

// The function behind a real runner, called straight over NATS: the
// runner hands it the path below /function/auth, and failures without
// X-Forwarded-For count against the address "nats".
func TestThroughRunner(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s, js := startJS(t)
	users := newUsers(t, js)
	if err := users.Add(ctx, "alice", "correct horse", []string{"echo"}); err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse("fn.yaml", []byte("version: 1\nfunctions:\n  auth: {handler: {builtin: auth}, public: true}\n"),
		manifest.Options{Builtins: []string{"auth"}})
	if err != nil {
		t.Fatal(err)
	}
	h := auth.Handler(auth.Config{Users: users, Limiter: newLimiter(t, js, testLimits), Signer: &testSigner{}})
	runnertest.Start(t, s.ClientURL(), runner.Config{Manifest: m, Builtins: map[string]http.Handler{"auth": h}})
	nc := brokertest.Connect(t, s)

	call := func(method, path, body string) (int, []byte) {
		t.Helper()
		msg := nats.NewMsg(invocation.Subject("auth"))
		msg.Header.Set(invocation.HeaderMethod, method)
		msg.Header.Set(invocation.HeaderPath, path)
		msg.Data = []byte(body)
		reply, err := nc.RequestMsg(msg, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		status, err := invocation.ReadReply(http.Header{}, reply.Header)
		if err != nil {
			t.Fatal(err)
		}
		return status, reply.Data
	}

	status, body := call(http.MethodPost, "/token", loginBody("alice", "correct horse"))
	var tok auth.TokenResponse
	if status != http.StatusOK || json.Unmarshal(body, &tok) != nil || tok.AccessToken != "tok-alice" {
		t.Errorf("login over NATS: %d %s", status, body)
	}
	if status, body := call(http.MethodPost, "/token", loginBody("alice", "wrong horse")); status != http.StatusUnauthorized {
		t.Errorf("wrong password over NATS: %d %s", status, body)
	}
	if n, _, _ := storedCounter(t, js, auth.AddrKey("nats")); n != 1 {
		t.Errorf("failures counted for address nats = %d, want 1", n)
	}
	if status, body := call(http.MethodPost, "/", loginBody("alice", "correct horse")); status != http.StatusNotFound {
		t.Errorf("POST / over NATS: %d %s", status, body)
	}
}

// The NATS identity of a runner serving the auth function (the auth
// role) may create the buckets when they are missing, read users and
// write counters, but not update streams: what `shoal` runners do at
// start-up and on every login must fit in that.
func TestAuthRolePermissions(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	s, creds := brokertest.StartSecured(t)
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}) // the violation below is expected
	rjs, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleAuth, quiet))
	if err != nil {
		t.Fatal(err)
	}
	ajs, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}

	// Missing buckets: the auth role creates them; again, as configured, too.
	for range 2 {
		if _, err := auth.CreateUsers(ctx, rjs, 1); err != nil {
			t.Fatalf("CreateUsers as the auth role: %v", err)
		}
		if _, err := auth.CreateLimiter(ctx, rjs, testLimits, 1); err != nil {
			t.Fatalf("CreateLimiter as the auth role: %v", err)
		}
	}
	admin, err := auth.CreateUsers(ctx, ajs, 0)
	if err != nil {
		t.Fatal(err)
	}
	admin.Cost = bcrypt.MinCost
	if err := admin.Add(ctx, "alice", "correct horse", nil); err != nil {
		t.Fatal(err)
	}

	users, err := auth.OpenUsers(ctx, rjs)
	if err != nil {
		t.Fatal(err)
	}
	users.Cost = bcrypt.MinCost
	limiter, err := auth.OpenLimiter(ctx, rjs, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := users.Authenticate(ctx, "alice", "correct horse"); err != nil {
		t.Errorf("Authenticate as the auth role: %v", err)
	}
	for range 2 { // a new counter, then an update of it
		if _, err := limiter.Attempt(ctx, "alice", "192.0.2.1"); err != nil {
			t.Errorf("Attempt as the auth role: %v", err)
		}
	}
	if err := limiter.Succeeded(ctx, "alice", "192.0.2.1"); err != nil { // a delete and a give-back
		t.Errorf("Succeeded as the auth role: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := users.Add(short, "mallory", "correct horse", nil); err == nil {
		t.Error("the auth role could add a user")
	}
}
