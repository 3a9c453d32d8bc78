package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"
)

// A slot holds one worker, and two during a rolling restart. Its monitor
// goroutine alone changes it, under Supervisor.mu, in answer to events:
// the workers' readiness and exits, requests for a new worker (Start,
// Restart), timers (back-off, drain) and Stop.
type slot struct {
	n        int
	events   chan event
	requests chan *request

	// Guarded by Supervisor.mu.
	live      []*worker // processes not reaped yet, oldest first
	cur       *worker   // the ready worker that serves the slot
	pending   *worker   // the worker starting to take over the slot
	restarts  int
	lastExit  string
	crashloop bool
	backoffAt time.Time // when to re-fork; zero if no re-fork is due
	stopped   bool
	killed    []error // the workers Stop had to kill

	// The monitor's own.
	crashes int         // exits in a row, for the back-off
	exits   []time.Time // exits within CrashLoop.Window
}

// A request asks a slot for a new ready worker, which then replaces the
// current one: Start's first fork, a step of a rolling restart. reply
// gets exactly one value.
type request struct {
	ctx   context.Context
	reply chan error
}

func newRequest(ctx context.Context) *request {
	return &request{ctx: ctx, reply: make(chan error, 1)}
}

// answer replies; r may be nil (a re-fork has no one waiting).
func (r *request) answer(err error) {
	if r != nil {
		r.reply <- err
	}
}

type eventKind int

const (
	evReady    eventKind = iota // the worker wrote its readiness line
	evNotReady                  // it did not, and never will
	evExit                      // it exited and was reaped; its other events came first
)

type event struct {
	kind   eventKind
	w      *worker
	detail string    // evReady: the readiness detail
	err    error     // evNotReady: why; evExit: cmd.Wait's error
	at     time.Time // evExit: when it was reaped
}

// monitor runs a slot until Stop and the exit of its last worker. first
// asks for the slot's first worker.
func (s *Supervisor) monitor(sl *slot, first *request) {
	defer s.wg.Done()
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	quit, kill := s.quit, s.kill
	s.mu.Lock()
	s.replace(sl, first)
	s.mu.Unlock()
	for {
		s.mu.Lock()
		s.settle(sl)
		if sl.stopped && len(sl.live) == 0 {
			s.mu.Unlock()
			return
		}
		next, timed := sl.nextWake()
		var starting *request // whose ctx abandons the pending worker
		var abandon <-chan struct{}
		if p := sl.pending; p != nil && p.req != nil {
			starting, abandon = p.req, p.req.ctx.Done()
		}
		s.mu.Unlock()
		if timed {
			wake.Reset(time.Until(next))
		} else {
			wake.Stop()
		}

		var exited *WorkerInfo
		select {
		case ev := <-sl.events:
			s.mu.Lock()
			exited = s.handle(sl, ev)
			s.mu.Unlock()
		case r := <-sl.requests:
			s.mu.Lock()
			s.replace(sl, r)
			s.mu.Unlock()
		case <-abandon:
			s.mu.Lock()
			s.abandon(sl, starting)
			s.mu.Unlock()
		case now := <-wake.C:
			s.mu.Lock()
			s.tick(sl, now)
			s.mu.Unlock()
		case <-quit:
			quit = nil
			s.mu.Lock()
			s.stopSlot(sl)
			s.mu.Unlock()
		case <-kill:
			kill = nil
			s.mu.Lock()
			s.killAll(sl)
			s.mu.Unlock()
		}
		if exited != nil && s.cfg.OnExit != nil {
			s.cfg.OnExit(*exited)
		}
	}
}

// settle keeps the slot's promise: while the supervisor runs and the
// slot is not in a crash loop, it has a worker serving or starting, or a
// re-fork due.
func (s *Supervisor) settle(sl *slot) {
	if !sl.stopped && !sl.crashloop && sl.cur == nil && sl.pending == nil && sl.backoffAt.IsZero() {
		sl.backoffAt = time.Now().Add(s.cfg.Backoff.delay(sl.crashes))
	}
}

// nextWake is when the monitor has something to do of its own: a
// re-fork, or a drain that runs out.
func (sl *slot) nextWake() (time.Time, bool) {
	t := sl.backoffAt
	for _, w := range sl.live {
		if w.state == StateStopping && !w.killed && (t.IsZero() || w.killAt.Before(t)) {
			t = w.killAt
		}
	}
	return t, !t.IsZero()
}

