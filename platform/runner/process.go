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

// acquire counts an invocation that runs d's handler.
func (d *definition) acquire() { d.users.Add(1) }

// release ends what acquire began; the last invocation of a retired
// definition lets its processes be closed.
func (d *definition) release() {
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

// startProcesses starts, concurrently, the process handlers of the
// functions of fns that run as processes and are not served already
// with the same definition. It returns the handlers that started by
// name, and why the others did not.
func (r *Runner) startProcesses(ctx context.Context, fns []manifest.Function) (map[string]ProcessHandler, map[string]string) {
	started, failed := map[string]ProcessHandler{}, map[string]string{}
	if r.processes == nil {
		return started, failed
	}
	eps := *r.eps.Load()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, fn := range fns {
		if !fn.Handler.RunsProcess() || (!fn.Public && r.verifier == nil) {
			continue
		}
		if ep, ok := eps[fn.Name]; ok && manifest.SameDefinition(ep.def.Load().fn, fn) {
			continue
		}
		wg.Go(func() {
			t := time.Now()
			h, err := r.processes.Start(ctx, fn)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				why := err.Error()
				if ep, ok := eps[fn.Name]; ok && keepsServing(ep.def.Load(), fn) {
					why = fmt.Sprintf("its new version (code %s) does not start, the previous one serves on: %s", fn.Process.Code.Digest, why)
				}
				failed[fn.Name] = why
				return
			}
			r.log.Info("function's processes started", "function", fn.Name, "handler", fn.Handler.String(),
				"code", fn.Process.Code.Digest, "took", time.Since(t).Round(time.Millisecond))
			started[fn.Name] = h
		})
	}
	wg.Wait()
	return started, failed
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

// retryLoop tries again, every retryUnservable, to serve the functions
// that could not be started, until the runner stops.
func (r *Runner) retryLoop() {
	t := time.NewTicker(retryUnservable)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		fns, pending := r.fns, len(r.unservable) > 0
		r.mu.Unlock()
		if !pending {
			continue
		}
		ctx, cancel := context.WithTimeout(r.ctx, manifest.MaxStartTimeout)
		if err := r.SetFunctions(ctx, fns); err != nil && !errors.Is(err, errStopped) {
			r.log.Warn("retrying the functions not served", "error", err)
		}
		cancel()
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
