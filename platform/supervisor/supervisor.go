// Package supervisor runs a fixed number of worker processes and keeps
// them running, as the Node.js cluster module's master does: it forks a
// worker per slot, re-forks any worker that dies, replaces them one at a
// time on demand (a rolling restart) and stops them all with a bounded
// drain.
//
// # Readiness
//
// A worker is started, then ready. The supervisor passes each worker the
// write end of a pipe as file descriptor 3 and names it in the
// environment variable SHOAL_READY_FD ([EnvReadyFD]); the worker writes
// one line on it when it serves:
//
//	ready <detail>
//
// where detail (e.g. the worker's runner id) is optional and shows as
// [WorkerInfo].Ready. A Go worker calls [NotifyReady]. A worker that
// closes the pipe or exits before writing the line, or does not write it
// within [Config].Ready, has failed to start and is killed.
//
// # Exits
//
// A worker that exits without being asked to (a crash, os.Exit, SIGKILL,
// the out-of-memory killer) is re-forked after a back-off that doubles
// from [Backoff].Initial up to [Backoff].Max, and starts again from
// Initial once a worker has run [Backoff].Stable. A slot whose workers
// exit [CrashLoop].Exits times within [CrashLoop].Window is in a crash
// loop: it is no longer re-forked (the other slots carry on) until a
// rolling restart revives it. Every exit is logged with the attributes
// worker (the slot), pid, exit ("exit status 3", "signal: killed") and
// uptime.
//
// # Processes
//
// On Linux each worker leads its own process group, so a terminal's
// Ctrl-C reaches only the supervisor's process, which then stops the
// workers in its own order; signals go to the whole group, and when a
// worker exits, what is left of its group is killed, so a worker's own
// children do not outlive it. Workers get SIGKILL when the supervisor's
// process dies (the parent-death signal), so none outlives it either.
// The parent-death signal is tied to the OS thread that forked the
// worker: a program that locks a goroutine to its thread and lets it
// exit locked (which ends the thread) may kill workers with it
// (https://go.dev/issue/27505).
//
// Neither reaches a process that a worker's child started in a process
// group of its own (a function's server does): when the worker dies,
// such a grandchild is an orphan, re-parented to init, and lives on.
// With [Config].ReapOrphans, the supervisor's process is a child
// subreaper (Linux): those orphans become its children, and the
// supervisor kills them with what is left of their process group, and
// reaps them, when a worker exits, every few seconds, and at Stop after
// the workers; each one killed is logged at WARN with its pid and
// command. An orphan in a group that a live worker's process leads is
// left to that worker, which kills the group when its leader exits.
//
// Worker stdout and stderr reach [Config].Output, or the log, line by
// line.
package supervisor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"sync"
	"time"
)

// Config configures a Supervisor.
type Config struct {
	// Workers is the number of worker slots, at least 1.
	Workers int
	// Command builds a fresh command for a worker slot (1-based), with
	// exec.Command (not CommandContext: the supervisor decides when a
	// worker ends). The supervisor sets Stdout and Stderr, puts the
	// readiness pipe first in ExtraFiles (fd 3), so that the files
	// Command put there follow it (fd 4, 5, ...; the supervisor does not
	// close them), adds SHOAL_READY_FD to Env (os.Environ() if Env is
	// nil) and sets SysProcAttr's process group and parent-death signal;
	// Path, Args, Env, Dir and the rest come from Command.
	Command func(slot int) *exec.Cmd
	// Ready is how long a new worker may take to report ready; 0 means
	// 30s.
	Ready time.Duration
	// Drain is how long a stopping worker gets after SIGTERM before
	// SIGKILL; 0 means 30s.
	Drain time.Duration
	// Backoff paces the re-forks of a slot whose worker exited.
	Backoff Backoff
	// CrashLoop stops re-forking a slot whose worker keeps exiting.
	CrashLoop CrashLoop
	// Logger receives the supervisor's log; nil discards it.
	Logger *slog.Logger
	// Output receives each line a worker writes to its stdout or stderr
	// (stream is "stdout" or "stderr"), without the line end; a line
	// longer than 64 KiB arrives in pieces. It is called from one
	// goroutine per stream and worker, so it must be safe for concurrent
	// use, and a worker that writes waits for it. Nil logs each line
	// through Logger at INFO, with the attributes worker, pid and stream.
	Output func(slot, pid int, stream, line string)
	// OnExit, if set, is called when a worker exits without having been
	// asked to (a crash, or a failed start), with the worker as it was
	// (State is ready, or starting if it failed to start; Ready its
	// readiness detail) and LastExit set. It runs on the slot's monitor
	// goroutine: it must return promptly and must not call Restart or
	// Stop.
	OnExit func(WorkerInfo)
	// ReapOrphans makes the supervisor's process a child subreaper
	// (Linux only; elsewhere it does nothing), and has the supervisor
	// kill and reap every child of that process that is not one of its
	// workers: see the package documentation. The program must then
	// start no child process of its own while the supervisor runs (it
	// would be taken for an orphan), nor run another Supervisor with
	// ReapOrphans.
	ReapOrphans bool
}

