package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// settle is how long a watcher waits after a change for more before it
// applies them: a deploy of many functions writes one entry each, and
// applying them together spares runners one re-registration per entry.
const settle = 50 * time.Millisecond

// retryApply is how long a watcher waits to apply a state again after
// apply failed (e.g. NATS was briefly away), unless a change comes first.
const retryApply = time.Second

// stallCheck is how often a watcher compares the bucket's last revision
// with the last one it was delivered. The KV watch is an ordered consumer
// on one server of a cluster; when that server goes away, nats.go notices
// only after two missed idle heartbeats (10 s and more) and the watch
// delivers nothing meanwhile. Two checks in a row that find the watch
// behind restart it, which bounds the delay to about 2 × stallCheck.
var stallCheck = time.Second

// Watcher follows the catalog and hands every new state of it to a
// callback.
type Watcher struct {
	kv    jetstream.KeyValue
	log   *slog.Logger
	apply func([]Entry) error
	done  chan struct{}
	// stopping is set by Stop; ended, when the watch ended without it.
	stopping atomic.Bool
	ended    atomic.Bool
	// seen is the highest revision the watch has delivered.
	seen atomic.Uint64

	// wmu guards watcher, the KV watch now followed, which a restart
	// replaces.
	wmu     sync.Mutex
	watcher jetstream.KeyWatcher
	// ctx ends when Stop is called, cutting a restart short.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	entries map[string]Entry
}

// Watch reads the catalog, calls apply with every deployed function
// (sorted by name) before it returns, then follows changes and calls apply
// again with the whole new state after each change, from one goroutine,
// until Stop is called or the connection closes. When apply fails, the
// error is logged and the state applied again a second later, or sooner
// when a change comes first. Entries that cannot be decoded are logged and
// left out: no gateway or runner serves them. A watch that falls behind
// the bucket (its server left the cluster) is restarted within about two
// seconds. ctx bounds only the initial read; an error of the first apply
// is returned. ErrNoCatalog if nothing was ever deployed.
func Watch(ctx context.Context, js jetstream.JetStream, log *slog.Logger, apply func([]Entry) error) (*Watcher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := Open(ctx, js)
	if err != nil {
		return nil, err
	}
	w := &Watcher{kv: c.kv, log: log, apply: apply, done: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	kw, entries, err := w.load(ctx)
	if err != nil {
		w.cancel()
		return nil, err
	}
	w.watcher, w.entries = kw, entries
	if err := apply(w.Entries()); err != nil {
		_ = kw.Stop()
		w.cancel()
		return nil, err
	}
	go w.follow()
	return w, nil
}

// load starts a KV watch and reads the current entries it delivers first,
// up to its nil marker, within ctx.
func (w *Watcher) load(ctx context.Context) (jetstream.KeyWatcher, map[string]Entry, error) {
	// Revisions up to the bucket's last one when the watch starts count
	// as seen, delivered or not: a removed message (a compacted delete
	// marker) is never delivered, and must not make the watch look behind.
	last, err := w.lastRevision(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("catalog: read bucket %s: %w", Bucket, err)
	}
	// The watch's own context must outlive the start-up.
	kw, err := w.kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("catalog: watch bucket %s: %w", Bucket, err)
	}
	entries := map[string]Entry{}
	for {
		select {
		case e, ok := <-kw.Updates():
			if !ok {
				return nil, nil, errors.New("catalog: the watch ended before the catalog was read")
			}
			if e == nil {
				if last > w.seen.Load() {
					w.seen.Store(last)
				}
				return kw, entries, nil
			}
			w.record(entries, e, true)
		case <-ctx.Done():
			_ = kw.Stop()
			return nil, nil, fmt.Errorf("catalog: read: %w", ctx.Err())
		}
	}
}

// follow applies updates until the watch stops.
func (w *Watcher) follow() {
	defer close(w.done)
	w.wmu.Lock()
	updates := w.watcher.Updates()
	w.wmu.Unlock()
	check := time.NewTicker(stallCheck)
	defer check.Stop()
	// behind counts the checks in a row that found the watch behind with
	// nothing delivered since the first of them (seenThen).
	behind, seenThen := 0, uint64(0)
	// timer fires when gathered changes are due (settle) or a failed
	// apply is due again (retryApply, while retrying); nil when nothing
	// is due.
	var timer <-chan time.Time
	retrying := false
	for {
		select {
		case e, ok := <-updates:
			if !ok {
				if timer != nil {
					w.applyNow() // the last state seen
				}
				if !w.stopping.Load() {
					w.ended.Store(true)
					w.log.Error("the catalog watch ended: changes are no longer applied (is the NATS connection closed?)")
				}
				return
			}
			if e == nil {
				continue
			}
			w.mu.Lock()
			w.record(w.entries, e, false)
			w.mu.Unlock()
			if timer == nil || retrying {
				// Gather what follows closely, then apply once; a
				// change ends a retry's wait.
				timer, retrying = time.After(settle), false
			}
		case <-timer:
			timer = nil
			if !w.applyNow() {
				timer, retrying = time.After(retryApply), true
			}
		case <-check.C:
			if !w.lagging() {
				behind = 0
				continue
			}
			if seen := w.seen.Load(); behind == 0 || seen != seenThen {
				// Behind, but maybe only by a change in transit.
				behind, seenThen = 1, seen
				continue
			}
			behind = 0
			next, ok := w.restart()
			if !ok {
				continue
			}
			updates = next
			if !w.applyNow() {
				timer, retrying = time.After(retryApply), true
			}
		}
	}
}

