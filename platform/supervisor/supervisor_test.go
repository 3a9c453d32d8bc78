//go:build linux

package supervisor_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/supervisor"
)

// entry is a log record of the supervisor, or a line of a worker's
// output, in the order they happened.
type entry struct {
	log    bool
	level  slog.Level
	msg    string // the record's message, or the output line
	attrs  map[string]string
	slot   int // output
	pid    int // output
	stream string
}

func (e entry) String() string {
	if !e.log {
		line := e.msg
		if len(line) > 200 {
			line = fmt.Sprintf("%s... (%d bytes)", line[:200], len(line))
		}
		return fmt.Sprintf("output worker=%d pid=%d %s: %s", e.slot, e.pid, e.stream, line)
	}
	return fmt.Sprintf("log %s %q %v", e.level, e.msg, e.attrs)
}

// recorder collects the supervisor's log and the workers' output; a
// failed test prints them.
type recorder struct {
	mu      sync.Mutex
	entries []entry
}

func newRecorder(t *testing.T) *recorder {
	rec := &recorder{}
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range rec.all() {
				t.Log(e)
			}
		}
	})
	return rec
}

func (r *recorder) add(e entry) {
	r.mu.Lock()
	r.entries = append(r.entries, e)
	r.mu.Unlock()
}

func (r *recorder) all() []entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.entries)
}

// find returns the index and entry of the first match at or after from.
func (r *recorder) find(from int, match func(entry) bool) (int, entry, bool) {
	es := r.all()
	for i := from; i < len(es); i++ {
		if match(es[i]) {
			return i, es[i], true
		}
	}
	return -1, entry{}, false
}

func (r *recorder) output(slot, pid int, stream, line string) {
	r.add(entry{msg: line, slot: slot, pid: pid, stream: stream})
}

func (r *recorder) logger() *slog.Logger { return slog.New(recordHandler{r: r}) }

type recordHandler struct {
	r     *recorder
	attrs []slog.Attr
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h recordHandler) Handle(_ context.Context, rec slog.Record) error {
	e := entry{log: true, level: rec.Level, msg: rec.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		e.attrs[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		e.attrs[a.Key] = a.Value.String()
		return true
	})
	h.r.add(e)
	return nil
}

func (h recordHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return recordHandler{r: h.r, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h recordHandler) WithGroup(string) slog.Handler { return h }

// logged matches a log record by message prefix and attributes.
func logged(level slog.Level, msgPrefix string, attrs ...string) func(entry) bool {
	return func(e entry) bool {
		if !e.log || e.level != level || !strings.HasPrefix(e.msg, msgPrefix) {
			return false
		}
		for i := 0; i+1 < len(attrs); i += 2 {
			if e.attrs[attrs[i]] != attrs[i+1] {
				return false
			}
		}
		return true
	}
}

// config is a Config whose workers are the test binary in the modes
// mode(slot) says, recorded by rec.
func config(rec *recorder, workers int, mode func(slot int) string) supervisor.Config {
	return supervisor.Config{
		Workers: workers,
		Command: childCommand(mode),
		Logger:  rec.logger(),
		Output:  rec.output,
	}
}

func modes(m ...string) func(int) string {
	return func(slot int) string { return m[(slot-1)%len(m)] }
}

// start starts a supervisor that stops with the test.
func start(t *testing.T, cfg supervisor.Config) *supervisor.Supervisor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sup, err := supervisor.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = sup.Stop(ctx)
	})
	return sup
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// slotWorkers returns the entries of one slot.
func slotWorkers(sup *supervisor.Supervisor, slot int) []supervisor.WorkerInfo {
	return slices.DeleteFunc(sup.Workers(), func(w supervisor.WorkerInfo) bool { return w.Slot != slot })
}

// only returns the one entry of a slot, failing the test if it has more.
func only(t *testing.T, sup *supervisor.Supervisor, slot int) supervisor.WorkerInfo {
	t.Helper()
	ws := slotWorkers(sup, slot)
	if len(ws) != 1 {
		t.Fatalf("worker %d: %d entries, want 1: %+v", slot, len(ws), ws)
	}
	return ws[0]
}

