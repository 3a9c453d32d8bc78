package catalog_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/catalog"
)

func TestRollback(t *testing.T) {
	_, js, ctx := start(t)
	c := create(t, ctx, js)
	version := func(d time.Duration) manifest.Function {
		f := fn("web")
		f.Timeout = d
		return f
	}
	var revs []uint64
	for _, d := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		revs = append(revs, deploy(t, ctx, c, false, version(d))[0].Revision)
	}
	deploy(t, ctx, c, false, fn("other"))
	current := func() time.Duration {
		t.Helper()
		e, err := c.Get(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		return e.Function.Timeout
	}

	hist, err := c.History(ctx, "web")
	if err != nil || len(hist) != 3 || hist[0].Revision != revs[0] || hist[2].Function.Timeout != 3*time.Second {
		t.Fatalf("History = %+v, %v", hist, err)
	}
	// Back to the previous definition, as a new revision.
	ch, from, err := c.Rollback(ctx, "web", 0, nil)
	if err != nil || ch.Action != catalog.Updated || ch.Revision <= revs[2] || from.Revision != revs[1] || current() != 2*time.Second {
		t.Fatalf("Rollback = %+v from %d, %v; now %s", ch, from.Revision, err, current())
	}
	// To a revision named, refused by the check first.
	refuse := errors.New("code gone")
	if _, _, err := c.Rollback(ctx, "web", revs[0], func(manifest.Function) error { return refuse }); !errors.Is(err, refuse) || current() != 2*time.Second {
		t.Errorf("Rollback refused by its check = %v; now %s", err, current())
	}
	var checked time.Duration
	if _, _, err := c.Rollback(ctx, "web", revs[0], func(f manifest.Function) error { checked = f.Timeout; return nil }); err != nil || checked != time.Second || current() != time.Second {
		t.Errorf("Rollback to revision %d = %v (checked %s); now %s", revs[0], err, checked, current())
	}
	if _, _, err := c.Rollback(ctx, "web", 999, nil); err == nil {
		t.Error("Rollback to a revision not in the history succeeded")
	}
	// A function with one definition has nothing to go back to.
	if _, _, err := c.Rollback(ctx, "other", 0, nil); !errors.Is(err, catalog.ErrNoEarlierRevision) {
		t.Errorf("Rollback of a function deployed once = %v, want ErrNoEarlierRevision", err)
	}
	if _, _, err := c.Rollback(ctx, "nope", 0, nil); !errors.Is(err, catalog.ErrNotDeployed) {
		t.Errorf("Rollback of an unknown function = %v, want ErrNotDeployed", err)
	}
	// A removed function comes back with its last definition.
	if _, err := c.Remove(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if names, err := c.Names(ctx); err != nil || !slices.Equal(names, []string{"other", "web"}) {
		t.Errorf("Names with web removed = %v, %v", names, err)
	}
	if ch, _, err := c.Rollback(ctx, "web", 0, nil); err != nil || ch.Action != catalog.Created || current() != time.Second {
		t.Errorf("Rollback of a removed function = %+v, %v", ch, err)
	}
}
