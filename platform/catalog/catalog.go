// Package catalog keeps the deployed functions in a NATS KV bucket, the
// platform's one source of truth for what is routable: `shoal deploy`
// writes fn.yaml into it, and every gateway and runner watches it and
// applies changes live, with no restart.
//
// Each function is one entry, keyed by its name, whose value is its
// definition as JSON (manifest.Spec). The entry's KV revision is the
// deployment's revision: it changes whenever the definition does, and
// only then, since deploying an unchanged definition writes nothing.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
)

// Bucket is the KV bucket of deployed functions.
const Bucket = "shoal_functions"

// ErrNoCatalog means the bucket does not exist: nothing was ever deployed
// on this NATS.
var ErrNoCatalog = errors.New("no function catalog on this NATS (KV bucket " + Bucket + " is missing); `shoal deploy -f fn.yaml` or `shoal up` creates it")

// ErrNotDeployed means no function of that name is deployed.
var ErrNotDeployed = errors.New("function not deployed")

// Entry is a deployed function.
type Entry struct {
	Function manifest.Function
	// Revision is the KV revision that deployed this definition.
	Revision uint64
	// Deployed is when this definition was written.
	Deployed time.Time
}

// HistoryDepth is how many definitions of each function the catalog
// keeps, the deployed one included: what a rollback can go back to.
const HistoryDepth = 5

// Catalog reads and writes the deployed functions.
type Catalog struct {
	kv jetstream.KeyValue
	js jetstream.JetStream
}

// Create creates the bucket with the given number of replicas (1 on a
// single server, 3 on a cluster) or updates an existing one to it;
// replicas 0 keeps an existing bucket as it is and creates a missing one
// with 1. It returns once the bucket answers reads (a new replicated
// bucket takes a moment), or when ctx ends.
func Create(ctx context.Context, js jetstream.JetStream, replicas int) (*Catalog, error) {
	if replicas <= 0 {
		c, err := Open(ctx, js)
		if !errors.Is(err, ErrNoCatalog) {
			return c, err
		}
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Shoal: deployed functions by name (manifest.Spec JSON)",
		History:     HistoryDepth,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: create bucket %s: %w", Bucket, err)
	}
	if err := readable(ctx, kv); err != nil {
		return nil, err
	}
	return &Catalog{kv: kv, js: js}, nil
}

