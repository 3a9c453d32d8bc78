package catalog_test

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/catalog"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
)

// start starts a NATS server and returns it with a JetStream client and a
// context that bounds the test.
func start(t *testing.T) (*broker.Server, jetstream.JetStream, context.Context) {
	t.Helper()
	s := brokertest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return s, newJS(t, s), ctx
}

// newJS opens a JetStream client on a connection of its own: another
// process.
func newJS(t *testing.T, s *broker.Server) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(brokertest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func create(t *testing.T, ctx context.Context, js jetstream.JetStream) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Create(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fn is a valid public function running the built-in of its name.
func fn(name string) manifest.Function {
	return manifest.Function{Name: name, Handler: manifest.Handler{Builtin: name}, Timeout: 30 * time.Second, Concurrency: 100, Public: true}
}

// bucketKV opens the catalog's bucket with the plain jetstream API.
func bucketKV(t *testing.T, ctx context.Context, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	kv, err := js.KeyValue(ctx, catalog.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// stream returns the state and configuration of the bucket's stream.
func stream(t *testing.T, ctx context.Context, js jetstream.JetStream) *jetstream.StreamInfo {
	t.Helper()
	st, err := js.Stream(ctx, "KV_"+catalog.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func deploy(t *testing.T, ctx context.Context, c *catalog.Catalog, prune bool, fns ...manifest.Function) []catalog.Change {
	t.Helper()
	changes, err := c.Deploy(ctx, fns, prune)
	if err != nil {
		t.Fatalf("deploy: %v (changes %v)", err, changes)
	}
	return changes
}

// names returns the names of entries, in order.
func names(entries []catalog.Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.Function.Name
	}
	return out
}

func list(t *testing.T, ctx context.Context, c *catalog.Catalog) []catalog.Entry {
	t.Helper()
	entries, bad, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Errorf("malformed entries: %v", bad)
	}
	return entries
}

func TestOpenWithoutCatalog(t *testing.T) {
	_, js, ctx := start(t)
	if _, err := catalog.Open(ctx, js); !errors.Is(err, catalog.ErrNoCatalog) {
		t.Fatalf("Open = %v, want ErrNoCatalog", err)
	}
	if _, err := js.KeyValue(ctx, catalog.Bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("Open created the bucket: %v", err)
	}
}

func TestCreate(t *testing.T) {
	t.Run("replicas 0 creates a missing bucket with 1", func(t *testing.T) {
		_, js, ctx := start(t)
		c, err := catalog.Create(ctx, js, 0)
		if err != nil {
			t.Fatal(err)
		}
		info := stream(t, ctx, js)
		if info.Config.Replicas != 1 || info.Config.MaxMsgsPerSubject != 5 {
			t.Errorf("replicas %d, history %d; want 1 and 5", info.Config.Replicas, info.Config.MaxMsgsPerSubject)
		}
		if entries := list(t, ctx, c); len(entries) != 0 {
			t.Errorf("a new catalog lists %v", names(entries))
		}
		if _, err := catalog.Open(ctx, js); err != nil {
			t.Errorf("Open after Create: %v", err)
		}
	})

	t.Run("replicas 0 keeps an existing bucket as it is", func(t *testing.T) {
		_, js, ctx := start(t)
		if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: catalog.Bucket, History: 2, Description: "made by hand"}); err != nil {
			t.Fatal(err)
		}
		c, err := catalog.Create(ctx, js, 0)
		if err != nil {
			t.Fatal(err)
		}
		deploy(t, ctx, c, false, fn("ping"))
		if info := stream(t, ctx, js); info.Config.MaxMsgsPerSubject != 2 || info.Config.Description != "made by hand" {
			t.Errorf("history %d, description %q: the existing bucket was changed", info.Config.MaxMsgsPerSubject, info.Config.Description)
		}
		// With a number of replicas, the bucket is brought to the
		// catalog's settings, and keeps its entries.
		c, err = catalog.Create(ctx, js, 1)
		if err != nil {
			t.Fatal(err)
		}
		if info := stream(t, ctx, js); info.Config.MaxMsgsPerSubject != 5 || info.Config.Replicas != 1 {
			t.Errorf("after Create(1): history %d, replicas %d; want 5 and 1", info.Config.MaxMsgsPerSubject, info.Config.Replicas)
		}
		if got := names(list(t, ctx, c)); !slices.Equal(got, []string{"ping"}) {
			t.Errorf("after Create(1) the catalog lists %v, want [ping]", got)
		}
	})
}

func TestDeploy(t *testing.T) {
	_, js, ctx := start(t)
	c := create(t, ctx, js)
	a, b, d := fn("alpha"), fn("beta"), fn("delta")
	before := time.Now().Add(-time.Second)

	// Created, in the order given, with increasing revisions.
	changes := deploy(t, ctx, c, false, b, a, d)
	if len(changes) != 3 {
		t.Fatalf("changes = %v, want 3", changes)
	}
	for i, ch := range changes {
		if want := []string{"beta", "alpha", "delta"}[i]; ch.Name != want || ch.Action != catalog.Created {
			t.Errorf("change %d = %+v, want %s created", i, ch, want)
		}
		if i > 0 && ch.Revision <= changes[i-1].Revision {
			t.Errorf("revisions %d then %d: not increasing", changes[i-1].Revision, ch.Revision)
		}
	}
	rev := map[string]uint64{}
	for _, ch := range changes {
		rev[ch.Name] = ch.Revision
	}
	entries := list(t, ctx, c)
	if got := names(entries); !slices.Equal(got, []string{"alpha", "beta", "delta"}) {
		t.Fatalf("List = %v, want sorted [alpha beta delta]", got)
	}
	for _, e := range entries {
		if e.Revision != rev[e.Function.Name] {
			t.Errorf("%s: revision %d, Deploy said %d", e.Function.Name, e.Revision, rev[e.Function.Name])
		}
		if e.Deployed.Before(before) || e.Deployed.After(time.Now().Add(time.Second)) {
			t.Errorf("%s: deployed %s, want about now", e.Function.Name, e.Deployed)
		}
		if !manifest.SameDefinition(e.Function, fn(e.Function.Name)) {
			t.Errorf("%s: stored %+v", e.Function.Name, e.Function)
		}
	}

	// Unchanged: the same revisions, and nothing written. A position is
	// not part of a definition.
	seq := stream(t, ctx, js).State.LastSeq
	moved := a
	moved.Pos = manifest.Position{File: "other.yaml", Line: 42}
	moved.Permissions = []string{}
	changes = deploy(t, ctx, c, false, moved, b, d)
	for _, ch := range changes {
		if ch.Action != catalog.Unchanged || ch.Revision != rev[ch.Name] {
			t.Errorf("redeploy: %+v, want unchanged at revision %d", ch, rev[ch.Name])
		}
	}
	if got := stream(t, ctx, js).State.LastSeq; got != seq {
		t.Errorf("an unchanged deploy wrote: the bucket's last sequence moved from %d to %d", seq, got)
	}

	// One field changed: that function updated, the others unchanged.
	b2 := b
	b2.Concurrency = 5
	changes = deploy(t, ctx, c, false, a, b2, d)
	for _, ch := range changes {
		switch {
		case ch.Name == "beta" && (ch.Action != catalog.Updated || ch.Revision <= seq):
			t.Errorf("%+v, want updated at a revision after %d", ch, seq)
		case ch.Name != "beta" && (ch.Action != catalog.Unchanged || ch.Revision != rev[ch.Name]):
			t.Errorf("%+v, want unchanged at revision %d", ch, rev[ch.Name])
		}
	}
	if e, err := c.Get(ctx, "beta"); err != nil || e.Function.Concurrency != 5 || e.Revision != changes[1].Revision {
		t.Errorf("Get(beta) = %+v, %v; want concurrency 5 at revision %d", e, err, changes[1].Revision)
	}

	// Without prune, functions left out stay.
	changes = deploy(t, ctx, c, false, a)
	if len(changes) != 1 || changes[0].Action != catalog.Unchanged {
		t.Errorf("deploy of alpha alone = %v", changes)
	}
	if got := names(list(t, ctx, c)); len(got) != 3 {
		t.Errorf("without prune the catalog lists %v, want all 3", got)
	}

	// Prune removes the rest, sorted, each with the revision of its
	// removal.
	seq = stream(t, ctx, js).State.LastSeq
	changes = deploy(t, ctx, c, true, d)
	want := []catalog.Change{{Name: "delta", Action: catalog.Unchanged, Revision: rev["delta"]}, {Name: "alpha", Action: catalog.Removed}, {Name: "beta", Action: catalog.Removed}}
	if len(changes) != len(want) {
		t.Fatalf("prune: %v, want %v", changes, want)
	}
	for i, ch := range changes {
		if ch.Name != want[i].Name || ch.Action != want[i].Action {
			t.Errorf("prune change %d = %+v, want %+v", i, ch, want[i])
		}
		if ch.Action == catalog.Removed && ch.Revision <= seq {
			t.Errorf("%s removed at revision %d, want after %d", ch.Name, ch.Revision, seq)
		}
	}
	if changes[1].Revision >= changes[2].Revision {
		t.Errorf("removal revisions %d then %d: not increasing", changes[1].Revision, changes[2].Revision)
	}
	if last := stream(t, ctx, js).State.LastSeq; changes[2].Revision != last {
		t.Errorf("beta removed at revision %d, the bucket's last is %d", changes[2].Revision, last)
	}
	if got := names(list(t, ctx, c)); !slices.Equal(got, []string{"delta"}) {
		t.Errorf("after prune the catalog lists %v, want [delta]", got)
	}
	if _, err := c.Get(ctx, "alpha"); !errors.Is(err, catalog.ErrNotDeployed) {
		t.Errorf("Get(alpha) after prune: %v, want ErrNotDeployed", err)
	}

	// A removed function can be deployed again.
	changes = deploy(t, ctx, c, false, a)
	if len(changes) != 1 || changes[0].Action != catalog.Created || changes[0].Revision <= seq {
		t.Errorf("deploy after removal = %v, want alpha created", changes)
	}

	// Prune with nothing to deploy empties the catalog.
	changes = deploy(t, ctx, c, true)
	if len(changes) != 2 || changes[0].Name != "alpha" || changes[1].Name != "delta" || changes[0].Action != catalog.Removed {
		t.Errorf("prune everything = %v, want alpha and delta removed", changes)
	}
	if entries := list(t, ctx, c); len(entries) != 0 {
		t.Errorf("after pruning everything the catalog lists %v", names(entries))
	}
}

func TestDeployRefusesDuplicates(t *testing.T) {
	_, js, ctx := start(t)
	c := create(t, ctx, js)
	seq := stream(t, ctx, js).State.LastSeq
	changes, err := c.Deploy(ctx, []manifest.Function{fn("alpha"), fn("beta"), fn("alpha")}, true)
	if err == nil || !strings.Contains(err.Error(), `"alpha" is listed twice`) {
		t.Errorf("Deploy = %v, want an error naming alpha as listed twice", err)
	}
	if len(changes) != 0 {
		t.Errorf("changes = %v, want none", changes)
	}
	if got := stream(t, ctx, js).State.LastSeq; got != seq {
		t.Errorf("a refused deploy wrote: last sequence %d → %d", seq, got)
	}
}

func TestRemove(t *testing.T) {
	_, js, ctx := start(t)
	c := create(t, ctx, js)
	if _, err := c.Remove(ctx, "ghost"); !errors.Is(err, catalog.ErrNotDeployed) || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("Remove(ghost) on an empty catalog = %v, want ErrNotDeployed naming ghost", err)
	}
	changes := deploy(t, ctx, c, false, fn("ping"))
	rev, err := c.Remove(ctx, "ping")
	if err != nil {
		t.Fatal(err)
	}
	if rev <= changes[0].Revision || rev != stream(t, ctx, js).State.LastSeq {
		t.Errorf("removed at revision %d; deployed at %d, bucket's last %d", rev, changes[0].Revision, stream(t, ctx, js).State.LastSeq)
	}
	if _, err := c.Get(ctx, "ping"); !errors.Is(err, catalog.ErrNotDeployed) {
		t.Errorf("Get after Remove = %v, want ErrNotDeployed", err)
	}
	if _, err := c.Remove(ctx, "ping"); !errors.Is(err, catalog.ErrNotDeployed) {
		t.Errorf("second Remove = %v, want ErrNotDeployed", err)
	}
}

func TestMalformedEntries(t *testing.T) {
	_, js, ctx := start(t)
	c := create(t, ctx, js)
	deploy(t, ctx, c, false, fn("ping"), fn("echo"))
	// Written by something other than Deploy.
	kv := bucketKV(t, ctx, js)
	junk := map[string]string{
		"garbage": `{not json`,
		"liar":    `{"name":"ping","handler":{"builtin":"ping"},"timeout":"30s","concurrency":1,"public":true}`,
		"future":  `{"name":"future","handler":{"builtin":"ping"},"timeout":"30s","concurrency":1,"public":true,"memory":"1Gi"}`,
		"invalid": `{"name":"invalid","handler":{"builtin":"ping"},"timeout":"0s","concurrency":1,"public":true}`,
	}
	for k, v := range junk {
		if _, err := kv.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	entries, bad, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(entries); !slices.Equal(got, []string{"echo", "ping"}) {
		t.Errorf("List = %v, want the good ones [echo ping]", got)
	}
	if got := slices.Sorted(maps.Keys(bad)); !slices.Equal(got, []string{"future", "garbage", "invalid", "liar"}) {
		t.Errorf("bad = %v, want future garbage invalid liar", bad)
	}
	for name, why := range map[string]string{"garbage": "decode", "liar": `holds function "ping"`, "future": `unknown field "memory"`, "invalid": "timeout 0s out of range"} {
		if err := bad[name]; err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), why) {
			t.Errorf("bad[%s] = %v, want it to name the entry and say %q", name, err, why)
		}
	}
	if _, err := c.Get(ctx, "garbage"); err == nil || errors.Is(err, catalog.ErrNotDeployed) {
		t.Errorf("Get(garbage) = %v, want a decoding error", err)
	}

	// Deploying over a malformed entry repairs it.
	changes := deploy(t, ctx, c, false, fn("garbage"))
	if changes[0].Action != catalog.Updated {
		t.Errorf("deploy over a malformed entry = %+v, want updated", changes[0])
	}
	if e, err := c.Get(ctx, "garbage"); err != nil || e.Revision != changes[0].Revision {
		t.Errorf("Get(garbage) after the repair = %+v, %v", e, err)
	}
	// Prune removes malformed entries too.
	deploy(t, ctx, c, true, fn("ping"))
	entries, bad, err = c.List(ctx)
	if err != nil || len(bad) != 0 || !slices.Equal(names(entries), []string{"ping"}) {
		t.Errorf("after prune List = %v, %v, %v; want [ping] alone", names(entries), bad, err)
	}
}

