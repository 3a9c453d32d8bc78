package secrets_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/secrets"
)

func TestSecrets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, creds := brokertest.StartSecured(t)
	admin, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}
	// Before anything is set, the bucket may not exist: reading finds
	// nothing, listing lists nothing.
	empty, err := secrets.Open(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := empty.Get(ctx, "db"); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("Get before the bucket = %v, want ErrNotFound", err)
	}
	if names, err := empty.Names(ctx); err != nil || names != nil {
		t.Errorf("Names before the bucket = %v, %v", names, err)
	}
	store, err := secrets.Create(ctx, admin, 0)
	if err != nil {
		t.Fatal(err)
	}
	if names, err := store.Names(ctx); err != nil || len(names) != 0 {
		t.Errorf("Names of an empty bucket = %v, %v", names, err)
	}
	for name, v := range map[string]string{"db-password": "hunter2", "api.key": "k\x01\xff"} {
		if err := store.Set(ctx, name, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Set(ctx, "db-password", []byte("hunter3")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "UPPER", "a b", "-x", "../x", strings.Repeat("a", 129)} {
		if err := store.Set(ctx, bad, []byte("v")); err == nil || !strings.Contains(err.Error(), "invalid secret name") {
			t.Errorf("Set(%q) = %v, want invalid secret name", bad, err)
		}
	}
	if err := store.Set(ctx, "nul", []byte("a\x00b")); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("Set of a value with a NUL byte = %v, want refused", err)
	}
	if err := store.Set(ctx, "big", make([]byte, secrets.MaxValue+1)); err == nil {
		t.Error("Set of a value over MaxValue succeeded")
	}
	if names, err := store.Names(ctx); err != nil || !slices.Equal(names, []string{"api.key", "db-password"}) {
		t.Errorf("Names = %v, %v", names, err)
	}

	// A runner reads them; a gateway or a client may not.
	runner, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleRunner))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := secrets.Open(ctx, runner)
	if err != nil {
		t.Fatal(err)
	}
	env, err := rs.Resolve(ctx, map[string]string{"DB_PASSWORD": "db-password", "KEY": "api.key"})
	if err != nil || env["DB_PASSWORD"] != "hunter3" || env["KEY"] != "k\x01\xff" || len(env) != 2 {
		t.Errorf("Resolve = %q, %v", env, err)
	}
	_, err = rs.Resolve(ctx, map[string]string{"A": "nope", "B": "db-password", "C": "gone"})
	if !errors.Is(err, secrets.ErrNotFound) || !strings.Contains(err.Error(), `A: secret "nope"`) || !strings.Contains(err.Error(), `C: secret "gone"`) {
		t.Errorf("Resolve of missing secrets = %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	if err := rs.Set(short, "db-password", []byte("x")); err == nil {
		t.Error("a runner could write a secret")
	}
	cancelShort()
	for _, role := range []broker.Role{broker.RoleGateway, broker.RoleClient} {
		js, err := jetstream.New(brokertest.ConnectAs(t, s, creds, role))
		if err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, time.Second)
		st, err := secrets.Open(short, js)
		if err == nil {
			_, err = st.Get(short, "db-password")
		}
		cancel()
		if err == nil {
			t.Errorf("role %s read a secret", role)
		}
	}

	if err := store.Delete(ctx, "api.key"); err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, "api.key"); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
	if names, _ := store.Names(ctx); !slices.Equal(names, []string{"db-password"}) {
		t.Errorf("Names after Delete = %v", names)
	}
}