func pids(ws []supervisor.WorkerInfo) []int {
	var out []int
	for _, w := range ws {
		out = append(out, w.PID)
	}
	return out
}

// startedPIDs returns the pid of every worker the supervisor forked.
func startedPIDs(rec *recorder) []int {
	var out []int
	for _, e := range rec.all() {
		if e.log && e.msg == "worker started" {
			pid, _ := strconv.Atoi(e.attrs["pid"])
			out = append(out, pid)
		}
	}
	return out
}

// assertReaped fails unless no process has any of the pids: the
// supervisor's own children must be gone and reaped.
func assertReaped(t *testing.T, pids []int) {
	t.Helper()
	if len(pids) == 0 {
		t.Fatal("no pids to check")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d still exists (kill 0: %v)", pid, err)
		}
	}
}

// gone reports whether a process that is not our child has died: it no
// longer exists, or is a zombie waiting for its new parent (often init)
// to reap it.
func gone(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) S ...: the state follows the last ')'.
	_, rest, _ := strings.Cut(string(stat[strings.LastIndexByte(string(stat), ')'):]), " ")
	return strings.HasPrefix(rest, "Z") || strings.HasPrefix(rest, "X")
}

func TestStartReportsEveryWorkerReady(t *testing.T) {
	rec := newRecorder(t)
	sup := start(t, config(rec, 3, modes("ready")))

	ws := sup.Workers()
	if len(ws) != 3 {
		t.Fatalf("Workers() = %+v, want 3", ws)
	}
	seen := map[int]bool{}
	for i, w := range ws {
		if w.Slot != i+1 || w.State != supervisor.StateReady || w.PID == 0 || seen[w.PID] {
			t.Errorf("worker %d = %+v, want slot %d ready with a pid of its own", i, w, i+1)
		}
		seen[w.PID] = true
		if want := fmt.Sprintf("id-%d", w.PID); w.Ready != want {
			t.Errorf("worker %d: Ready = %q, want %q", w.Slot, w.Ready, want)
		}
		if w.Restarts != 0 || w.LastExit != "" || time.Since(w.Started) > 10*time.Second {
			t.Errorf("worker %d = %+v: a fresh worker", w.Slot, w)
		}
		for _, out := range []struct{ stream, line string }{
			{"stdout", fmt.Sprintf("hello from %d", w.PID)},
			{"stderr", fmt.Sprintf("warming up %d", w.PID)},
		} {
			// Output runs apart from the readiness pipe: it may lag.
			waitFor(t, 2*time.Second, fmt.Sprintf("worker %d: %s line %q through Output", w.Slot, out.stream, out.line), func() bool {
				_, _, ok := rec.find(0, func(e entry) bool {
					return !e.log && e.slot == w.Slot && e.pid == w.PID && e.stream == out.stream && e.msg == out.line
				})
				return ok
			})
		}
	}
}

