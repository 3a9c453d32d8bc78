package catalog_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/catalog"
)

// recorder is an apply callback that records every call.
type recorder struct {
	mu    sync.Mutex
	calls []call
	// fail makes the call of that number (0 is the first) fail.
	fail map[int]bool
	// stopped is set once Stop has returned; a call after it is an error.
	stopped  atomic.Bool
	lateCall atomic.Bool
}

type call struct {
	at      time.Time
	entries []catalog.Entry
}

func (r *recorder) apply(entries []catalog.Entry) error {
	if r.stopped.Load() {
		r.lateCall.Store(true)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.calls)
	r.calls = append(r.calls, call{at: time.Now(), entries: entries})
	if r.fail[n] {
		return fmt.Errorf("apply %d fails on purpose", n)
	}
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// call returns call number i.
func (r *recorder) call(i int) call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[i]
}

// waitFor waits up to 5s for a call, numbered from from on, whose entries
// satisfy cond, and returns its number.
func (r *recorder) waitFor(t *testing.T, from int, what string, cond func([]catalog.Entry) bool) int {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		for i := from; i < len(r.calls); i++ {
			if cond(r.calls[i].entries) {
				r.mu.Unlock()
				return i
			}
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no apply with %s within 5s; calls: %s", what, r)
		}
	}
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for i, c := range r.calls {
		fmt.Fprintf(&b, "\n  %d: %v", i, describe(c.entries))
	}
	return b.String()
}

// describe gives entries as name@revision.
func describe(entries []catalog.Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = fmt.Sprintf("%s@%d", e.Function.Name, e.Revision)
	}
	return out
}

// hasNames returns a condition: the entries have exactly these names.
func hasNames(want ...string) func([]catalog.Entry) bool {
	return func(entries []catalog.Entry) bool { return slices.Equal(names(entries), want) }
}

// logBuffer collects a logger's output; safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// watch starts a watcher on a connection of its own; it stops with the
// test.
func watch(t *testing.T, ctx context.Context, js jetstream.JetStream, log *slog.Logger, r *recorder) *catalog.Watcher {
	t.Helper()
	w, err := catalog.Watch(ctx, js, log, r.apply)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	return w
}

func TestWatchWithoutCatalog(t *testing.T) {
	_, js, ctx := start(t)
	r := &recorder{}
	if _, err := catalog.Watch(ctx, js, nil, r.apply); !errors.Is(err, catalog.ErrNoCatalog) {
		t.Errorf("Watch = %v, want ErrNoCatalog", err)
	}
	if r.count() != 0 {
		t.Errorf("apply called %d times", r.count())
	}
}

func TestWatchAppliesBeforeReturning(t *testing.T) {
	t.Run("empty catalog", func(t *testing.T) {
		_, js, ctx := start(t)
		create(t, ctx, js)
		r := &recorder{}
		w := watch(t, ctx, js, nil, r)
		if r.count() != 1 || len(r.call(0).entries) != 0 {
			t.Fatalf("applies when Watch returned: %s; want one, with no entries", r)
		}
		if got := w.Entries(); len(got) != 0 {
			t.Errorf("Entries = %v", describe(got))
		}
	})

	t.Run("deployed functions, sorted, without the malformed", func(t *testing.T) {
		_, js, ctx := start(t)
		c := create(t, ctx, js)
		changes := deploy(t, ctx, c, false, fn("ping"), fn("echo"), fn("auth"))
		if _, err := bucketKV(t, ctx, js).Put(ctx, "broken", []byte("{")); err != nil {
			t.Fatal(err)
		}
		var logs logBuffer
		r := &recorder{}
		w := watch(t, ctx, js, logs.logger(), r)
		if r.count() != 1 {
			t.Fatalf("applies when Watch returned: %s; want one", r)
		}
		got := r.call(0).entries
		if !hasNames("auth", "echo", "ping")(got) {
			t.Errorf("first apply: %v, want auth echo ping", describe(got))
		}
		for _, e := range got {
			for _, ch := range changes {
				if ch.Name == e.Function.Name && ch.Revision != e.Revision {
					t.Errorf("%s at revision %d, deployed at %d", ch.Name, e.Revision, ch.Revision)
				}
			}
		}
		if !hasNames("auth", "echo", "ping")(w.Entries()) {
			t.Errorf("Entries = %v", describe(w.Entries()))
		}
		if l := logs.String(); !strings.Contains(l, "malformed catalog entry") || !strings.Contains(l, "function=broken") {
			t.Errorf("the malformed entry was not logged; log:\n%s", l)
		}
	})

	t.Run("the first apply's error is returned", func(t *testing.T) {
		_, js, ctx := start(t)
		c := create(t, ctx, js)
		r := &recorder{fail: map[int]bool{0: true}}
		w, err := catalog.Watch(ctx, js, nil, r.apply)
		if err == nil || !strings.Contains(err.Error(), "apply 0 fails on purpose") || w != nil {
			t.Fatalf("Watch = %v, %v; want apply's error", w, err)
		}
		// Nothing follows: the watch is stopped.
		deploy(t, ctx, c, false, fn("ping"))
		time.Sleep(300 * time.Millisecond)
		if r.count() != 1 {
			t.Errorf("apply called again after Watch failed: %s", r)
		}
	})
}

