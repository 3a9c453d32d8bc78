package catalog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
)

// ErrNoEarlierRevision means a rollback found no earlier definition of the
// function to go back to in the catalog's history.
var ErrNoEarlierRevision = errors.New("no earlier revision to roll back to")

// History returns the definitions of a function the catalog still keeps
// (the bucket keeps the last few per function), oldest first; removals
// and entries that cannot be decoded are left out. ErrNotDeployed if it
// has none.
func (c *Catalog) History(ctx context.Context, name string) ([]Entry, error) {
	hist, err := c.kv.History(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotDeployed, name)
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: history of %s: %w", name, err)
	}
	var out []Entry
	for _, e := range hist {
		if e.Operation() != jetstream.KeyValuePut {
			continue
		}
		if entry, err := decode(e); err == nil {
			out = append(out, entry)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotDeployed, name)
	}
	return out, nil
}

// Rollback deploys again an earlier definition of a function, as a new
// revision: the one of the given revision, or, when revision is 0, the
// newest one that differs from what is deployed now. check, when not
// nil, vets the definition first (e.g. that its code is still stored).
// The write is conditional, as Deploy's.
func (c *Catalog) Rollback(ctx context.Context, name string, revision uint64, check func(manifest.Function) error) (Change, Entry, error) {
	hist, err := c.History(ctx, name)
	if err != nil {
		return Change{}, Entry{}, err
	}
	cur, err := c.Get(ctx, name)
	deployed := err == nil
	if err != nil && !errors.Is(err, ErrNotDeployed) {
		return Change{}, Entry{}, err
	}
	var target *Entry
	for i := len(hist) - 1; i >= 0; i-- {
		e := hist[i]
		switch {
		case revision != 0 && e.Revision == revision:
			target = &hist[i]
		case revision == 0 && (!deployed || !manifest.SameDefinition(e.Function, cur.Function)):
			target = &hist[i]
		}
		if target != nil {
			break
		}
	}
	if target == nil {
		if revision != 0 {
			return Change{}, Entry{}, fmt.Errorf("catalog: revision %d of %s is not in the catalog's history (it keeps revisions %s)", revision, name, revisions(hist))
		}
		return Change{}, Entry{}, fmt.Errorf("catalog: %s: %w (the catalog keeps revisions %s)", name, ErrNoEarlierRevision, revisions(hist))
	}
	if check != nil {
		if err := check(target.Function); err != nil {
			return Change{}, Entry{}, fmt.Errorf("catalog: cannot roll %s back to revision %d: %w", name, target.Revision, err)
		}
	}
	ch, err := c.put(ctx, target.Function)
	return ch, *target, err
}

// Names lists every function the catalog keeps a history of, removed
// ones included, sorted.
func (c *Catalog) Names(ctx context.Context) ([]string, error) {
	st, err := c.js.Stream(ctx, "KV_"+Bucket)
	if err != nil {
		return nil, fmt.Errorf("catalog: names: %w", err)
	}
	prefix := "$KV." + Bucket + "."
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("catalog: names: %w", err)
	}
	names := make([]string, 0, len(info.State.Subjects))
	for subject := range info.State.Subjects {
		names = append(names, strings.TrimPrefix(subject, prefix))
	}
	slices.Sort(names)
	return names, nil
}

func revisions(hist []Entry) string {
	s := ""
	for i, e := range hist {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprint(e.Revision)
	}
	return s
}