func TestExitedWorkerIsReforked(t *testing.T) {
	crashes := t.TempDir()
	t.Setenv(crashDirEnv, crashes)
	for _, tc := range []struct {
		name  string
		mode  string
		crash func(pid int) error
		exit  string
	}{
		{"killed", "ready", func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }, "signal: killed"},
		{"exits 3", "crash-on-file", func(pid int) error {
			return os.WriteFile(filepath.Join(crashes, strconv.Itoa(pid)), nil, 0o600)
		}, "exit status 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(t)
			cfg := config(rec, 2, modes(tc.mode))
			cfg.Output = nil // through the log
			var lost []supervisor.WorkerInfo
			var mu sync.Mutex
			cfg.OnExit = func(w supervisor.WorkerInfo) {
				mu.Lock()
				lost = append(lost, w)
				mu.Unlock()
			}
			sup := start(t, cfg)
			victim, other := only(t, sup, 1), only(t, sup, 2)

			crashed := time.Now()
			if err := tc.crash(victim.PID); err != nil {
				t.Fatal(err)
			}
			var w supervisor.WorkerInfo
			waitFor(t, 2*time.Second, "worker 1 re-forked and ready", func() bool {
				ws := slotWorkers(sup, 1)
				if len(ws) == 1 && ws[0].State == supervisor.StateReady && ws[0].PID != victim.PID {
					w = ws[0]
					return true
				}
				return false
			})
			t.Logf("re-forked and ready in %v", time.Since(crashed))
			if w.Restarts != 1 || w.LastExit != tc.exit || w.Ready != fmt.Sprintf("id-%d", w.PID) {
				t.Errorf("worker 1 = %+v, want Restarts 1, LastExit %s", w, tc.exit)
			}
			if _, e, ok := rec.find(0, logged(slog.LevelWarn, "worker exited unexpectedly", "worker", "1", "pid", strconv.Itoa(victim.PID), "exit", tc.exit)); !ok {
				t.Error("the exit was not logged with worker, pid and exit")
			} else if _, err := time.ParseDuration(e.attrs["uptime"]); err != nil {
				t.Errorf("exit logged with uptime %q: %v", e.attrs["uptime"], err)
			}
			waitFor(t, 2*time.Second, "without Output, the new worker's stdout in the log", func() bool {
				_, _, ok := rec.find(0, logged(slog.LevelInfo, fmt.Sprintf("hello from %d", w.PID), "worker", "1", "pid", strconv.Itoa(w.PID), "stream", "stdout"))
				return ok
			})
			mu.Lock()
			if len(lost) != 1 || lost[0].PID != victim.PID || lost[0].Ready != victim.Ready || lost[0].State != supervisor.StateReady || lost[0].LastExit != tc.exit {
				t.Errorf("OnExit got %+v, want the lost worker once", lost)
			}
			mu.Unlock()
			if now := only(t, sup, 2); now.PID != other.PID || now.Restarts != 0 {
				t.Errorf("worker 2 = %+v, want it untouched (pid %d)", now, other.PID)
			}
		})
	}
}

func TestCrashLoopStopsReforking(t *testing.T) {
	rec := newRecorder(t)
	var slot1 atomic.Value
	slot1.Store("exit3-after-ready")
	cfg := config(rec, 2, func(slot int) string {
		if slot == 1 {
			return slot1.Load().(string)
		}
		return "ready"
	})
	cfg.Backoff = supervisor.Backoff{Initial: 10 * time.Millisecond, Max: 40 * time.Millisecond}
	cfg.CrashLoop = supervisor.CrashLoop{Exits: 3, Window: 10 * time.Second}
	var exits atomic.Int32
	cfg.OnExit = func(supervisor.WorkerInfo) { exits.Add(1) }
	sup := start(t, cfg)
	steady := only(t, sup, 2)

	waitFor(t, 3*time.Second, "worker 1 in a crash loop", func() bool {
		ws := slotWorkers(sup, 1)
		return len(ws) == 1 && ws[0].State == supervisor.StateCrashLoop
	})
	i, _, ok := rec.find(0, logged(slog.LevelError, "worker exited unexpectedly: CRASH LOOP", "worker", "1", "exit", "exit status 3", "exits", "3"))
	if !ok {
		t.Fatal("no ERROR record of the crash loop")
	}
	time.Sleep(200 * time.Millisecond) // several back-offs: nothing happens
	if _, e, ok := rec.find(i, logged(slog.LevelDebug, "worker started", "worker", "1")); ok {
		t.Errorf("worker 1 re-forked during its crash loop: %v", e)
	}
	w := only(t, sup, 1)
	if w.PID != 0 || w.Restarts != 2 || w.LastExit != "exit status 3" {
		t.Errorf("worker 1 = %+v, want no process, 2 restarts (3 exits), exit status 3", w)
	}
	if n := exits.Load(); n != 3 {
		t.Errorf("OnExit called %d times, want 3", n)
	}
	if now := only(t, sup, 2); now.PID != steady.PID || now.State != supervisor.StateReady || now.Restarts != 0 {
		t.Errorf("worker 2 = %+v, want it untouched", now)
	}

	// A rolling restart, with the fault fixed, revives the slot.
	slot1.Store("ready")
	if err := sup.Restart(context.Background()); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if w := only(t, sup, 1); w.State != supervisor.StateReady || w.PID == 0 {
		t.Errorf("after Restart, worker 1 = %+v, want ready", w)
	}
}