// readable waits until the bucket answers reads: a bucket just created
// with replicas answers direct gets only once its replicas are ready, and
// until then a read finds no responders.
func readable(ctx context.Context, kv jetstream.KeyValue) error {
	for {
		_, err := kv.Get(ctx, "readable-probe")
		if err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		if !errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("catalog: read bucket %s: %w", Bucket, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("catalog: bucket %s does not answer reads yet: %w", Bucket, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Open opens the existing bucket; ErrNoCatalog if there is none.
func Open(ctx context.Context, js jetstream.JetStream) (*Catalog, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, ErrNoCatalog
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: open bucket %s: %w", Bucket, err)
	}
	return &Catalog{kv: kv, js: js}, nil
}

// List returns the deployed functions sorted by name. Entries that cannot
// be decoded are returned in bad, by name, with their error; they are
// served by no gateway or runner.
func (c *Catalog) List(ctx context.Context) (entries []Entry, bad map[string]error, err error) {
	lister, err := c.kv.ListKeys(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("catalog: list: %w", err)
	}
	var names []string
	for name := range lister.Keys() {
		names = append(names, name)
	}
	slices.Sort(names)
	bad = map[string]error{}
	for _, name := range names {
		e, err := c.kv.Get(ctx, name)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, nil, fmt.Errorf("catalog: read %s: %w", name, err)
		}
		entry, err := decode(e)
		if err != nil {
			bad[name] = err
			continue
		}
		entries = append(entries, entry)
	}
	return entries, bad, nil
}

// Get returns one deployed function; ErrNotDeployed if there is none.
func (c *Catalog) Get(ctx context.Context, name string) (Entry, error) {
	e, err := c.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Entry{}, fmt.Errorf("%w: %s", ErrNotDeployed, name)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("catalog: read %s: %w", name, err)
	}
	return decode(e)
}

// decode turns a KV entry into an Entry.
func decode(e jetstream.KeyValueEntry) (Entry, error) {
	fn, err := manifest.UnmarshalSpec(e.Value())
	if err != nil {
		return Entry{}, fmt.Errorf("catalog: entry %s: %w", e.Key(), err)
	}
	if fn.Name != e.Key() {
		return Entry{}, fmt.Errorf("catalog: entry %s holds function %q", e.Key(), fn.Name)
	}
	return Entry{Function: fn, Revision: e.Revision(), Deployed: e.Created()}, nil
}

// Action says what a deployment did to one function.
type Action string

// The actions.
const (
	Created   Action = "created"
	Updated   Action = "updated"
	Unchanged Action = "unchanged"
	Removed   Action = "removed"
)

// Change is what a deployment did to one function.
type Change struct {
	Name   string `json:"name"`
	Action Action `json:"action"`
	// Revision is the function's revision after the change; for Removed,
	// the revision of the removal.
	Revision uint64 `json:"revision"`
}

// Deploy writes the functions into the catalog: new ones are created,
// changed ones updated, identical ones left alone (their revision does not
// move). With prune, deployed functions not in fns are removed. Every
// write is conditional on the revision read just before it, so a deploy
// that races another one with a different definition fails rather than
// undoing its changes (the changes made up to the failure are kept and
// returned); two deploys of the same definitions both succeed.
func (c *Catalog) Deploy(ctx context.Context, fns []manifest.Function, prune bool) ([]Change, error) {
	seen := map[string]bool{}
	for _, fn := range fns {
		if seen[fn.Name] {
			return nil, fmt.Errorf("catalog: function %q is listed twice", fn.Name)
		}
		seen[fn.Name] = true
	}
	var changes []Change
	for _, fn := range fns {
		ch, err := c.put(ctx, fn)
		if err != nil {
			return changes, err
		}
		changes = append(changes, ch)
	}
	if !prune {
		return changes, nil
	}
	lister, err := c.kv.ListKeys(ctx)
	if err != nil {
		return changes, fmt.Errorf("catalog: list: %w", err)
	}
	var stale []string
	for name := range lister.Keys() {
		if !seen[name] {
			stale = append(stale, name)
		}
	}
	slices.Sort(stale)
	for _, name := range stale {
		rev, err := c.Remove(ctx, name)
		if errors.Is(err, ErrNotDeployed) {
			continue
		}
		if err != nil {
			return changes, err
		}
		changes = append(changes, Change{Name: name, Action: Removed, Revision: rev})
	}
	return changes, nil
}

func (c *Catalog) put(ctx context.Context, fn manifest.Function) (Change, error) {
	value, err := manifest.MarshalSpec(fn)
	if err != nil {
		return Change{}, err
	}
	cur, err := c.kv.Get(ctx, fn.Name)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// Never deployed, or deleted: Create succeeds on both.
		rev, err := c.kv.Create(ctx, fn.Name, value)
		if err != nil {
			return c.raced(ctx, fn, err)
		}
		return Change{Name: fn.Name, Action: Created, Revision: rev}, nil
	case err != nil:
		return Change{}, fmt.Errorf("catalog: read %s: %w", fn.Name, err)
	}
	if old, err := decode(cur); err == nil && manifest.SameDefinition(old.Function, fn) {
		return Change{Name: fn.Name, Action: Unchanged, Revision: cur.Revision()}, nil
	}
	rev, err := c.kv.Update(ctx, fn.Name, value, cur.Revision())
	if err != nil {
		return c.raced(ctx, fn, err)
	}
	return Change{Name: fn.Name, Action: Updated, Revision: rev}, nil
}

// raced handles a conditional write of fn that failed with err: when
// another writer got there first with the same definition (two deploys of
// one file, e.g. two pods starting at once), the function is simply
// unchanged; otherwise it is a conflict.
func (c *Catalog) raced(ctx context.Context, fn manifest.Function, err error) (Change, error) {
	if cur, gerr := c.kv.Get(ctx, fn.Name); gerr == nil {
		if now, derr := decode(cur); derr == nil && manifest.SameDefinition(now.Function, fn) {
			return Change{Name: fn.Name, Action: Unchanged, Revision: cur.Revision()}, nil
		}
	}
	return Change{}, conflict(fn.Name, err)
}

// conflict explains a failed conditional write.
func conflict(name string, err error) error {
	if errors.Is(err, jetstream.ErrKeyExists) || strings.Contains(err.Error(), "wrong last sequence") {
		return fmt.Errorf("catalog: function %q was changed by someone else during this deploy; run it again: %w", name, err)
	}
	return fmt.Errorf("catalog: write %s: %w", name, err)
}

// Remove removes a deployed function and returns the revision of the
// removal; ErrNotDeployed if it is not deployed.
func (c *Catalog) Remove(ctx context.Context, name string) (uint64, error) {
	cur, err := c.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, fmt.Errorf("%w: %s", ErrNotDeployed, name)
	}
	if err != nil {
		return 0, fmt.Errorf("catalog: read %s: %w", name, err)
	}
	if err := c.kv.Delete(ctx, name, jetstream.LastRevision(cur.Revision())); err != nil {
		// Someone else may have removed it first (two deploys pruning
		// the same function): then it is simply not deployed any more.
		if _, gerr := c.kv.Get(ctx, name); errors.Is(gerr, jetstream.ErrKeyNotFound) {
			return 0, fmt.Errorf("%w: %s", ErrNotDeployed, name)
		}
		return 0, conflict(name, err)
	}
	// The delete marker is the key's last entry in its history.
	hist, err := c.kv.History(ctx, name)
	if err != nil || len(hist) == 0 {
		return cur.Revision(), nil // removed; the revision is only informative
	}
	return hist[len(hist)-1].Revision(), nil
}