// replace forks a worker to take over the slot once ready; it answers r
// then (see ready).
func (s *Supervisor) replace(sl *slot, r *request) {
	if sl.stopped {
		r.answer(ErrStopped)
		return
	}
	if p := sl.pending; p != nil {
		// A re-fork, or a start abandoned by an earlier Restart: the
		// new worker must come from a fresh Command.
		sl.pending = nil
		p.req.answer(fmt.Errorf("%w: worker %d: superseded by a newer start", ErrStartFailed, sl.n))
		p.req = nil
		s.stopWorker(p, "superseded by a newer start")
	}
	sl.backoffAt = time.Time{}
	w, err := s.spawn(sl)
	if err != nil {
		s.log.Error("cannot start worker", "worker", sl.n, "error", err)
		r.answer(fmt.Errorf("%w: worker %d: %w", ErrStartFailed, sl.n, err))
		return
	}
	w.req = r
	sl.pending = w
}

// refork replaces a worker that exited, once its back-off is over.
func (s *Supervisor) refork(sl *slot) {
	sl.restarts++
	w, err := s.spawn(sl)
	if err != nil {
		sl.lastExit = "not started: " + err.Error()
		s.crashed(sl, time.Now(), 0, "cannot re-fork worker", "worker", sl.n, "error", err)
		return
	}
	sl.pending = w
}

func (s *Supervisor) handle(sl *slot, ev event) *WorkerInfo {
	w := ev.w
	switch ev.kind {
	case evReady:
		s.ready(sl, w, ev.detail)
	case evNotReady:
		if w.state == StateStarting {
			// Killed now, it is reported when it exits.
			w.startErr = ev.err
			s.log.Debug("worker failed to report ready; killing it", "worker", sl.n, "pid", w.pid, "error", ev.err)
			s.killWorker(w)
		}
	case evExit:
		return s.exited(sl, w, ev)
	}
	return nil
}

// ready makes a new worker the slot's current one, and stops the worker
// it replaces; the request that asked for it is answered once that one
// has exited.
func (s *Supervisor) ready(sl *slot, w *worker, detail string) {
	w.ready = detail
	if w != sl.pending || w.state != StateStarting {
		return // abandoned or superseded, hence stopping
	}
	w.state = StateReady
	sl.pending = nil
	s.log.Info("worker ready", "worker", sl.n, "pid", w.pid, "ready", detail, "startup", time.Since(w.started).Round(time.Millisecond))
	if sl.crashloop {
		sl.crashloop, sl.exits, sl.crashes = false, nil, 0
		s.log.Info("worker revived after its crash loop", "worker", sl.n, "pid", w.pid)
	}
	old := sl.cur
	sl.cur = w
	r := w.req
	w.req = nil
	if old == nil {
		r.answer(nil)
		return
	}
	old.req = r
	s.stopWorker(old, fmt.Sprintf("replaced by pid %d", w.pid))
}

// exited handles a worker's exit; it returns the worker for OnExit if
// no one asked it to exit.
func (s *Supervisor) exited(sl *slot, w *worker, ev event) *WorkerInfo {
	sl.live = slices.DeleteFunc(sl.live, func(x *worker) bool { return x == w })
	exit := exitString(w, ev.err)
	sl.lastExit = exit
	uptime := ev.at.Sub(w.started)
	attrs := []any{"worker", sl.n, "pid", w.pid, "exit", exit, "uptime", uptime.Round(time.Millisecond)}
	switch {
	case w.state == StateStopping:
		if w.killed {
			s.log.Warn("worker killed", attrs...)
		} else {
			s.log.Info("worker stopped", attrs...)
		}
		w.req.answer(nil)
		return nil
	case w == sl.pending:
		sl.pending = nil
		cause := w.startErr
		switch {
		case cause == nil, errors.Is(cause, errNoReadyLine) && !(w.killed && w.cmd.ProcessState.ExitCode() == -1):
			cause = errors.New("exited before reporting ready")
		case errors.Is(cause, errNoReadyLine):
			cause = errors.New("closed fd 3 without reporting ready")
		}
		attrs = append(attrs, "error", cause)
		if w.req == nil {
			// A re-fork that failed is one more exit in a row.
			s.crashed(sl, ev.at, uptime, "worker failed to start", attrs...)
			break
		}
		err := fmt.Errorf("%w: worker %d (pid %d): %w (%s)", ErrStartFailed, sl.n, w.pid, cause, exit)
		if last := w.lastStderr(); last != "" {
			err = fmt.Errorf("%w; its last line on stderr: %q", err, last)
		}
		s.log.Error("worker failed to start", attrs...)
		w.req.answer(err)
		w.req = nil
	case w == sl.cur:
		sl.cur = nil
		s.crashed(sl, ev.at, uptime, "worker exited unexpectedly", attrs...)
	default:
		// Unreachable: a live worker is starting, serving or stopping.
		s.log.Error("untracked worker exited", attrs...)
	}
	info := sl.info(w)
	return &info
}