// Backoff paces the re-forks of a slot: the first waits Initial, each
// next one twice as long, up to Max; once a worker has run Stable before
// exiting, the next re-fork waits Initial again.
type Backoff struct {
	Initial time.Duration // 0 means 100ms
	Max     time.Duration // 0 means 10s
	Stable  time.Duration // 0 means 10s
}

// CrashLoop is the crash-loop guard: a slot whose workers exit Exits
// times within Window is no longer re-forked.
type CrashLoop struct {
	Exits  int           // 0 means 5
	Window time.Duration // 0 means 1m
}

// The states of a worker in [WorkerInfo].
const (
	// StateStarting: forked, not ready yet.
	StateStarting = "starting"
	// StateReady: reported ready; serving.
	StateReady = "ready"
	// StateStopping: sent SIGTERM, draining.
	StateStopping = "stopping"
	// StateBackoff: the slot has no worker and waits to re-fork one.
	StateBackoff = "backoff"
	// StateCrashLoop: the slot's workers kept exiting; it is not
	// re-forked until a rolling restart.
	StateCrashLoop = "crashloop"
	// StateStopped: the supervisor has stopped.
	StateStopped = "stopped"
)

// WorkerInfo describes a worker process, or a slot that has none.
type WorkerInfo struct {
	Slot int
	// PID is 0 when the slot has no process (backoff, crashloop,
	// stopped).
	PID   int
	State string
	// Started is when the process was forked.
	Started time.Time
	// Restarts counts the slot's re-forks after a worker exited on its
	// own (a rolling restart does not count).
	Restarts int
	// LastExit is how the slot's last worker ended, e.g. "exit status 3"
	// or "signal: killed"; empty if none has.
	LastExit string
	// Ready is the detail of the worker's readiness line (e.g. its
	// runner id), without the "ready " prefix.
	Ready string
}

var (
	// ErrStartFailed wraps the error of a worker that did not become
	// ready, from Start and Restart.
	ErrStartFailed = errors.New("supervisor: worker failed to start")
	// ErrStopped is returned by Restart once Stop has been called.
	ErrStopped = errors.New("supervisor: stopped")
)

// Supervisor runs and watches the worker processes.
type Supervisor struct {
	cfg Config
	log *slog.Logger

	// mu guards the slots' and workers' state, which each slot's monitor
	// goroutine changes and Workers reads.
	mu    sync.Mutex
	slots []*slot

	// quit is closed by Stop: the monitors stop their workers. kill is
	// closed when Stop's context ends: the monitors SIGKILL them.
	quit chan struct{}
	kill chan struct{}
	// wg counts every goroutine: the monitors and each worker's own.
	wg sync.WaitGroup

	// forking is held for reading by each fork until the new worker is
	// among its slot's, and for writing by a sweep while it lists the
	// processes: a sweep never takes a worker for an orphan.
	forking sync.RWMutex
	// reaper kills the workers' orphans; nil without ReapOrphans.
	reaper *reaper

	restarting chan struct{} // a token, held by the running Restart
	stopOnce   sync.Once
	stopErr    error
}

// Defaults.
const (
	defaultReady     = 30 * time.Second
	defaultDrain     = 30 * time.Second
	defaultInitial   = 100 * time.Millisecond
	defaultMax       = 10 * time.Second
	defaultStable    = 10 * time.Second
	defaultLoopExits = 5
	defaultWindow    = time.Minute
)