func TestRestartIsRolling(t *testing.T) {
	const n = 3
	rec := newRecorder(t)
	sup := start(t, config(rec, n, modes("ready")))
	before := sup.Workers()

	// Watch while two concurrent restarts run, one after the other.
	minReady, maxProcs := n, 0
	done := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			ready, procs := 0, 0
			for _, w := range sup.Workers() {
				if w.State == supervisor.StateReady {
					ready++
				}
				if w.PID != 0 {
					procs++
				}
			}
			minReady, maxProcs = min(minReady, ready), max(maxProcs, procs)
			select {
			case <-done:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- sup.Restart(context.Background()) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("Restart: %v", err)
		}
	}
	close(done)
	<-watched

	if minReady < n {
		t.Errorf("%d workers ready at one point during the restarts, want at least %d", minReady, n)
	}
	if maxProcs > n+1 {
		t.Errorf("%d worker processes at one point, want at most %d", maxProcs, n+1)
	}
	after := sup.Workers()
	for i, w := range after {
		if w.State != supervisor.StateReady || slices.Contains(pids(before), w.PID) || w.Restarts != 0 {
			t.Errorf("after the restarts, worker %d = %+v, want a new ready worker, no restart counted", i+1, w)
		}
	}
	// Each old worker got SIGTERM after its replacement was ready: slot
	// by slot, in the log, "worker ready" (new) precedes "sigterm" (old).
	for _, e := range rec.all() {
		if !e.log || e.msg != "stopping worker" {
			continue
		}
		old := e.attrs["pid"]
		readyAt, _, ok := rec.find(0, func(r entry) bool {
			return logged(slog.LevelInfo, "worker ready", "worker", e.attrs["worker"])(r) && r.attrs["pid"] == strings.TrimPrefix(e.attrs["reason"], "replaced by pid ")
		})
		termAt, _, termed := rec.find(0, func(r entry) bool { return !r.log && r.msg == "sigterm "+old })
		if !ok || !termed || readyAt > termAt {
			t.Errorf("worker %s: old pid %s got SIGTERM (at %d) before its replacement was ready (at %d)", e.attrs["worker"], old, termAt, readyAt)
		}
	}
	if got := len(slices.DeleteFunc(rec.all(), func(e entry) bool { return !logged(slog.LevelInfo, "worker ready")(e) })); got != 3*n {
		t.Errorf("%d workers became ready, want %d (start and two restarts)", got, 3*n)
	}
}

func TestRestartThatFailsKeepsTheOldWorkers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    string        // of the new workers
		timeout time.Duration // of Restart's context
		want    error
	}{
		{"new worker fails to start", "never-ready", 10 * time.Second, supervisor.ErrStartFailed},
		{"context ends while it starts", "hang", 300 * time.Millisecond, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(t)
			var mode atomic.Value
			mode.Store("ready")
			cfg := config(rec, 2, func(int) string { return mode.Load().(string) })
			cfg.Drain = 300 * time.Millisecond // hang ignores SIGTERM
			sup := start(t, cfg)
			before := sup.Workers()

			mode.Store(tc.mode)
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			err := sup.Restart(ctx)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Restart = %v, want %v", err, tc.want)
			}
			// The failed worker is gone; the old ones serve on.
			waitFor(t, 2*time.Second, "only the old workers left", func() bool {
				ws := sup.Workers()
				return len(ws) == 2 && slices.Equal(pids(ws), pids(before))
			})
			for _, w := range sup.Workers() {
				if w.State != supervisor.StateReady {
					t.Errorf("worker %d = %+v, want ready", w.Slot, w)
				}
			}
			if _, e, ok := rec.find(0, logged(slog.LevelDebug, "worker started", "worker", "2")); ok && e.attrs["pid"] != strconv.Itoa(before[1].PID) {
				t.Errorf("Restart went on to worker 2 (pid %s)", e.attrs["pid"])
			}
		})
	}
}