// racingJS is a JetStream client whose catalog bucket lets a test act as
// another writer at an exact point: just before or just after the
// catalog reads a key.
type racingJS struct {
	jetstream.JetStream
	kv *racingKV
}

func (r racingJS) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := r.JetStream.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	r.kv.KeyValue = kv
	return r.kv, nil
}

type racingKV struct {
	jetstream.KeyValue
	mu sync.Mutex
	// before and after run once each, for their key.
	before, after map[string]func()
}

func (kv *racingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	kv.run(kv.before, key)
	e, err := kv.KeyValue.Get(ctx, key)
	kv.run(kv.after, key)
	return e, err
}

func (kv *racingKV) run(hooks map[string]func(), key string) {
	kv.mu.Lock()
	f := hooks[key]
	delete(hooks, key)
	kv.mu.Unlock()
	if f != nil {
		f()
	}
}

func TestDeployRacingAnotherWriter(t *testing.T) {
	var (
		pingV1 = fn("ping")
		pingV2 = fn("ping")
		theirs = fn("ping")
	)
	pingV2.Description = "ours"
	theirs.Description = "theirs"
	spec := func(f manifest.Function) []byte {
		b, err := manifest.MarshalSpec(f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name string
		// deployed before the race
		initial []manifest.Function
		deploy  []manifest.Function
		prune   bool
		// the other writer acts once, before or after the catalog reads key
		key           string
		afterRead     bool
		other         func(ctx context.Context, kv jetstream.KeyValue) error
		wantChanges   []catalog.Change // names and actions
		wantErr       string           // "" for success
		wantPingValue string           // description of ping after; "-" if absent
	}{
		{
			name:      "create races a create",
			deploy:    []manifest.Function{fn("echo"), pingV2},
			key:       "ping",
			afterRead: true,
			other: func(ctx context.Context, kv jetstream.KeyValue) error {
				_, err := kv.Create(ctx, "ping", spec(theirs))
				return err
			},
			wantChanges:   []catalog.Change{{Name: "echo", Action: catalog.Created}},
			wantErr:       `function "ping" was changed by someone else during this deploy; run it again`,
			wantPingValue: "theirs",
		},
		{
			name:      "create races a create of the same definition",
			deploy:    []manifest.Function{fn("echo"), pingV2},
			key:       "ping",
			afterRead: true,
			other: func(ctx context.Context, kv jetstream.KeyValue) error {
				_, err := kv.Create(ctx, "ping", spec(pingV2))
				return err
			},
			// Two deploys of one file: both succeed.
			wantChanges:   []catalog.Change{{Name: "echo", Action: catalog.Created}, {Name: "ping", Action: catalog.Unchanged}},
			wantPingValue: "ours",
		},
		{
			name:      "update races an update to the same definition",
			initial:   []manifest.Function{pingV1},
			deploy:    []manifest.Function{pingV2},
			key:       "ping",
			afterRead: true,
			other: func(ctx context.Context, kv jetstream.KeyValue) error {
				_, err := kv.Put(ctx, "ping", spec(pingV2))
				return err
			},
			wantChanges:   []catalog.Change{{Name: "ping", Action: catalog.Unchanged}},
			wantPingValue: "ours",
		},
		{
			name:      "update races an update",
			initial:   []manifest.Function{pingV1},
			deploy:    []manifest.Function{fn("echo"), pingV2},
			key:       "ping",
			afterRead: true,
			other: func(ctx context.Context, kv jetstream.KeyValue) error {
				_, err := kv.Put(ctx, "ping", spec(theirs))
				return err
			},
			wantChanges:   []catalog.Change{{Name: "echo", Action: catalog.Created}},
			wantErr:       `function "ping" was changed by someone else during this deploy; run it again`,
			wantPingValue: "theirs",
		},
		{
			name:      "update races a removal",
			initial:   []manifest.Function{pingV1},
			deploy:    []manifest.Function{pingV2},
			key:       "ping",
			afterRead: true,
			other:     func(ctx context.Context, kv jetstream.KeyValue) error { return kv.Delete(ctx, "ping") },
			wantErr:   `function "ping" was changed by someone else`,
			// The removal stands.
			wantPingValue: "-",
		},
		{
			name:      "prune races an update",
			initial:   []manifest.Function{pingV1, fn("echo")},
			deploy:    []manifest.Function{fn("echo")},
			prune:     true,
			key:       "ping",
			afterRead: true,
			other: func(ctx context.Context, kv jetstream.KeyValue) error {
				_, err := kv.Put(ctx, "ping", spec(theirs))
				return err
			},
			wantChanges:   []catalog.Change{{Name: "echo", Action: catalog.Unchanged}},
			wantErr:       `function "ping" was changed by someone else`,
			wantPingValue: "theirs",
		},
		{
			name:      "prune races another prune",
			initial:   []manifest.Function{pingV1, fn("echo")},
			deploy:    []manifest.Function{fn("echo")},
			prune:     true,
			key:       "ping",
			afterRead: true,
			other:     func(ctx context.Context, kv jetstream.KeyValue) error { return kv.Delete(ctx, "ping") },
			// Both removed it: no error, and no removal reported twice.
			wantChanges:   []catalog.Change{{Name: "echo", Action: catalog.Unchanged}},
			wantPingValue: "-",
		},
		{
			name:      "prune finds its stale function already removed",
			initial:   []manifest.Function{pingV1, fn("echo")},
			deploy:    []manifest.Function{fn("echo")},
			prune:     true,
			key:       "ping",
			afterRead: false,
			other:     func(ctx context.Context, kv jetstream.KeyValue) error { return kv.Delete(ctx, "ping") },
			// Nothing left to remove, and that is no error.
			wantChanges:   []catalog.Change{{Name: "echo", Action: catalog.Unchanged}},
			wantPingValue: "-",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, js, ctx := start(t)
			deploy(t, ctx, create(t, ctx, js), false, tt.initial...)
			otherKV := bucketKV(t, ctx, newJS(t, s))
			ran := false
			hook := func() {
				ran = true
				if err := tt.other(ctx, otherKV); err != nil {
					t.Errorf("the other writer: %v", err)
				}
			}
			rkv := &racingKV{before: map[string]func(){}, after: map[string]func(){}}
			if tt.afterRead {
				rkv.after[tt.key] = hook
			} else {
				rkv.before[tt.key] = hook
			}
			c, err := catalog.Open(ctx, racingJS{JetStream: js, kv: rkv})
			if err != nil {
				t.Fatal(err)
			}
			changes, err := c.Deploy(ctx, tt.deploy, tt.prune)
			if !ran {
				t.Fatalf("the catalog never read %s", tt.key)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Deploy: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Deploy = %v, want an error saying %q", err, tt.wantErr)
			}
			if len(changes) != len(tt.wantChanges) {
				t.Fatalf("changes = %v, want %v (the changes made before the failure)", changes, tt.wantChanges)
			}
			for i, ch := range changes {
				if ch.Name != tt.wantChanges[i].Name || ch.Action != tt.wantChanges[i].Action {
					t.Errorf("change %d = %+v, want %+v", i, ch, tt.wantChanges[i])
				}
			}
			// The other writer's change stands.
			e, err := c.Get(ctx, "ping")
			switch {
			case tt.wantPingValue == "-" && !errors.Is(err, catalog.ErrNotDeployed):
				t.Errorf("Get(ping) = %+v, %v; want it removed", e, err)
			case tt.wantPingValue != "-" && (err != nil || e.Function.Description != tt.wantPingValue):
				t.Errorf("Get(ping) = %+v, %v; want the description %q", e, err, tt.wantPingValue)
			}
		})
	}
}

