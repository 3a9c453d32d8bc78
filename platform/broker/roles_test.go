package broker_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/keyring"
)

// TestRolePermissions checks, on a real server, what each role may
// publish and subscribe to: one fresh connection per row, and the
// server's verdict read after a round trip.
func TestRolePermissions(t *testing.T) {
	s, creds := brokertest.StartSecured(t)
	tests := []struct {
		role    broker.Role
		sub     bool // subscribe, else publish
		subject string
		allowed bool
	}{
		// A client sends invocations and reads its own replies only.
		{broker.RoleClient, false, "fn.ping", true},
		{broker.RoleClient, true, broker.ClientInboxPrefix + ".x", true},
		{broker.RoleClient, true, "fn.>", false},
		{broker.RoleClient, true, "fn.ping", false},
		{broker.RoleClient, true, ">", false},
		{broker.RoleClient, true, "_INBOX.>", false},         // the admin's replies
		{broker.RoleClient, true, "_INBOX_gateway.>", false}, // the gateway's replies
		{broker.RoleClient, true, "_INBOX_auth.>", false},    // users, read by the auth function
		{broker.RoleClient, true, "$SRV.PING", false},
		{broker.RoleClient, false, "$KV.shoal_users.alice", false},
		{broker.RoleClient, false, "$JS.API.STREAM.INFO.KV_shoal_users", false},
		{broker.RoleClient, false, "$KV.shoal_keys.evil", false},
		// The gateway sends invocations; it takes none and reads only its
		// own replies.
		{broker.RoleGateway, false, "fn.ping", true},
		{broker.RoleGateway, true, "_INBOX_gateway.x", true},
		{broker.RoleGateway, true, "_INBOX.>", false},
		{broker.RoleGateway, true, "_INBOX_auth.>", false},
		{broker.RoleGateway, true, "fn.>", false},
		{broker.RoleGateway, false, "$KV.shoal_keys.evil", false},
		// It lists the calls' records by pulling the headers of their
		// bucket's stream, but pulls no calls: runners do.
		{broker.RoleGateway, false, "$JS.API.CONSUMER.MSG.NEXT.KV_shoal_calls.list_1", true},
		{broker.RoleGateway, false, "$JS.API.CONSUMER.MSG.NEXT.SHOAL_CALLS.echo", false},
		{broker.RoleGateway, false, "$JS.API.CONSUMER.MSG.NEXT.SHOAL_CALLBACKS.callbacks", false},
		// It can neither read the dead letters (requests with their
		// tokens), nor change them, nor re-drive a call.
		{broker.RoleGateway, false, "$JS.API.STREAM.INFO.SHOAL_DLQ", false},
		{broker.RoleGateway, false, "$JS.API.DIRECT.GET.SHOAL_DLQ.dlq.x", false},
		{broker.RoleGateway, false, "$JS.API.STREAM.MSG.GET.SHOAL_DLQ", false},
		{broker.RoleGateway, false, "$JS.API.STREAM.MSG.DELETE.SHOAL_DLQ", false},
		{broker.RoleGateway, false, "$JS.API.STREAM.PURGE.SHOAL_DLQ", false},
		{broker.RoleGateway, false, "calls.echo.retry", false},
		{broker.RoleGateway, false, "dlq.x", false},
		// Gateways exchange their live figures: requests on shoal.stats,
		// replies under shoal.stats.reply., not in inboxes.
		{broker.RoleGateway, true, "shoal.stats", true},
		{broker.RoleGateway, true, "shoal.stats.reply.x", true},
		{broker.RoleGateway, false, "shoal.stats", true},
		{broker.RoleGateway, false, "shoal.stats.reply.x", true},
		{broker.RoleGateway, true, "shoal.>", false},
		{broker.RoleGateway, false, "_INBOX_gateway.x", false}, // another gateway's invocation replies
		// It acknowledges the messages of streamed answers on the
		// runners' stream subjects, and nowhere else in their inboxes
		// (their JetStream replies arrive there).
		{broker.RoleGateway, false, "_INBOX_runner.stream.abc.1", true},
		{broker.RoleGateway, false, "_INBOX_auth.stream.abc.1", true},
		{broker.RoleGateway, false, "_INBOX.stream.abc.1", true},
		{broker.RoleGateway, false, "_INBOX_runner.abc", false},
		{broker.RoleGateway, false, "_INBOX_auth.abc.1", false},
		{broker.RoleGateway, false, "_INBOX.abc", false},
		{broker.RoleGateway, false, "_INBOX_client.stream.abc", false},
		// Clients acknowledge no streamed answers: only the gateway streams.
		{broker.RoleClient, false, "_INBOX_runner.stream.abc.1", false},
		// Runners subscribe to their stream subjects (their inbox prefix).
		{broker.RoleRunner, true, "_INBOX_runner.stream.abc.*", true},
		{broker.RoleAuth, true, "_INBOX_auth.stream.abc.*", true},
		// Functions' code and secrets: runners read both; only the
		// admin writes them, and gateways and clients read neither.
		{broker.RoleRunner, false, "$JS.API.STREAM.INFO.OBJ_shoal_code", true},
		{broker.RoleRunner, false, "$JS.API.DIRECT.GET.OBJ_shoal_code.$O.shoal_code.M.x", true},
		{broker.RoleRunner, false, "$JS.API.CONSUMER.CREATE.OBJ_shoal_code.x.$O.shoal_code.C.y", true},
		{broker.RoleRunner, false, "$JS.API.DIRECT.GET.KV_shoal_secrets.$KV.shoal_secrets.db", true},
		{broker.RoleAuth, false, "$JS.API.DIRECT.GET.KV_shoal_secrets.$KV.shoal_secrets.db", true},
		{broker.RoleRunner, false, "$O.shoal_code.C.x", false},
		{broker.RoleRunner, false, "$KV.shoal_secrets.db", false},
		{broker.RoleRunner, false, "$JS.API.STREAM.CREATE.OBJ_shoal_code", false},
		{broker.RoleGateway, false, "$JS.API.DIRECT.GET.KV_shoal_secrets.$KV.shoal_secrets.db", false},
		{broker.RoleGateway, false, "$JS.API.STREAM.INFO.KV_shoal_secrets", false},
		{broker.RoleGateway, false, "$JS.API.CONSUMER.CREATE.KV_shoal_secrets", false},
		{broker.RoleClient, false, "$JS.API.DIRECT.GET.KV_shoal_secrets.$KV.shoal_secrets.db", false},
		{broker.RoleGateway, false, "$JS.API.STREAM.INFO.OBJ_shoal_code", false},
		// Nobody else takes part: no reading the figures, no feeding
		// false ones.
		{broker.RoleClient, true, "shoal.stats", false},
		{broker.RoleClient, true, "shoal.stats.>", false},
		{broker.RoleClient, false, "shoal.stats", false},
		{broker.RoleClient, false, "shoal.stats.reply.x", false},
		{broker.RoleRunner, true, "shoal.stats", false},
		{broker.RoleRunner, true, "shoal.stats.>", false},
		{broker.RoleRunner, false, "shoal.stats.reply.x", false},
		{broker.RoleAuth, true, "shoal.stats.>", false},
		{broker.RoleAuth, false, "shoal.stats.reply.x", false},
		// A runner takes invocations and answers callers' inboxes only; it
		// cannot read users, write keys, send invocations or publish
		// elsewhere.
		{broker.RoleRunner, true, "fn.>", true},
		{broker.RoleRunner, true, "$SRV.PING", true},
		{broker.RoleRunner, true, "_INBOX_runner.x", true},
		{broker.RoleRunner, true, "_INBOX_gateway.>", false},
		{broker.RoleRunner, true, "_INBOX_auth.>", false},
		{broker.RoleRunner, false, "_INBOX_gateway.abc.1", true},
		{broker.RoleRunner, false, "_INBOX_client.abc.1", true},
		{broker.RoleRunner, false, "$KV.shoal_login_failures.u.x", false},
		{broker.RoleRunner, false, "$JS.API.STREAM.INFO.KV_shoal_users", false},
		{broker.RoleRunner, false, "$KV.shoal_users.alice", false},
		{broker.RoleRunner, false, "$KV.shoal_keys.evil", false},
		{broker.RoleRunner, false, "fn.ping", false},
		{broker.RoleRunner, false, "$JS.API.STREAM.DELETE.KV_shoal_users", false},
		// The auth runner also reads users and counts failed logins.
		{broker.RoleAuth, true, "fn.>", true},
		{broker.RoleAuth, true, "_INBOX_auth.x", true},
		{broker.RoleAuth, false, "$KV.shoal_login_failures.u.x", true},
		{broker.RoleAuth, false, "$JS.API.STREAM.INFO.KV_shoal_users", true},
		{broker.RoleAuth, false, "$KV.shoal_users.alice", false},
		{broker.RoleAuth, false, "$KV.shoal_keys.evil", false},
		{broker.RoleAuth, false, "$JS.API.STREAM.PURGE.KV_shoal_users", false},
		// The admin may do anything.
		{broker.RoleAdmin, true, ">", true},
		{broker.RoleAdmin, false, "$KV.shoal_users.alice", true},
	}
	for _, tt := range tests {
		op := "publish"
		if tt.sub {
			op = "subscribe"
		}
		t.Run(string(tt.role)+"/"+op+"/"+tt.subject, func(t *testing.T) {
			nc := brokertest.ConnectAs(t, s, creds, tt.role, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
			var err error
			if tt.sub {
				_, err = nc.SubscribeSync(tt.subject)
			} else {
				err = nc.Publish(tt.subject, []byte("x"))
			}
			if err != nil {
				t.Fatal(err)
			}
			// The server answers a violation before the flush's PONG.
			if err := nc.FlushTimeout(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			violated := errors.Is(nc.LastError(), nats.ErrPermissionViolation)
			if violated == tt.allowed {
				t.Errorf("allowed = %v, want %v (last error: %v)", !violated, tt.allowed, nc.LastError())
			}
		})
	}
}

// TestReplySubjectCannotSteerRunners: a client that sets the reply subject
// of an invocation to a KV subject does not get a runner to write there.
func TestReplySubjectCannotSteerRunners(t *testing.T) {
	s, creds := brokertest.StartSecured(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}
	users, err := admin.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: auth.UsersBucket})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := users.Put(ctx, "alice", []byte("hash")); err != nil {
		t.Fatal(err)
	}
	answered := make(chan struct{}, 10)
	var runners []*nats.Conn
	for _, role := range []broker.Role{broker.RoleRunner, broker.RoleAuth} {
		rc := brokertest.ConnectAs(t, s, creds, role, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		if _, err := rc.QueueSubscribe("fn.ping", "shoal-runners", func(m *nats.Msg) {
			_ = m.Respond([]byte("pong!"))
			answered <- struct{}{}
		}); err != nil {
			t.Fatal(err)
		}
		if err := rc.Flush(); err != nil {
			t.Fatal(err)
		}
		runners = append(runners, rc)
	}
	cc := brokertest.ConnectAs(t, s, creds, broker.RoleClient)
	for _, reply := range []string{"$KV.shoal_users.alice", "$JS.API.STREAM.PURGE.KV_shoal_users", "$KV.shoal_login_failures.u.x"} {
		for range 4 { // both runners
			if err := cc.PublishRequest("fn.ping", reply, nil); err != nil {
				t.Fatal(err)
			}
			select {
			case <-answered:
			case <-ctx.Done():
				t.Fatal("no runner took the invocation")
			}
		}
	}
	// The server has handled each runner's answers once its flush returns.
	for _, rc := range runners {
		if err := rc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	e, err := users.Get(ctx, "alice")
	if err != nil || string(e.Value()) != "hash" {
		t.Fatalf("alice's record after reply-subject tricks: %v %v", e, err)
	}
}

func TestSecuredServerRefusesStrangers(t *testing.T) {
	s, _ := brokertest.StartSecured(t)
	if nc, err := nats.Connect(s.ClientURL()); err == nil {
		nc.Close()
		t.Fatal("a connection without credentials was accepted")
	} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(err.Error(), "Authorization Violation") {
		t.Fatalf("error = %v, want an authorization violation", err)
	}
	// A seed the server does not know is refused too.
	other, err := broker.EnsureCredentials(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opt, err := nats.NkeyOptionFromSeed(other.SeedFile(broker.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(s.ClientURL(), opt); err == nil {
		nc.Close()
		t.Fatal("an unknown NKey was accepted")
	}
}

// TestRolesUseKV checks that the JetStream work each role does is allowed
// in full: a runner counts failed logins and reads users, the gateway
// watches the signing keys, a client round-trips an invocation.
func TestRolesUseKV(t *testing.T) {
	s, creds := brokertest.StartSecured(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{keyring.Bucket, auth.UsersBucket} {
		kv, err := admin.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "k1", []byte("v1")); err != nil {
			t.Fatal(err)
		}
	}

	runner, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleAuth))
	if err != nil {
		t.Fatal(err)
	}
	// The auth runner creates the failures bucket itself, then writes
	// and updates it.
	failures, err := runner.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: auth.FailuresBucket, TTL: time.Minute})
	if err != nil {
		t.Fatalf("runner creates the failures bucket: %v", err)
	}
	rev, err := failures.Create(ctx, "u.abc", []byte("1"))
	if err != nil {
		t.Fatalf("runner writes a failure: %v", err)
	}
	if _, err := failures.Update(ctx, "u.abc", []byte("2"), rev); err != nil {
		t.Fatalf("runner updates a failure: %v", err)
	}
	users, err := runner.KeyValue(ctx, auth.UsersBucket)
	if err != nil {
		t.Fatalf("runner opens users: %v", err)
	}
	if e, err := users.Get(ctx, "k1"); err != nil || string(e.Value()) != "v1" {
		t.Fatalf("runner reads a user: %v", err)
	}
	if _, err := users.Put(denied(t), "k2", []byte("x")); err == nil {
		t.Fatal("runner wrote a user")
	}
	// A plain runner reads no users.
	plain, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleRunner))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.KeyValue(denied(t), auth.UsersBucket); err == nil {
		t.Fatal("a plain runner opened the users bucket")
	}

	gw, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleGateway))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := gw.KeyValue(ctx, keyring.Bucket)
	if err != nil {
		t.Fatalf("gateway opens keys: %v", err)
	}
	w, err := keys.WatchAll(ctx)
	if err != nil {
		t.Fatalf("gateway watches keys: %v", err)
	}
	defer w.Stop()
	select {
	case e := <-w.Updates():
		if e == nil || e.Key() != "k1" {
			t.Fatalf("first watch entry = %v, want k1", e)
		}
	case <-ctx.Done():
		t.Fatal("no key reached the gateway's watch")
	}
	if _, err := keys.Put(denied(t), "evil", []byte("x")); err == nil {
		t.Fatal("gateway wrote a key")
	}

	// A client's invocation reaches a runner-role responder and back.
	rc := brokertest.ConnectAs(t, s, creds, broker.RoleRunner)
	if _, err := rc.QueueSubscribe("fn.ping", "shoal-runners", func(m *nats.Msg) { _ = m.Respond([]byte("pong!")) }); err != nil {
		t.Fatal(err)
	}
	if err := rc.Flush(); err != nil {
		t.Fatal(err)
	}
	cc := brokertest.ConnectAs(t, s, creds, broker.RoleClient)
	reply, err := cc.RequestWithContext(ctx, "fn.ping", nil)
	if err != nil || string(reply.Data) != "pong!" {
		t.Fatalf("client request = %v, %v", reply, err)
	}
}

// denied is the context of an operation the server refuses: a refused
// publish gets no acknowledgement, so the caller waits out the deadline.
func denied(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

func TestEnsureCredentialsKeepsIdentities(t *testing.T) {
	dir := t.TempDir()
	a, err := broker.EnsureCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.EnsureCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range broker.Roles {
		if a.Public[role] == "" || a.Public[role] != b.Public[role] {
			t.Errorf("%s: %q then %q", role, a.Public[role], b.Public[role])
		}
		fi, err := os.Stat(a.SeedFile(role))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s seed mode %v, want 0600", role, fi.Mode().Perm())
		}
	}
}