func TestStop(t *testing.T) {
	for _, tc := range []struct {
		name      string
		drain     time.Duration
		deadline  time.Duration
		minTook   time.Duration
		wantError string
	}{
		{"kills a worker that ignores SIGTERM after the drain", 300 * time.Millisecond, 10 * time.Second, 300 * time.Millisecond, "worker 2 (pid %d) did not exit within 300ms of SIGTERM and was killed"},
		{"kills at once when its context ends", time.Minute, 300 * time.Millisecond, 300 * time.Millisecond, "worker 2 (pid %d) was killed at the stop deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(t)
			cfg := config(rec, 2, modes("ready", "slow-stop"))
			cfg.Drain = tc.drain
			sup := start(t, cfg)
			ws := sup.Workers()

			ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
			defer cancel()
			began := time.Now()
			err := sup.Stop(ctx)
			took := time.Since(began)
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf(tc.wantError, ws[1].PID)) {
				t.Errorf("Stop = %v, want an error saying %q", err, fmt.Sprintf(tc.wantError, ws[1].PID))
			}
			if took < tc.minTook || took > tc.minTook+2*time.Second {
				t.Errorf("Stop took %v, want a little over %v", took, tc.minTook)
			}
			assertReaped(t, pids(ws))
			if _, _, ok := rec.find(0, func(e entry) bool { return !e.log && e.msg == fmt.Sprintf("ignoring sigterm %d", ws[1].PID) }); !ok {
				t.Error("the slow worker did not get SIGTERM first")
			}
			wantExit := []string{"exit status 0", "signal: killed"}
			for i, w := range sup.Workers() {
				if w.State != supervisor.StateStopped || w.PID != 0 || w.LastExit != wantExit[i] {
					t.Errorf("after Stop, worker %d = %+v, want stopped, no pid, LastExit %q", i+1, w, wantExit[i])
				}
			}

			again := time.Now()
			if err2 := sup.Stop(context.Background()); err2 != err || time.Since(again) > 100*time.Millisecond {
				t.Errorf("second Stop = %v after %v, want the first's result at once", err2, time.Since(again))
			}
			if err := sup.Restart(context.Background()); !errors.Is(err, supervisor.ErrStopped) {
				t.Errorf("Restart after Stop = %v, want ErrStopped", err)
			}
		})
	}
}

func TestStartFailure(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    string
		command func(int) *exec.Cmd // instead of mode
		want    []string
	}{
		{name: "exit before ready", mode: "never-ready", want: []string{"worker 2 (pid ", "exited before reporting ready (exit status 1)", `its last line on stderr: "cannot start: no such thing"`}},
		{name: "not ready in time", mode: "hang", want: []string{"worker 2 (pid ", "not ready within 500ms (signal: killed)"}},
		{name: "bad readiness line", mode: "bad-line", want: []string{`readiness line "listening on :8080" does not start with "ready"`}},
		{name: "no such program", command: func(int) *exec.Cmd { return exec.Command(filepath.Join(t.TempDir(), "missing")) }, want: []string{"worker 2: fork/exec "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(t)
			cfg := config(rec, 3, modes("ready", tc.mode))
			if tc.command != nil {
				ready := cfg.Command
				cfg.Command = func(slot int) *exec.Cmd {
					if slot == 2 {
						return tc.command(slot)
					}
					return ready(slot)
				}
			}
			cfg.Ready = 500 * time.Millisecond
			began := time.Now()
			sup, err := supervisor.Start(context.Background(), cfg)
			if sup != nil || !errors.Is(err, supervisor.ErrStartFailed) {
				t.Fatalf("Start = %v, %v; want ErrStartFailed", sup, err)
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Start: %v\nwant it to say %q", err, want)
				}
			}
			if took := time.Since(began); took > 3*time.Second {
				t.Errorf("Start took %v to fail", took)
			}
			assertReaped(t, startedPIDs(rec))
		})
	}
}