// crashed counts an unrequested exit and schedules the re-fork, or
// declares a crash loop; it logs msg once with attrs.
func (s *Supervisor) crashed(sl *slot, at time.Time, uptime time.Duration, msg string, attrs ...any) {
	if uptime >= s.cfg.Backoff.Stable {
		sl.crashes = 0
	}
	sl.crashes++
	window := at.Add(-s.cfg.CrashLoop.Window)
	sl.exits = append(slices.DeleteFunc(sl.exits, func(t time.Time) bool { return t.Before(window) }), at)
	if len(sl.exits) >= s.cfg.CrashLoop.Exits {
		sl.crashloop = true
		sl.backoffAt = time.Time{}
		s.log.Error(fmt.Sprintf("%s: CRASH LOOP: worker %d exited %d times within %v; it is no longer re-forked until a rolling restart", msg, sl.n, len(sl.exits), s.cfg.CrashLoop.Window),
			append(attrs, "exits", len(sl.exits), "window", s.cfg.CrashLoop.Window)...)
		return
	}
	if sl.pending != nil {
		s.log.Warn(msg+"; its replacement is starting", attrs...)
		return
	}
	d := s.cfg.Backoff.delay(sl.crashes)
	sl.backoffAt = time.Now().Add(d)
	s.log.Warn(msg+"; re-forking it", append(attrs, "backoff", d)...)
}

// abandon stops the worker started for r, whose context has ended.
func (s *Supervisor) abandon(sl *slot, r *request) {
	p := sl.pending
	if p == nil || p.req != r {
		return
	}
	sl.pending, p.req = nil, nil
	r.answer(fmt.Errorf("worker %d: %w", sl.n, r.ctx.Err()))
	s.stopWorker(p, "start abandoned: "+r.ctx.Err().Error())
}

// tick kills the workers whose drain has run out and re-forks when the
// back-off is over.
func (s *Supervisor) tick(sl *slot, now time.Time) {
	for _, w := range sl.live {
		if w.state == StateStopping && !w.killed && !now.Before(w.killAt) {
			s.log.Warn("worker did not exit within the drain time after SIGTERM; killing it", "worker", sl.n, "pid", w.pid, "drain", s.cfg.Drain)
			s.killWorker(w)
			if sl.stopped {
				sl.killed = append(sl.killed, fmt.Errorf("worker %d (pid %d) did not exit within %v of SIGTERM and was killed", sl.n, w.pid, s.cfg.Drain))
			}
		}
	}
	if !sl.backoffAt.IsZero() && !now.Before(sl.backoffAt) {
		sl.backoffAt = time.Time{}
		s.refork(sl)
	}
}

// stopSlot begins the slot's part of Stop.
func (s *Supervisor) stopSlot(sl *slot) {
	sl.stopped = true
	sl.backoffAt = time.Time{}
	if p := sl.pending; p != nil {
		p.req.answer(ErrStopped)
		p.req = nil
	}
	sl.pending, sl.cur = nil, nil
	for _, w := range sl.live {
		s.stopWorker(w, "supervisor stopping")
	}
}

// killAll kills the slot's workers: Stop's context has ended.
func (s *Supervisor) killAll(sl *slot) {
	for _, w := range sl.live {
		if !w.killed {
			s.log.Warn("stop deadline reached; killing worker", "worker", sl.n, "pid", w.pid)
			s.killWorker(w)
			sl.killed = append(sl.killed, fmt.Errorf("worker %d (pid %d) was killed at the stop deadline", sl.n, w.pid))
		}
	}
}

// stopWorker asks a worker to drain and exit: SIGTERM, and SIGKILL when
// Drain runs out (see tick).
func (s *Supervisor) stopWorker(w *worker, reason string) {
	if w.state == StateStopping {
		return
	}
	w.state = StateStopping
	w.killAt = time.Now().Add(s.cfg.Drain)
	s.log.Info("stopping worker", "worker", w.slot.n, "pid", w.pid, "reason", reason)
	w.signal(syscall.SIGTERM)
}

func (s *Supervisor) killWorker(w *worker) {
	w.killed = true
	w.signal(syscall.SIGKILL)
}

// idleState is the state of a slot with no worker starting or serving;
// "" if it has none of its own.
func (sl *slot) idleState() string {
	switch {
	case sl.stopped && len(sl.live) == 0:
		return StateStopped
	case sl.crashloop:
		return StateCrashLoop
	case !sl.backoffAt.IsZero():
		return StateBackoff
	}
	return ""
}

func (sl *slot) info(w *worker) WorkerInfo {
	return WorkerInfo{
		Slot:     sl.n,
		PID:      w.pid,
		State:    w.state,
		Started:  w.started,
		Restarts: sl.restarts,
		LastExit: sl.lastExit,
		Ready:    w.ready,
	}
}

// delay is the back-off before the re-fork that follows n exits in a row.
func (b Backoff) delay(n int) time.Duration {
	d := b.Initial
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}