func TestWatchFollowsChanges(t *testing.T) {
	s, js, ctx := start(t)
	create(t, ctx, js)
	// The deployer is another process.
	c := create(t, ctx, newJS(t, s))
	var logs logBuffer
	r := &recorder{}
	// ctx bounds only the start: the watch outlives it.
	wctx, cancel := context.WithCancel(ctx)
	w := watch(t, wctx, js, logs.logger(), r)
	cancel()

	// Three writes back to back are applied together (the 50ms settle):
	// fewer applies than writes.
	changes := deploy(t, ctx, c, false, fn("ping"), fn("echo"), fn("auth"))
	i := r.waitFor(t, 1, "the 3 deployed", hasNames("auth", "echo", "ping"))
	time.Sleep(200 * time.Millisecond) // for any late apply
	if n := r.count() - 1; n > 2 {
		t.Errorf("%d applies for 3 writes back to back, want at most 2: %s", n, r)
	}
	for _, e := range r.call(i).entries {
		for _, ch := range changes {
			if ch.Name == e.Function.Name && ch.Revision != e.Revision {
				t.Errorf("%s applied at revision %d, deployed at %d", ch.Name, e.Revision, ch.Revision)
			}
		}
	}
	if !hasNames("auth", "echo", "ping")(w.Entries()) {
		t.Errorf("Entries = %v", describe(w.Entries()))
	}

	// An unchanged deploy writes nothing, so nothing is applied.
	n := r.count()
	deploy(t, ctx, c, false, fn("ping"), fn("echo"), fn("auth"))
	time.Sleep(200 * time.Millisecond)
	if r.count() != n {
		t.Errorf("an unchanged deploy was applied: %s", r)
	}

	// An update shows its new revision and definition.
	ping := fn("ping")
	ping.Timeout = 5 * time.Second
	changes = deploy(t, ctx, c, false, ping)
	r.waitFor(t, n, "ping's update", func(entries []catalog.Entry) bool {
		for _, e := range entries {
			if e.Function.Name == "ping" {
				return e.Revision == changes[0].Revision && e.Function.Timeout == 5*time.Second
			}
		}
		return false
	})

	// A removal shows up.
	n = r.count()
	if _, err := c.Remove(ctx, "echo"); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, n, "echo removed", hasNames("auth", "ping"))

	// A malformed entry is left out and logged; one that replaces a good
	// definition withdraws it.
	n = r.count()
	kv := bucketKV(t, ctx, js)
	if _, err := kv.Put(ctx, "junk", []byte(`{"name":"junk"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "auth", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, n, "auth withdrawn and junk left out", hasNames("ping"))
	for _, want := range []string{"function=junk", "function=auth"} {
		if l := logs.String(); !strings.Contains(l, want) || !strings.Contains(l, "malformed catalog entry") {
			t.Errorf("log does not report the malformed entry %s:\n%s", want, l)
		}
	}
	// Repaired, it is back.
	n = r.count()
	deploy(t, ctx, c, false, fn("auth"))
	r.waitFor(t, n, "auth repaired", hasNames("auth", "ping"))
}

func TestWatchRetriesFailedApply(t *testing.T) {
	s, js, ctx := start(t)
	c := create(t, ctx, newJS(t, s))
	var logs logBuffer
	r := &recorder{fail: map[int]bool{1: true}}
	watch(t, ctx, js, logs.logger(), r)

	deploy(t, ctx, c, false, fn("ping"))
	r.waitFor(t, 1, "ping", hasNames("ping"))
	i := r.waitFor(t, 2, "ping again", hasNames("ping"))
	failed, retried := r.call(1), r.call(i)
	if slices.Compare(describe(failed.entries), describe(retried.entries)) != 0 {
		t.Errorf("retried with %v, the failed apply had %v", describe(retried.entries), describe(failed.entries))
	}
	// retryApply is 1s.
	if d := retried.at.Sub(failed.at); d < 900*time.Millisecond || d > 2500*time.Millisecond {
		t.Errorf("retried %s after the failure, want about 1s", d)
	}
	if l := logs.String(); !strings.Contains(l, "cannot apply the catalog; retrying") || !strings.Contains(l, "apply 1 fails on purpose") {
		t.Errorf("the failure was not logged:\n%s", l)
	}
	// Once it succeeded, nothing more.
	n := r.count()
	time.Sleep(1200 * time.Millisecond)
	if r.count() != n {
		t.Errorf("applied again after a success with no change: %s", r)
	}
}

func TestWatchStop(t *testing.T) {
	t.Run("no apply after Stop returns", func(t *testing.T) {
		s, js, ctx := start(t)
		c := create(t, ctx, newJS(t, s))
		r := &recorder{}
		w := watch(t, ctx, js, nil, r)
		// Stop while changes are gathered: Stop waits for their apply, if
		// there is one, to return.
		deploy(t, ctx, c, false, fn("ping"), fn("echo"))
		if err := w.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if err := w.Err(); err != nil {
			t.Errorf("Err after Stop: %v; a stopped watch did not fail", err)
		}
		r.stopped.Store(true)
		deploy(t, ctx, c, false, fn("auth"))
		if _, err := c.Remove(ctx, "ping"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1200 * time.Millisecond) // past settle and retryApply
		if r.lateCall.Load() {
			t.Errorf("apply called after Stop returned: %s", r)
		}
		if err := w.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
	})

	t.Run("changes seen are applied before Stop returns", func(t *testing.T) {
		s, js, ctx := start(t)
		c := create(t, ctx, newJS(t, s))
		r := &recorder{}
		w := watch(t, ctx, js, nil, r)
		deploy(t, ctx, c, false, fn("ping"))
		// Entries shows a change as soon as it is seen; stopping then,
		// within the 50ms settle, leaves the change gathered but not
		// applied, and Stop applies it. (Later, it was applied anyway.)
		for deadline := time.Now().Add(5 * time.Second); !hasNames("ping")(w.Entries()); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("ping not seen within 5s")
			}
		}
		if err := w.Stop(); err != nil {
			t.Fatal(err)
		}
		if n := r.count(); n < 2 || !hasNames("ping")(r.call(n-1).entries) {
			t.Errorf("applies when Stop returned: %s; want the last with ping", r)
		}
	})

	t.Run("the connection closes", func(t *testing.T) {
		s, js, ctx := start(t)
		create(t, ctx, js)
		nc := brokertest.Connect(t, s)
		wjs, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		r := &recorder{}
		w, err := catalog.Watch(ctx, wjs, nil, r.apply)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Err(); err != nil {
			t.Fatalf("Err while following: %v", err)
		}
		nc.Close()
		// The watch ended without Stop: Err says so (a readiness check).
		for deadline := time.Now().Add(5 * time.Second); w.Err() == nil; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("Err still nil 5s after the connection closed")
			}
		}
		done := make(chan error)
		go func() { done <- w.Stop() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Stop after the connection closed: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Stop hangs after the connection closed")
		}
	})
}

// A change that comes while a failed apply waits for its retry ends the
// wait: it is applied after the usual settle time, not with the retry a
// second later.
func TestWatchChangeDuringRetry(t *testing.T) {
	s, js, ctx := start(t)
	c := create(t, ctx, newJS(t, s))
	r := &recorder{fail: map[int]bool{1: true}}
	watch(t, ctx, js, nil, r)
	deploy(t, ctx, c, false, fn("ping"))
	r.waitFor(t, 1, "ping", hasNames("ping"))
	start := time.Now()
	deploy(t, ctx, c, false, fn("echo"))
	i := r.waitFor(t, 2, "echo and ping", hasNames("echo", "ping"))
	if i != 2 {
		t.Errorf("apply %d has both, want the one after the failure: %s", i, r)
	}
	if took := time.Since(start); took > 700*time.Millisecond {
		t.Errorf("the change was applied %s after it was made; want the settle time (50ms), not the retry's 1s", took)
	}
}

// TestWatchSurvivesLosingItsServer: on a three-node cluster, the server
// that hosts the watch's consumer stops (the watcher's own connection is
// to another); a change made afterwards still reaches the watcher within
// seconds. nats.go alone notices the lost consumer only after two missed
// heartbeats (10 s or more); the watcher's own check restarts the watch
// sooner.
func TestWatchSurvivesLosingItsServer(t *testing.T) {
	nodes := brokertest.StartCluster(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := newJS(t, nodes[0])
	// A cluster just formed may still move its meta leader, and a request
	// sent meanwhile goes unanswered: short attempts, retried.
	var c *catalog.Catalog
	err := broker.Retry(ctx, 5*time.Second, func(ctx context.Context) error {
		var err error
		c, err = catalog.Create(ctx, js, 3)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Create returns once the new R3 bucket answers reads.
	deploy(t, ctx, c, false, fn("ping"))

	// Watch from one node until the watch's consumer lands on another.
	var (
		w          *catalog.Watcher
		r          *recorder
		host       string
		watchNode  int
		hostedNode = -1
	)
	for attempt := 0; hostedNode < 0; attempt++ {
		if attempt == 10 {
			t.Skip("the watch's consumer landed on the watcher's own node 10 times in a row")
		}
		watchNode = attempt % 3
		r = &recorder{}
		w, err = catalog.Watch(ctx, newJS(t, nodes[watchNode]), nil, r.apply)
		if err != nil {
			t.Fatal(err)
		}
		stream, err := js.Stream(ctx, "KV_"+catalog.Bucket)
		if err != nil {
			t.Fatal(err)
		}
		lister := stream.ListConsumers(ctx)
		for ci := range lister.Info() {
			if ci.Cluster != nil {
				host = ci.Cluster.Leader
			}
		}
		if lister.Err() != nil {
			t.Fatal(lister.Err())
		}
		for i, n := range nodes {
			if n.Name() == host && i != watchNode {
				hostedNode = i
			}
		}
		if hostedNode < 0 {
			if err := w.Stop(); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() { _ = w.Stop() })
	writeNode := 3 - watchNode - hostedNode

	nodes[hostedNode].Shutdown()
	// The two remaining nodes may elect new leaders; until then a
	// JetStream request may go unanswered, so each try is short.
	wjs := newJS(t, nodes[writeNode])
	start := time.Now()
	for {
		err := func() error {
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			cw, err := catalog.Open(ctx, wjs)
			if err != nil {
				return err
			}
			_, err = cw.Deploy(ctx, []manifest.Function{fn("ping"), fn("echo")}, false)
			return err
		}()
		if err == nil {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("no write accepted within 20s of losing a node: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	written := time.Now()
	r.waitFor(t, 1, "echo after the node loss", hasNames("echo", "ping"))
	t.Logf("the watch's consumer was on %s, which stopped; a change written %s later reached the watcher after %s",
		host, written.Sub(start).Round(time.Millisecond), time.Since(written).Round(time.Millisecond))
}

// TestWatchAfterCompaction: when the bucket's newest message is gone (a
// delete marker compacted away), the watch is not behind: it is not
// restarted and applies nothing more.
func TestWatchAfterCompaction(t *testing.T) {
	s, js, ctx := start(t)
	c := create(t, ctx, newJS(t, s))
	deploy(t, ctx, c, false, fn("ping"), fn("echo"))
	if _, err := c.Remove(ctx, "echo"); err != nil {
		t.Fatal(err)
	}
	kv := bucketKV(t, ctx, js)
	if err := kv.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(-1)); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	r := &recorder{}
	w, err := catalog.Watch(ctx, js, logs.logger(), r.apply)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	time.Sleep(3 * time.Second) // three stall checks
	if n := r.count(); n != 1 || strings.Contains(logs.String(), "restarting") {
		t.Errorf("%d applies after the start (want 1), log: %s", n, logs.String())
	}
}
