package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/manifest"
)

// ProcessStarter starts the handlers of functions that run as processes
// (http and exec handlers in fn.yaml): it fetches the function's code,
// resolves its secrets and starts what runs it. Start returns once the
// function can take invocations, or an error saying why this runner
// cannot serve it (its runtime is missing here, its code cannot be
// fetched, it did not become ready in time); ctx bounds the start.
type ProcessStarter interface {
	Start(ctx context.Context, fn manifest.Function) (ProcessHandler, error)
}

// ProcessHandler serves one function's invocations with its processes.
// Close stops them, killing what is left when ctx ends.
type ProcessHandler interface {
	http.Handler
	Close(ctx context.Context) error
}

// retireTimeout bounds the close of a process handler that a new
// definition replaced or that was removed, once its last invocation
// ended.
const retireTimeout = 30 * time.Second

// retryUnservable is how often a runner tries again to start functions
// whose processes could not be started.
const retryUnservable = 30 * time.Second

// acquire counts an invocation that runs d's handler; a built-in's, never
// retired, is not counted (no shared counter on its hot path).
func (d *definition) acquire() {
	if d.process != nil {
		d.users.Add(1)
	}
}

// release ends what acquire began; the last invocation of a retired
// definition lets its processes be closed.
func (d *definition) release() {
	if d.process == nil {
		return
	}
	if d.users.Add(-1) == 0 && d.retired.Load() {
		d.idleOnce.Do(func() { close(d.idle) })
	}
}

// users and the rest of a definition's life as a process handler.
type lifecycle struct {
	// process is the handler's Close side; nil for a built-in.
	process  ProcessHandler
	users    atomic.Int64
	retired  atomic.Bool
	idle     chan struct{}
	idleOnce sync.Once
}

// retire closes d's processes once no invocation runs them any more, on
// a goroutine the runner's Stop waits for. Invocations admitted before a
// new definition replaced d run to their end on d.
func (r *Runner) retire(d *definition) {
	if d.process == nil || d.retired.Swap(true) {
		return
	}
	if d.users.Load() == 0 {
		d.idleOnce.Do(func() { close(d.idle) })
	}
	r.retiring.Go(func() {
		// Invocations end by their timeout; those of a stopping runner
		// are cut short by its cancel.
		select {
		case <-d.idle:
		case <-time.After(d.fn.Timeout + time.Second):
			r.log.Warn("closing a replaced function's processes while invocations still run on them", "function", d.fn.Name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), retireTimeout)
		defer cancel()
		if err := d.process.Close(ctx); err != nil {
			r.log.Warn("cannot close a function's processes", "function", d.fn.Name, "error", err)
		}
	})
}

// pendingStart is a function's processes being started in the
// background, for one definition.
type pendingStart struct {
	fn manifest.Function
	// cancel ends the start, when its function is removed or replaced.
	cancel context.CancelFunc
	// Set when the start has ended, under the runner's mu.
	done    bool
	handler ProcessHandler
	err     error
	// why is the failure reported while the function is unservable: this
	// start's, once applied, or the previous attempt's while this one
	// runs; applied tells a failure was applied (listed as unservable).
	why     string
	applied bool
	// retryAt is when a failed start is tried again without a change of
	// the catalog.
	retryAt time.Time
}

// startProcesses takes the results of the background starts of the
// functions of fns that run as processes and are not served already with
// the same definition, and begins those not begun. It never waits: a
// start that ends wakes the retry loop, which applies the functions
// again. A failed start is tried again at the next change of the
// functions (retry, from SetFunctions) or once its retryAt has passed;
// meanwhile, and while it is tried again, the function is listed as
// unservable with the last failure. It returns the handlers that started
// by name, why the others cannot be served, and the names still
// starting. It runs with r.mu held.
func (r *Runner) startProcesses(fns []manifest.Function, retry bool) (started map[string]ProcessHandler, failed map[string]string, starting map[string]bool) {
	started, failed, starting = map[string]ProcessHandler{}, map[string]string{}, map[string]bool{}
	if r.processes == nil {
		return started, failed, starting
	}
	eps := *r.eps.Load()
	wanted := map[string]bool{}
	now := time.Now()
	for _, fn := range fns {
		if !fn.Handler.RunsProcess() || (!fn.Public && r.verifier == nil) {
			continue
		}
		if ep, ok := eps[fn.Name]; ok && manifest.SameDefinition(ep.def.Load().fn, fn) {
			continue
		}
		wanted[fn.Name] = true
		p := r.starts[fn.Name]
		if p != nil && !manifest.SameDefinition(p.fn, fn) {
			// Started for a definition replaced since: cut short, and
			// what it started, if anything, is closed unused.
			p.cancel()
			delete(r.starts, fn.Name)
			p = nil
		}
		switch {
		case p == nil:
			r.begin(fn, "")
			starting[fn.Name] = true
		case !p.done && p.why != "":
			failed[fn.Name] = p.why // tried again; unservable until it starts
		case !p.done:
			starting[fn.Name] = true
		case p.err == nil:
			delete(r.starts, fn.Name)
			started[fn.Name] = p.handler
		case p.applied && (retry || !now.Before(p.retryAt)):
			r.begin(fn, p.why)
			failed[fn.Name] = p.why
		default:
			if !p.applied {
				p.applied, p.retryAt = true, now.Add(retryUnservable)
				p.why = startSummary(p.err)
				if ep, ok := eps[fn.Name]; ok && keepsServing(ep.def.Load(), fn) {
					p.why = fmt.Sprintf("its new version (code %s) does not start, the previous one serves on: %s", fn.Process.Code.Digest, p.why)
				}
			}
			failed[fn.Name] = p.why
		}
	}
	// Starts for functions no longer wanted end, unused.
	for name, p := range r.starts {
		if !wanted[name] {
			p.cancel()
			delete(r.starts, name)
		}
	}
	return started, failed, starting
}