// servingManifest declares ping and echo; a runner serves those it has.
const servingManifest = `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true}
  echo: {handler: {builtin: echo}, public: true}
`

// startRunner starts a runner of servingManifest with the named handlers.
func startRunner(t *testing.T, s *broker.Server, handlers []string, meta map[string]string) *runner.Runner {
	t.Helper()
	all := functionstest.Builtins(nil)
	builtins := map[string]http.Handler{}
	for _, h := range handlers {
		builtins[h] = all[h]
	}
	m, err := manifest.Parse("fn.yaml", []byte(servingManifest), manifest.Options{Builtins: []string{"ping", "echo"}})
	if err != nil {
		t.Fatal(err)
	}
	return runnertest.Start(t, s.ClientURL(), runner.Config{Manifest: m, Builtins: builtins, Metadata: meta})
}

func TestServing(t *testing.T) {
	serving := func(t *testing.T, s *broker.Server) map[string]int {
		t.Helper()
		got, err := catalog.Serving(context.Background(), brokertest.Connect(t, s), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Unservable) != 0 {
			t.Errorf("Unservable = %v, want none", got.Unservable)
		}
		return got.Runners
	}

	t.Run("no runner", func(t *testing.T) {
		s := brokertest.Start(t)
		began := time.Now()
		got, err := catalog.Serving(context.Background(), brokertest.Connect(t, s), 300*time.Millisecond)
		if err != nil || len(got.Runners) != 0 {
			t.Errorf("Serving = %v, %v; want nothing", got, err)
		}
		// NATS answers "no responders" at once; at worst the wait ends it.
		if d := time.Since(began); d > time.Second {
			t.Errorf("Serving with no runner returned after %s, want within its wait (300ms)", d)
		}
	})

	t.Run("counts runners per function", func(t *testing.T) {
		s := brokertest.Start(t)
		startRunner(t, s, []string{"ping"}, nil)
		startRunner(t, s, []string{"ping", "echo"}, nil)
		began := time.Now()
		got := serving(t, s)
		if want := map[string]int{"ping": 2, "echo": 1}; !maps.Equal(got, want) {
			t.Errorf("Serving = %v, want %v", got, want)
		}
		// Once the runners have answered, a quiet 100ms ends the wait.
		if d := time.Since(began); d > 2*time.Second {
			t.Errorf("Serving took %s of its 5s wait after every runner answered", d)
		}
	})

	t.Run("a runner that changed its functions counts once", func(t *testing.T) {
		s := brokertest.Start(t)
		r := startRunner(t, s, []string{"ping", "echo"}, nil)
		startRunner(t, s, []string{"ping"}, nil)
		first := r.InstanceID()
		m, err := manifest.Parse("fn.yaml", []byte("version: 1\nfunctions:\n  ping: {handler: {builtin: ping}, public: true, timeout: 5s}\n"), manifest.Options{Builtins: []string{"ping"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.SetFunctions(t.Context(), m.Functions); err != nil {
			t.Fatal(err)
		}
		if r.InstanceID() == first {
			t.Fatal("SetFunctions kept the registration: this case tests nothing")
		}
		if want, got := map[string]int{"ping": 2}, serving(t, s); !maps.Equal(got, want) {
			t.Errorf("Serving = %v, want %v", got, want)
		}
	})

	t.Run("two registrations of one runner count once", func(t *testing.T) {
		// As while SetFunctions hands over: both registrations answer.
		s := brokertest.Start(t)
		startRunner(t, s, []string{"ping", "echo"}, map[string]string{invocation.RunnerMetadata: "same"})
		startRunner(t, s, []string{"ping"}, map[string]string{invocation.RunnerMetadata: "same"})
		startRunner(t, s, []string{"ping"}, nil)
		if want, got := map[string]int{"ping": 2, "echo": 1}, serving(t, s); !maps.Equal(got, want) {
			t.Errorf("Serving = %v, want %v", got, want)
		}
	})

	t.Run("a service without runner metadata counts by instance", func(t *testing.T) {
		// A third-party runner built on micro alone; its endpoints outside
		// fn.* are not functions.
		s := brokertest.Start(t)
		startRunner(t, s, []string{"ping"}, nil)
		nc := brokertest.Connect(t, s)
		for range 2 {
			svc, err := micro.AddService(nc, micro.Config{Name: invocation.ServiceName, Version: "0.0.1", QueueGroup: invocation.QueueGroup})
			if err != nil {
				t.Fatal(err)
			}
			noop := micro.HandlerFunc(func(micro.Request) {})
			if err := svc.AddEndpoint("ping", noop, micro.WithEndpointSubject(invocation.Subject("ping"))); err != nil {
				t.Fatal(err)
			}
			if err := svc.AddEndpoint("admin", noop, micro.WithEndpointSubject("admin.reload")); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = svc.Stop() })
		}
		// The server has the services' subscriptions before Serving asks.
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if want, got := map[string]int{"ping": 3}, serving(t, s); !maps.Equal(got, want) {
			t.Errorf("Serving = %v, want %v", got, want)
		}
	})

	t.Run("a stopped runner no longer counts", func(t *testing.T) {
		s := brokertest.Start(t)
		r := startRunner(t, s, []string{"ping", "echo"}, nil)
		startRunner(t, s, []string{"ping"}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if want, got := map[string]int{"ping": 1}, serving(t, s); !maps.Equal(got, want) {
			t.Errorf("Serving = %v, want %v", got, want)
		}
	})
}

func TestDescribe(t *testing.T) {
	deployed := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	auth := fn("auth")
	auth.Public = false
	auth.Permissions = []string{"admin"}
	entries := []catalog.Entry{
		{Function: auth, Revision: 7, Deployed: deployed},
		{Function: fn("ping"), Revision: 3},
	}
	got := catalog.Describe(entries, catalog.Availability{Runners: map[string]int{"ping": 2, "other": 9}})
	if len(got) != 2 {
		t.Fatalf("Describe = %+v, want 2", got)
	}
	tests := []struct {
		got  catalog.FunctionStatus
		want catalog.FunctionStatus
	}{
		{got[0], catalog.FunctionStatus{Spec: auth.Spec(), Revision: 7, Deployed: deployed, Runners: 0}},
		{got[1], catalog.FunctionStatus{Spec: fn("ping").Spec(), Revision: 3, Runners: 2}},
	}
	for _, tt := range tests {
		g, w := tt.got, tt.want
		if g.Name != w.Name || g.Revision != w.Revision || !g.Deployed.Equal(w.Deployed) || g.Runners != w.Runners ||
			g.Timeout != w.Timeout || g.Public != w.Public || !slices.Equal(g.Permissions, w.Permissions) || g.Handler != w.Handler {
			t.Errorf("Describe: %+v, want %+v", g, w)
		}
	}
	if got := catalog.Describe(nil, catalog.Availability{}); got == nil || len(got) != 0 {
		t.Errorf("Describe(nil) = %#v, want an empty list (JSON [])", got)
	}
}