func (c *Config) setDefaults() error {
	if c.Command == nil {
		panic("supervisor: Config.Command is nil")
	}
	if c.Workers < 1 {
		return fmt.Errorf("supervisor: %d workers: want at least 1", c.Workers)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Ready", &c.Ready, defaultReady},
		{"Drain", &c.Drain, defaultDrain},
		{"Backoff.Initial", &c.Backoff.Initial, defaultInitial},
		{"Backoff.Max", &c.Backoff.Max, defaultMax},
		{"Backoff.Stable", &c.Backoff.Stable, defaultStable},
		{"CrashLoop.Window", &c.CrashLoop.Window, defaultWindow},
	} {
		if *d.v < 0 {
			return fmt.Errorf("supervisor: %s is negative (%v)", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.CrashLoop.Exits < 0 {
		return fmt.Errorf("supervisor: CrashLoop.Exits is negative (%d)", c.CrashLoop.Exits)
	}
	if c.CrashLoop.Exits == 0 {
		c.CrashLoop.Exits = defaultLoopExits
	}
	c.Backoff.Max = max(c.Backoff.Max, c.Backoff.Initial)
	return nil
}

// Start forks the workers, all at once, and waits until every one is
// ready. If one fails to start, or ctx ends first, Start stops those that
// started (with the drain) and returns the error; no process is left.
// A misconfiguration panics (a nil Command) or returns an error (the
// rest).
func Start(ctx context.Context, cfg Config) (*Supervisor, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Supervisor{
		cfg:        cfg,
		log:        log,
		quit:       make(chan struct{}),
		kill:       make(chan struct{}),
		restarting: make(chan struct{}, 1),
	}
	if cfg.ReapOrphans {
		s.startReaper()
	}
	// One failure abandons the other starts at once.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reqs := make([]*request, cfg.Workers)
	for i := range reqs {
		sl := &slot{n: i + 1, events: make(chan event), requests: make(chan *request)}
		s.slots = append(s.slots, sl)
		reqs[i] = newRequest(ctx)
		s.wg.Add(1)
		go s.monitor(sl, reqs[i])
	}
	var errs []error
	for _, r := range reqs {
		if err := <-r.reply; err != nil {
			if len(errs) == 0 || !errors.Is(err, context.Canceled) {
				errs = append(errs, err)
			}
			cancel()
		}
	}
	if len(errs) > 0 {
		if err := s.Stop(context.Background()); err != nil {
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// Restart replaces the workers one at a time, slot by slot: it forks the
// new worker, waits until it is ready, then stops the old one (SIGTERM,
// drain) and waits for it to exit before going on, so that at least
// Workers workers are ready throughout and at most one extra process
// runs. A slot in back-off or in a crash loop gets a new worker at once.
// Restart stops at the first slot whose new worker fails to start: that
// slot keeps its old worker, and the later slots are not replaced.
// Concurrent calls run one after the other. If ctx ends, the worker
// being started is abandoned (stopped) and Restart returns ctx's error.
func (s *Supervisor) Restart(ctx context.Context) error {
	select {
	case s.restarting <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.quit:
		return ErrStopped
	}
	defer func() { <-s.restarting }()
	s.log.Debug("rolling restart", "workers", len(s.slots))
	for _, sl := range s.slots {
		r := newRequest(ctx)
		select {
		case sl.requests <- r:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.quit:
			return ErrStopped
		}
		select {
		case err := <-r.reply:
			if errors.Is(err, ErrStopped) || ctx.Err() != nil {
				return cmp.Or(ctx.Err(), err)
			}
			if err != nil {
				return fmt.Errorf("rolling restart stopped at worker %d of %d, the rest keep their old workers: %w", sl.n, len(s.slots), err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.log.Debug("rolling restart done", "workers", len(s.slots))
	return nil
}

// Stop stops every worker: SIGTERM, then SIGKILL for those still running
// after Drain, or at once when ctx ends; it returns when all have exited
// and every goroutine of the supervisor has ended. It returns an error
// if a worker had to be killed, or ctx ended. Stop is idempotent: later calls wait for
// the first and return its result.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() { s.stopErr = s.stop(ctx) })
	return s.stopErr
}

func (s *Supervisor) stop(ctx context.Context) error {
	close(s.quit)
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	var errs []error
	select {
	case <-done:
	case <-ctx.Done():
		select {
		case <-done:
		default:
			errs = append(errs, ctx.Err())
			close(s.kill)
			<-done // SIGKILL is prompt
		}
	}
	s.stopReaper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sl := range s.slots {
		errs = append(errs, sl.killed...)
	}
	if len(errs) > 0 {
		return fmt.Errorf("supervisor: stop: %w", errors.Join(errs...))
	}
	return nil
}

// Workers returns a snapshot of the workers, by slot and then by age: one
// entry per worker process (during a rolling restart a slot has two),
// and one with PID 0 for a slot that has no worker starting or serving
// (backoff, crashloop, stopped).
func (s *Supervisor) Workers() []WorkerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []WorkerInfo
	for _, sl := range s.slots {
		if sl.cur == nil && sl.pending == nil {
			if st := sl.idleState(); st != "" || len(sl.live) == 0 {
				out = append(out, WorkerInfo{Slot: sl.n, State: cmp.Or(st, StateBackoff), Restarts: sl.restarts, LastExit: sl.lastExit})
			}
		}
		for _, w := range sl.live {
			out = append(out, sl.info(w))
		}
	}
	return out
}
