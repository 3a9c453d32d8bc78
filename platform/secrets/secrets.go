// Package secrets keeps the values functions reference by name in fn.yaml
// (`secrets: {ENV_VAR: secret-name}`), in a NATS KV bucket, so that a
// manifest, the function catalog and `shoal list` never carry them.
//
// `shoal secret set` writes them with the admin's credentials; runners
// read them as they start a function's processes and pass them in its
// environment. Only the admin and runner NATS roles may read the bucket
// (platform/broker); the gateway and clients may not.
package secrets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
)

// Bucket is the KV bucket of secrets.
const Bucket = "shoal_secrets"

// MaxValue is the largest secret value, in bytes.
const MaxValue = 64 << 10

// ErrNotFound means no secret of that name is set.
var ErrNotFound = errors.New("secret not set")

// Store reads and writes secrets.
type Store struct {
	kv jetstream.KeyValue
}

// Create creates the bucket with the given replicas (0 keeps an existing
// bucket and creates a missing one with 1), or opens it.
func Create(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	if replicas <= 0 {
		kv, err := js.KeyValue(ctx, Bucket)
		if err == nil {
			return &Store{kv: kv}, nil
		}
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("secrets: open bucket %s: %w", Bucket, err)
		}
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Shoal: secrets functions reference by name",
		History:     1,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("secrets: create bucket %s: %w", Bucket, err)
	}
	return &Store{kv: kv}, nil
}

// Open opens the bucket; a missing bucket reads as empty (Get answers
// ErrNotFound), since nothing was set yet.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return &Store{}, nil
	case err != nil:
		return nil, fmt.Errorf("secrets: open bucket %s: %w", Bucket, err)
	}
	return &Store{kv: kv}, nil
}

// Set writes a secret's value.
func (s *Store) Set(ctx context.Context, name string, value []byte) error {
	if err := check(name); err != nil {
		return err
	}
	if len(value) > MaxValue {
		return fmt.Errorf("secret %q: the value is %d bytes, more than %d", name, len(value), MaxValue)
	}
	if bytes.IndexByte(value, 0) >= 0 {
		return fmt.Errorf("secret %q: the value contains a NUL byte, which an environment variable cannot hold", name)
	}
	if s.kv == nil {
		return fmt.Errorf("secret %q: the bucket %s does not exist (secrets.Create makes it)", name, Bucket)
	}
	if _, err := s.kv.Put(ctx, name, value); err != nil {
		return fmt.Errorf("secret %q: write: %w", name, err)
	}
	return nil
}

// Get reads a secret's value; ErrNotFound when it is not set.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	if err := check(name); err != nil {
		return nil, err
	}
	if s.kv == nil {
		return nil, fmt.Errorf("secret %q: %w", name, ErrNotFound)
	}
	e, err := s.kv.Get(ctx, name)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, fmt.Errorf("secret %q: %w", name, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("secret %q: read: %w", name, err)
	}
	return e.Value(), nil
}

// Delete removes a secret; ErrNotFound when it is not set.
func (s *Store) Delete(ctx context.Context, name string) error {
	if _, err := s.Get(ctx, name); err != nil {
		return err
	}
	if err := s.kv.Purge(ctx, name); err != nil {
		return fmt.Errorf("secret %q: delete: %w", name, err)
	}
	return nil
}

// Names lists the secrets that are set, sorted; never their values.
func (s *Store) Names(ctx context.Context) ([]string, error) {
	if s.kv == nil {
		return nil, nil
	}
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("secrets: list: %w", err)
	}
	var names []string
	for name := range lister.Keys() {
		names = append(names, name)
	}
	slices.Sort(names)
	return names, nil
}

// Resolve reads the secrets a function references (environment variable
// → secret name) and returns the variables with their values; the error
// names every secret that is missing.
func (s *Store) Resolve(ctx context.Context, refs map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(refs))
	var errs []error
	for _, env := range slices.Sorted(maps.Keys(refs)) {
		v, err := s.Get(ctx, refs[env])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", env, err))
			continue
		}
		out[env] = string(v)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func check(name string) error {
	if !manifest.ValidSecretName(name) {
		return fmt.Errorf("invalid secret name %q: use 1 to 128 lowercase letters, digits and . _ -, starting and ending with a letter or digit", name)
	}
	return nil
}
