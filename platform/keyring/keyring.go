// Package keyring distributes the public halves of Shoal's token signing
// keys through a NATS KV bucket, so that every gateway and runner verifies
// tokens with the same keys and learns of a new key within milliseconds:
// that is what lets keys rotate without downtime. Only public keys are
// stored; the private keys stay in the signer's key file.
package keyring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/shoal-dev/shoal/token"
)

// Bucket is the KV bucket of public keys; the key of each entry is the
// signing key's kid and its value the public JWK.
const Bucket = "shoal_keys"

// ErrNoKeys means the bucket does not exist: no signing key was ever
// published on this NATS.
var ErrNoKeys = errors.New("no token signing keys are published on this NATS (KV bucket " + Bucket + " is missing); start `shoal up` or run `shoal key rotate` once")

// Create creates the bucket with the given number of replicas (1 on a
// single server, 3 on a cluster), or updates an existing one to that
// number. replicas 0 leaves an existing bucket as it is and creates a
// missing one with 1.
func Create(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	if replicas <= 0 {
		kv, err := js.KeyValue(ctx, Bucket)
		if err == nil {
			return kv, nil
		}
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("keyring: open bucket %s: %w", Bucket, err)
		}
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Shoal: public token signing keys by kid",
		History:     1,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("keyring: create bucket %s: %w", Bucket, err)
	}
	return kv, nil
}

// Publish stores the public half of each key, by kid. Keys are added to
// those already there, never replacing them, so tokens signed with an
// older key keep verifying until it is removed.
func Publish(ctx context.Context, kv jetstream.KeyValue, keys ...jwkset.JWK) error {
	for _, k := range keys {
		m := k.Marshal()
		if m.KID == "" {
			return errors.New("keyring: a key without kid cannot be published")
		}
		pub, err := token.Public(k) // refuses shared secrets: only public keys are published
		if err != nil {
			return fmt.Errorf("keyring: %w", err)
		}
		b, err := json.Marshal(pub.Marshal())
		if err != nil {
			return fmt.Errorf("keyring: key %s: %w", m.KID, err)
		}
		if _, err := kv.Put(ctx, m.KID, b); err != nil {
			return fmt.Errorf("keyring: publish key %s: %w", m.KID, err)
		}
	}
	return nil
}

// ErrNotPublished means no published key has the kid.
var ErrNotPublished = errors.New("no published key has this kid")

// Remove withdraws a key: tokens signed with it stop verifying (within
// the verifiers' cache time).
func Remove(ctx context.Context, kv jetstream.KeyValue, kid string) error {
	if _, err := kv.Get(ctx, kid); err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("keyring: %q: %w", kid, ErrNotPublished)
		}
		return fmt.Errorf("keyring: remove key %s: %w", kid, err)
	}
	if err := kv.Delete(ctx, kid); err != nil {
		return fmt.Errorf("keyring: remove key %s: %w", kid, err)
	}
	return nil
}

// Keyring is the live set of published public keys. It satisfies the
// token package's KeySource; lookups read an immutable snapshot and never
// block.
type Keyring struct {
	keys    atomic.Pointer[map[string]jwkset.JWK]
	watcher jetstream.KeyWatcher
	done    chan struct{}
	log     *slog.Logger
}

// Watch reads the published keys and follows changes until Stop is
// called or the connection closes; after that the keyring keeps the last
// keys it saw. ctx bounds only the initial read: Watch returns once the
// current keys are loaded.
func Watch(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (*Keyring, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kv, err := js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNoKeys
	}
	if err != nil {
		return nil, fmt.Errorf("keyring: open bucket %s: %w", Bucket, err)
	}
	// The watch's own context is not ctx: it must outlive the start-up.
	w, err := kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("keyring: watch bucket %s: %w", Bucket, err)
	}
	k := &Keyring{watcher: w, done: make(chan struct{}), log: log}
	// The watcher first delivers every current entry, then a nil marker.
	initial := map[string]jwkset.JWK{}
	for loaded := false; !loaded; {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("keyring: the watch ended before the keys were read")
			}
			if e == nil {
				loaded = true
				break
			}
			k.apply(initial, e)
		case <-ctx.Done():
			_ = w.Stop()
			return nil, fmt.Errorf("keyring: read keys: %w", ctx.Err())
		}
	}
	k.keys.Store(&initial)
	go k.follow()
	return k, nil
}

// follow applies updates until the watcher stops (Stop, ctx done, or the
// connection closed).
func (k *Keyring) follow() {
	defer close(k.done)
	for e := range k.watcher.Updates() {
		if e == nil {
			continue
		}
		next := maps.Clone(*k.keys.Load())
		k.apply(next, e)
		k.keys.Store(&next)
	}
}

// apply records one KV entry in keys.
func (k *Keyring) apply(keys map[string]jwkset.JWK, e jetstream.KeyValueEntry) {
	kid := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		delete(keys, kid)
		k.log.Info("token signing key withdrawn", "kid", kid)
		return
	}
	// A malformed entry withdraws the key, so that every process, old or
	// new, agrees on what is trusted.
	jwk, err := jwkset.NewJWKFromRawJSON(e.Value(), jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
	if err != nil {
		delete(keys, kid)
		k.log.Error("a malformed public key in the keyring: not trusted", "kid", kid, "error", err)
		return
	}
	if jwk.Marshal().KID != kid {
		delete(keys, kid)
		k.log.Error("a public key stored under another kid: not trusted", "kid", kid, "jwk_kid", jwk.Marshal().KID)
		return
	}
	keys[kid] = jwk
	k.log.Debug("token signing key loaded", "kid", kid)
}

// KeyRead returns the published key with this kid.
func (k *Keyring) KeyRead(_ context.Context, kid string) (jwkset.JWK, error) {
	jwk, ok := (*k.keys.Load())[kid]
	if !ok {
		return jwkset.JWK{}, fmt.Errorf("keyring: %w: %q", jwkset.ErrKeyNotFound, kid)
	}
	return jwk, nil
}

// KeyIDs returns the kids of the published keys, sorted.
func (k *Keyring) KeyIDs() []string {
	return slices.Sorted(maps.Keys(*k.keys.Load()))
}

// JWKS returns the published keys as a JSON Web Key Set.
func (k *Keyring) JWKS() ([]byte, error) {
	keys := *k.keys.Load()
	set := jwkset.JWKSMarshal{Keys: make([]jwkset.JWKMarshal, 0, len(keys))}
	for _, kid := range slices.Sorted(maps.Keys(keys)) {
		set.Keys = append(set.Keys, keys[kid].Marshal())
	}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("keyring: encode JWKS: %w", err)
	}
	return b, nil
}

// Stop ends the watch and waits for the follower to exit.
func (k *Keyring) Stop() error {
	err := k.watcher.Stop()
	<-k.done
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("keyring: stop watch: %w", err)
	}
	return nil
}