func TestWorkerChildrenDieWithIt(t *testing.T) {
	rec := newRecorder(t)
	sup := start(t, config(rec, 1, modes("grandchild")))
	w := only(t, sup, 1)
	_, child, ok := strings.Cut(w.Ready, " child-")
	gc, err := strconv.Atoi(child)
	if !ok || err != nil {
		t.Fatalf("Ready = %q, want the grandchild's pid", w.Ready)
	}
	began := time.Now()
	if err := sup.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("Stop took %v, though the worker exits at once", took)
	}
	assertReaped(t, []int{w.PID})
	waitFor(t, 2*time.Second, fmt.Sprintf("the worker's own child (pid %d) dies", gc), func() bool { return gone(gc) })
}

func TestWorkersDieWithTheSupervisor(t *testing.T) {
	cmd := childCommand(modes("supervisor"))(0)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var workers []int
	sc := bufio.NewScanner(out)
	for len(workers) < 2 && sc.Scan() {
		pid, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "worker "))
		if err != nil || pid == 0 {
			t.Fatalf("supervisor process printed %q", sc.Text())
		}
		workers = append(workers, pid)
	}
	if len(workers) < 2 {
		_ = cmd.Process.Kill()
		t.Fatalf("supervisor process exited (%v) before its workers were ready", cmd.Wait())
	}
	if err := cmd.Process.Kill(); err != nil { // no chance to stop its workers
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, pid := range workers {
		waitFor(t, 2*time.Second, fmt.Sprintf("worker pid %d dies with its supervisor", pid), func() bool { return gone(pid) })
	}
}

// TestCommandExtraFiles: the files Command puts in ExtraFiles reach the
// worker after the readiness pipe, from fd 4, on every fork.
func TestCommandExtraFiles(t *testing.T) {
	rec := newRecorder(t)
	cfg := config(rec, 2, modes("extra-file"))
	command := cfg.Command
	cfg.Command = func(slot int) *exec.Cmd {
		cmd := command(slot)
		r, w, err := os.Pipe()
		if err != nil {
			t.Error(err)
			return cmd
		}
		fmt.Fprintf(w, "slot %d\n", slot)
		w.Close()
		t.Cleanup(func() { r.Close() })
		cmd.ExtraFiles = []*os.File{r}
		return cmd
	}
	sup := start(t, cfg)
	for slot := 1; slot <= 2; slot++ {
		pid := only(t, sup, slot).PID
		want := fmt.Sprintf("fd 4: slot %d", slot)
		waitFor(t, 2*time.Second, fmt.Sprintf("worker %d prints %q", slot, want), func() bool {
			_, _, ok := rec.find(0, func(e entry) bool { return !e.log && e.pid == pid && e.msg == want })
			return ok
		})
	}
}

func TestOutputIsPassedLineByLine(t *testing.T) {
	rec := newRecorder(t)
	sup := start(t, config(rec, 1, modes("chatty")))
	pid := only(t, sup, 1).PID
	if err := sup.Stop(context.Background()); err != nil { // all output is passed on before Stop returns
		t.Fatal(err)
	}
	var lines []string
	for _, e := range rec.all() {
		if !e.log && e.pid == pid && e.stream == "stdout" {
			lines = append(lines, e.msg)
		}
	}
	want := []string{"a", "", "b", strings.Repeat("x", 64<<10), strings.Repeat("x", 36<<10)}
	if !slices.Equal(lines, want) {
		t.Errorf("got %d stdout lines of lengths %v, want %d of lengths %v", len(lines), lengths(lines), len(want), lengths(want))
	}
}

func lengths(ss []string) []int {
	var out []int
	for _, s := range ss {
		out = append(out, len(s))
	}
	return out
}

