package keyring_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/keyring"
	"github.com/shoal-dev/shoal/token"
)

func TestWatchFollowsPublishAndRemove(t *testing.T) {
	s := brokertest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, err := jetstream.New(brokertest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keyring.Watch(ctx, js, nil); !errors.Is(err, keyring.ErrNoKeys) {
		t.Fatalf("watch before any key: %v, want ErrNoKeys", err)
	}
	kv, err := keyring.Create(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	k1, err := token.GenerateKey(token.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Publish(ctx, kv, k1); err != nil {
		t.Fatal(err)
	}
	// A second process watches.
	js2, err := jetstream.New(brokertest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.Watch(ctx, js2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Stop()
	id1 := k1.Marshal().KID
	if got := kr.KeyIDs(); !slices.Equal(got, []string{id1}) {
		t.Fatalf("keys at start %v, want [%s]", got, id1)
	}
	// Only the public half is stored and served.
	e, err := kv.Get(ctx, id1)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := kr.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{string(e.Value()), string(jwks)} {
		if strings.Contains(b, `"d"`) || !strings.Contains(b, id1) {
			t.Errorf("stored or served key %s: want the public half of %s", b, id1)
		}
	}

	k2, err := token.GenerateKey(token.ES256)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Publish(ctx, kv, k2); err != nil {
		t.Fatal(err)
	}
	id2 := k2.Marshal().KID
	waitFor(t, func() bool { return len(kr.KeyIDs()) == 2 })
	if _, err := kr.KeyRead(ctx, id2); err != nil {
		t.Errorf("new key not readable: %v", err)
	}
	if err := keyring.Remove(ctx, kv, id1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return slices.Equal(kr.KeyIDs(), []string{id2}) })
	if _, err := kr.KeyRead(ctx, id1); err == nil {
		t.Error("a withdrawn key is still readable")
	}
	if err := keyring.Remove(ctx, kv, id1); err == nil {
		t.Error("removing a key twice: no error")
	}
	// A malformed entry (not written by Publish) is ignored, not fatal.
	if _, err := kv.Put(ctx, "junk", []byte("{not a key")); err != nil {
		t.Fatal(err)
	}
	hs, err := token.GenerateKey(token.HS256)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Publish(ctx, kv, hs); err == nil {
		t.Error("a shared secret was published")
	}
	k3, err := token.GenerateKey(token.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Publish(ctx, kv, k3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(kr.KeyIDs()) == 2 })
	if slices.Contains(kr.KeyIDs(), "junk") {
		t.Error("the malformed entry was taken as a key")
	}
	// A key overwritten with junk is withdrawn, as a new watcher would
	// never have seen it.
	if _, err := kv.Put(ctx, k3.Marshal().KID, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return slices.Equal(kr.KeyIDs(), []string{id2}) })
	if err := kr.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not within 10s")
		}
	}
}
