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

// Watcher follows the catalog and hands every new state of it to a
// callback.
type Watcher struct {
	watcher jetstream.KeyWatcher
	log     *slog.Logger
	apply   func([]Entry) error
	done    chan struct{}
	// stopping is set by Stop; ended, when the watch ended without it.
	stopping atomic.Bool
	ended    atomic.Bool

	mu      sync.Mutex
	entries map[string]Entry
}

// retryApply is how long a watcher waits to apply a state again after
// apply failed (e.g. NATS was briefly away), unless a change comes first.
const retryApply = time.Second

// Watch reads the catalog, calls apply with every deployed function
// (sorted by name) before it returns, then follows changes and calls apply
// again with the whole new state after each change, from one goroutine,
// until Stop is called or the connection closes. When apply fails, the
// error is logged and the state applied again a second later, or sooner
// when a change comes first. Entries
// that cannot be decoded are logged and left out: no gateway or runner
// serves them. ctx bounds only the initial read; an error of the first
// apply is returned. ErrNoCatalog if nothing was ever deployed.
func Watch(ctx context.Context, js jetstream.JetStream, log *slog.Logger, apply func([]Entry) error) (*Watcher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := Open(ctx, js)
	if err != nil {
		return nil, err
	}
	// The watch's own context must outlive the start-up.
	kw, err := c.kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("catalog: watch bucket %s: %w", Bucket, err)
	}
	w := &Watcher{watcher: kw, log: log, apply: apply, done: make(chan struct{}), entries: map[string]Entry{}}
	// The watcher first delivers every current entry, then a nil marker.
	for loaded := false; !loaded; {
		select {
		case e, ok := <-kw.Updates():
			if !ok {
				return nil, errors.New("catalog: the watch ended before the catalog was read")
			}
			if e == nil {
				loaded = true
				break
			}
			w.record(e, true)
		case <-ctx.Done():
			_ = kw.Stop()
			return nil, fmt.Errorf("catalog: read: %w", ctx.Err())
		}
	}
	if err := apply(w.Entries()); err != nil {
		_ = kw.Stop()
		return nil, err
	}
	go w.follow()
	return w, nil
}

// follow applies updates until the watch stops.
func (w *Watcher) follow() {
	defer close(w.done)
	updates := w.watcher.Updates()
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
			if e != nil {
				w.record(e, false)
			}
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

// record applies one KV entry to the watcher's state; initial entries are
// those of the first read, whose removal markers are old news.
func (w *Watcher) record(e jetstream.KeyValueEntry, initial bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	name := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		delete(w.entries, name)
		if !initial {
			w.log.Info("function removed", "function", name, "revision", e.Revision())
		}
		return
	}
	entry, err := decode(e)
	if err != nil {
		delete(w.entries, name)
		w.log.Error("a malformed catalog entry: function not served", "function", name, "revision", e.Revision(), "error", err)
		return
	}
	if old, ok := w.entries[name]; ok && old.Revision == entry.Revision {
		return
	}
	w.entries[name] = entry
	w.log.Debug("function deployed", "function", name, "revision", entry.Revision)
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
	err := w.watcher.Stop()
	<-w.done
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("catalog: stop watch: %w", err)
	}
	return nil
}