// begin starts fn's processes on a goroutine the runner's Stop waits for;
// why is the failure of the attempt before, if any. It runs with r.mu
// held.
func (r *Runner) begin(fn manifest.Function, why string) {
	ctx, cancel := context.WithTimeout(r.ctx, manifest.MaxStartTimeout)
	p := &pendingStart{fn: fn, cancel: cancel, why: why}
	r.starts[fn.Name] = p
	r.loops.Go(func() {
		defer cancel()
		t := time.Now()
		h, err := r.processes.Start(ctx, fn)
		switch {
		case err == nil:
			r.log.Info("function's processes started", "function", fn.Name, "handler", fn.Handler.String(),
				"code", fn.Process.Code.Digest, "took", time.Since(t).Round(time.Millisecond))
		case ctx.Err() == nil:
			// In full here, with the end of the process's stderr; the
			// service metadata, which NATS clients read, gets the summary.
			r.log.Warn("function's processes did not start", "function", fn.Name, "handler", fn.Handler.String(),
				"code", fn.Process.Code.Digest, "error", err)
		}
		r.mu.Lock()
		p.done, p.handler, p.err, p.applied = true, h, err, false
		current := r.starts[fn.Name] == p && !r.stopped
		r.mu.Unlock()
		if !current {
			if h != nil {
				r.closeUnused(map[string]ProcessHandler{fn.Name: h}, nil)
			}
			return
		}
		r.wake()
	})
}

// startSummary is why a start failed, without what the function's
// process wrote (its stderr could hold anything, secrets included): the
// error's Summary when it has one (process.StartError).
func startSummary(err error) string {
	var s interface{ Summary() string }
	if errors.As(err, &s) {
		return s.Summary()
	}
	return err.Error()
}

// wake asks the retry loop to apply the functions again (a start ended).
func (r *Runner) wake() {
	select {
	case r.reapply <- struct{}{}:
	default:
	}
}

// WaitStarts waits until no function's processes are being started: every
// start begun has ended and its result has been applied (the function
// served, or listed as unservable). SetFunctions returns without waiting
// for starts; tests and tools that need the new version serving use this.
func (r *Runner) WaitStarts(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		r.mu.Lock()
		n := 0
		for _, p := range r.starts {
			if !p.done || !p.applied {
				n++
			}
		}
		r.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("runner: %d functions still starting: %w", n, ctx.Err())
		case <-t.C:
		}
	}
}

// closeUnused closes started handlers that no endpoint took.
func (r *Runner) closeUnused(started map[string]ProcessHandler, used map[string]*definition) {
	for name, h := range started {
		if d, ok := used[name]; ok && d.process == h {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), retireTimeout)
		if err := h.Close(ctx); err != nil {
			r.log.Warn("cannot close a function's processes", "function", name, "error", err)
		}
		cancel()
	}
}

// Unservable returns the functions this runner cannot serve, by name,
// with why: a runtime missing here, code that cannot be fetched, a
// process that does not start. It is also in the runner's service
// metadata (invocation.UnservableMetadata).
func (r *Runner) Unservable() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.unservable)
}

// retryLoop applies the functions again when a background start ends,
// and every retryUnservable while some could not be started, until the
// runner stops. It reads the functions to apply only once it holds the
// right to apply, so that it never puts back a list a newer SetFunctions
// replaced.
func (r *Runner) retryLoop() {
	t := time.NewTicker(retryUnservable)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.reapply:
		case <-t.C:
			r.mu.Lock()
			idle := len(r.unservable) == 0
			r.mu.Unlock()
			if idle {
				continue
			}
		}
		// A failed start is tried again once its retryAt has passed
		// (startProcesses), so the ticker needs no flag of its own.
		ctx, cancel := context.WithTimeout(r.ctx, subscribeTimeout)
		r.applying.Lock()
		r.mu.Lock()
		fns := r.fns
		r.mu.Unlock()
		err := r.apply(ctx, fns, false)
		r.applying.Unlock()
		cancel()
		if err != nil && !errors.Is(err, errStopped) && r.ctx.Err() == nil {
			r.log.Warn("applying the functions again", "error", err)
		}
	}
}

// errStopped is SetFunctions' error once the runner stopped.
var errStopped = errors.New("runner: stopped")

// unservableSummary is the unservable functions as service metadata: a
// JSON object of names to why, each reason cut to 256 bytes so that the
// metadata stays small.
func unservableSummary(m map[string]string) string {
	short := make(map[string]string, len(m))
	for name, why := range m {
		if len(why) > 256 {
			why = strings.ToValidUTF8(why[:253], "") + "..."
		}
		short[name] = why
	}
	b, err := json.Marshal(short)
	if err != nil {
		return "" // strings always encode
	}
	return string(b)
}