func TestNotifyReady(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     string // "" unset; "pipe" a pipe's write end
		detail  string
		want    string // on the pipe
		wantErr string
	}{
		{name: "writes the line", env: "pipe", detail: "id-42", want: "ready id-42\n"},
		{name: "detail is optional", env: "pipe", want: "ready\n"},
		{name: "no supervisor, nothing to do", env: ""},
		{name: "detail on one line only", env: "pipe", detail: "a\nb", wantErr: "spans lines"},
		{name: "not a descriptor", env: "three", wantErr: `SHOAL_READY_FD="three": not a file descriptor`},
		{name: "not stdout", env: "1", wantErr: `SHOAL_READY_FD="1": not a file descriptor`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(supervisor.EnvReadyFD, "")
			var r *os.File
			switch tc.env {
			case "pipe":
				pr, pw, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				defer pr.Close()
				// NotifyReady closes its descriptor: give it a copy.
				fd, err := syscall.Dup(int(pw.Fd()))
				pw.Close()
				if err != nil {
					t.Fatal(err)
				}
				if tc.wantErr != "" {
					defer syscall.Close(fd)
				}
				r = pr
				os.Setenv(supervisor.EnvReadyFD, strconv.Itoa(fd))
			default:
				os.Setenv(supervisor.EnvReadyFD, tc.env)
			}
			err := supervisor.NotifyReady(tc.detail)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NotifyReady = %v, want an error saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NotifyReady: %v", err)
			}
			if r == nil {
				return
			}
			if v, set := os.LookupEnv(supervisor.EnvReadyFD); set {
				t.Errorf("%s=%q after NotifyReady, want it unset", supervisor.EnvReadyFD, v)
			}
			b := make([]byte, 100)
			n, _ := r.Read(b)
			if got := string(b[:n]); got != tc.want {
				t.Errorf("pipe got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestOrphansAreKilledAndReaped: with ReapOrphans, the processes a
// killed worker's function left behind in its process group are killed,
// and reaped by the supervisor's process; a live worker's are left alone
// until Stop, which kills and reaps them too.
func TestOrphansAreKilledAndReaped(t *testing.T) {
	cmd := childCommand(modes("reaper"))(0)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("the supervisor's log:\n%s", stderr.String())
		}
	})
	// Each worker runs a function (its own group, the parent-death
	// signal) with a child of its own, and an orphan already re-parented
	// to the supervisor's process.
	type tree struct{ worker, function, kept, orphan int }
	var trees []tree
	sc := bufio.NewScanner(out)
	for len(trees) < 2 && sc.Scan() {
		var tr tree
		if _, err := fmt.Sscanf(sc.Text(), "%d %d %d %d", &tr.worker, &tr.function, &tr.kept, &tr.orphan); err != nil {
			t.Fatalf("supervisor process printed %q: %v", sc.Text(), err)
		}
		trees = append(trees, tr)
	}
	if len(trees) < 2 {
		t.Fatalf("supervisor process exited before its workers were ready")
	}
	reaped := func(pids ...int) func() bool {
		return func() bool {
			for _, pid := range pids {
				if !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
					return false
				}
			}
			return true
		}
	}
	running := func(tr tree) {
		t.Helper()
		for _, pid := range []int{tr.worker, tr.function, tr.kept, tr.orphan} {
			if gone(pid) {
				t.Errorf("pid %d of %+v is gone, though its worker runs", pid, tr)
			}
		}
	}
	if orphan := trees[0].orphan; !strings.Contains(string(must(os.ReadFile(fmt.Sprintf("/proc/%d/stat", orphan)))), fmt.Sprintf(" %d ", cmd.Process.Pid)) {
		t.Errorf("the orphan %d is not the supervisor's child: no subreaper", orphan)
	}

	dead := trees[0]
	if err := syscall.Kill(dead.worker, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, fmt.Sprintf("the processes of killed worker %+v are killed and reaped", dead), reaped(dead.function, dead.kept, dead.orphan))
	running(trees[1])

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !sc.Scan() || sc.Text() != "stopped" {
		t.Fatalf("supervisor process printed %q (%v), want stopped", sc.Text(), sc.Err())
	}
	// Still running, the supervisor's process has reaped them: init has not.
	last := trees[1]
	if !reaped(last.worker, last.function, last.kept, last.orphan)() {
		t.Errorf("after Stop, processes of %+v are left (alive or zombies)", last)
	}
	in.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("supervisor process: %v", err)
	}
	for _, pid := range []int{dead.kept, dead.orphan, last.kept, last.orphan} {
		warned := regexp.MustCompile(fmt.Sprintf(`(?m)level=WARN msg="killed an orphaned process" pid=%d command=\S+`, pid))
		if !warned.MatchString(stderr.String()) {
			t.Errorf("no WARN for the orphan %d", pid)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