// lastRevision returns the bucket's last revision (its stream's last
// sequence).
func (w *Watcher) lastRevision(ctx context.Context) (uint64, error) {
	st, err := w.kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	s, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, fmt.Errorf("unexpected bucket status %T", st)
	}
	return s.StreamInfo().State.LastSeq, nil
}

// lagging reports whether the bucket holds a revision the watch has not
// delivered.
func (w *Watcher) lagging() bool {
	if w.stopping.Load() {
		return false
	}
	ctx, cancel := context.WithTimeout(w.ctx, stallCheck)
	defer cancel()
	last, err := w.lastRevision(ctx)
	if err != nil {
		return false // NATS is away: the watch is not to blame
	}
	return last > w.seen.Load()
}

// restart replaces a watch that fell behind with a new one, reading the
// catalog afresh; it returns the new watch's updates, and false when the
// watcher is stopping or the new watch could not start (the next checks
// try again).
func (w *Watcher) restart() (<-chan jetstream.KeyValueEntry, bool) {
	w.log.Warn("the catalog watch fell behind the bucket (its server may have left the cluster); restarting it",
		"seen_revision", w.seen.Load())
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	kw, entries, err := w.load(ctx)
	if err != nil {
		w.log.Error("cannot restart the catalog watch", "error", err)
		return nil, false
	}
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.stopping.Load() {
		_ = kw.Stop()
		return nil, false
	}
	old := w.watcher
	w.watcher = kw
	_ = old.Stop() // it delivers nothing more either way
	// Read what the old watch may still hand over until it closes, so
	// that nats.go's delivery goroutine is never left blocked on it.
	go func(ch <-chan jetstream.KeyValueEntry) {
		for range ch {
		}
	}(old.Updates())
	w.mu.Lock()
	w.logChanges(w.entries, entries)
	w.entries = entries
	w.mu.Unlock()
	return kw.Updates(), true
}

// logChanges logs how a re-read catalog differs from the last state.
func (w *Watcher) logChanges(before, after map[string]Entry) {
	for name, e := range after {
		if b, ok := before[name]; !ok || b.Revision != e.Revision {
			w.log.Debug("function deployed", "function", name, "revision", e.Revision)
		}
	}
	for name := range before {
		if _, ok := after[name]; !ok {
			w.log.Info("function removed", "function", name)
		}
	}
}

// applyNow applies the current state and reports whether it succeeded.
func (w *Watcher) applyNow() bool {
	if err := w.apply(w.Entries()); err != nil {
		w.log.Error("cannot apply the catalog; retrying", "error", err, "retry_in", retryApply)
		return false
	}
	return true
}

// record applies one KV entry to entries; initial entries are those of a
// first read, whose removal markers are old news. The caller holds w.mu
// when entries is the watcher's own.
func (w *Watcher) record(entries map[string]Entry, e jetstream.KeyValueEntry, initial bool) {
	if rev := e.Revision(); rev > w.seen.Load() {
		w.seen.Store(rev) // only the follow goroutine (or Watch, before it) writes
	}
	name := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		delete(entries, name)
		if !initial {
			w.log.Info("function removed", "function", name, "revision", e.Revision())
		}
		return
	}
	entry, err := decode(e)
	if err != nil {
		delete(entries, name)
		w.log.Error("a malformed catalog entry: function not served", "function", name, "revision", e.Revision(), "error", err)
		return
	}
	if old, ok := entries[name]; ok && old.Revision == entry.Revision {
		return
	}
	entries[name] = entry
	if !initial {
		w.log.Debug("function deployed", "function", name, "revision", entry.Revision)
	}
}

// Entries returns the functions the watcher knows of, sorted by name.
func (w *Watcher) Entries() []Entry {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Entry, 0, len(w.entries))
	for _, name := range slices.Sorted(maps.Keys(w.entries)) {
		out = append(out, w.entries[name])
	}
	return out
}

// Err is nil while the watch follows the catalog, and an error once it
// ended without Stop (its connection closed): a readiness check.
func (w *Watcher) Err() error {
	if w.ended.Load() {
		return errors.New("the function catalog watch ended")
	}
	return nil
}

// Stop ends the watch and waits for the last apply to return.
func (w *Watcher) Stop() error {
	w.stopping.Store(true)
	w.cancel()
	w.wmu.Lock()
	err := w.watcher.Stop()
	w.wmu.Unlock()
	<-w.done
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("catalog: stop watch: %w", err)
	}
	return nil
}
