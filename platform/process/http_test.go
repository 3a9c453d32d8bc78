//go:build linux

package process_test

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/process"
)

func TestHTTPForwards(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, listen, readiness string
		env                     []string
	}{
		{name: "port, ready on connect", listen: process.ListenPort},
		{name: "port by default", listen: ""},
		{name: "unix socket, ready on connect", listen: process.ListenUnix},
		{name: "unix socket, a server that reads PORT only (Express)", listen: process.ListenUnix, env: []string{"PORT_ONLY=1"}},
		{name: "port, readiness path", listen: process.ListenPort, readiness: "/ready", env: []string{"READY_AFTER=300ms"}},
		{name: "unix socket, readiness path", listen: process.ListenUnix, readiness: "/ready", env: []string{"READY_AFTER=300ms"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := serverConfig(t, append(tc.env, "GREETING=hi")...)
			cfg.Listen, cfg.Readiness = tc.listen, tc.readiness
			began := time.Now()
			h := startHTTP(t, cfg)
			if tc.readiness != "" && time.Since(began) < 300*time.Millisecond {
				t.Errorf("ready after %v, before the readiness path answered below 500", time.Since(began))
			}

			body := []byte("payload \x00\xff")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "PUT", "/echo?a=1&b=%2F", strings.NewReader(string(body)))
			req.Header.Set("X-Test", "header value")
			req.Header.Set("Connection", "X-Test") // hop-by-hop: drops X-Test too
			req.Header.Set("Accept-Encoding", "gzip")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusCreated || rec.Header().Get("X-Echo") != "yes" || rec.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("got %d %v %q", rec.Code, rec.Header(), rec.Body.String())
			}
			var got map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"method": "PUT", "path": "/echo", "query": "a=1&b=%2F", "header": "", "body": hex.EncodeToString(body), "accept_encoding": "gzip"}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s: got %q, want %q", k, got[k], v)
				}
			}

			env := func(k string) string {
				return call(h, "GET", "/env?k="+k, nil, 5*time.Second).Body.String()
			}
			if v := env(canary); v != "" {
				t.Errorf("the runner's environment leaked: %s=%q", canary, v)
			}
			if v := env("GREETING"); v != "hi" {
				t.Errorf("GREETING=%q, want hi", v)
			}
			wantPrivate(t, env("HOME"), env("TMPDIR"), "srv", cfg.Dir)
			port, socket := env("PORT"), env("SHOAL_SOCKET")
			if tc.listen == process.ListenUnix {
				// PORT too: Node's server.listen(path), and so Express's
				// app.listen(process.env.PORT), listen on a socket.
				if port != socket || !strings.HasSuffix(socket, ".sock") {
					t.Errorf("PORT=%q SHOAL_SOCKET=%q, want the socket in both", port, socket)
				}
				fi, err := os.Stat(filepath.Dir(socket))
				if err != nil || fi.Mode().Perm() != 0o700 {
					t.Errorf("socket directory: %v, %v; want mode 0700", fi.Mode(), err)
				}
			} else if _, err := strconv.Atoi(port); err != nil || socket != "" {
				t.Errorf("PORT=%q SHOAL_SOCKET=%q, want a port only", port, socket)
			}
		})
	}
}

// TestHTTPProcesses pins down which process takes which invocation.
func TestHTTPProcesses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		perSlot  bool
		slots    int
		parallel int
		pids     int
	}{
		{name: "shared: one process takes them all", perSlot: false, slots: 3, parallel: 3, pids: 1},
		{name: "per slot: a process each", perSlot: true, slots: 3, parallel: 3, pids: 3},
		{name: "per slot: no more than the slots", perSlot: true, slots: 2, parallel: 4, pids: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := serverConfig(t)
			cfg.PerSlot, cfg.Slots = tc.perSlot, tc.slots
			h := startHTTP(t, cfg)
			pids := make([]int, tc.parallel)
			var wg sync.WaitGroup
			for i := range tc.parallel {
				wg.Go(func() {
					rec := call(h, "GET", "/pid?sleep=500ms", nil, 10*time.Second)
					pids[i], _ = strconv.Atoi(rec.Body.String())
				})
			}
			wg.Wait()
			distinct := map[int]bool{}
			for _, pid := range pids {
				if pid == 0 {
					t.Fatalf("an invocation failed: pids %v", pids)
				}
				distinct[pid] = true
			}
			if len(distinct) != tc.pids {
				t.Errorf("invocations ran on %d processes %v, want %d", len(distinct), pids, tc.pids)
			}
		})
	}
}

// An invocation waits for a process; when none is free before its
// deadline, it gets 503 function_unavailable.
func TestHTTPWaitsForAProcess(t *testing.T) {
	t.Parallel()
	cfg := serverConfig(t)
	cfg.PerSlot, cfg.Slots = true, 1
	h := startHTTP(t, cfg)
	slow := make(chan int)
	go func() {
		rec := call(h, "GET", "/pid?sleep=1s", nil, 10*time.Second)
		pid, _ := strconv.Atoi(rec.Body.String())
		slow <- pid
	}()
	time.Sleep(200 * time.Millisecond)
	rec := call(h, "GET", "/pid", nil, 200*time.Millisecond)
	wantError(t, rec, http.StatusServiceUnavailable, invocation.CodeFunctionUnavailable)
	// This one waits for the slow one to end, on the same process.
	rec = call(h, "GET", "/pid", nil, 5*time.Second)
	if pid := pidOf(t, rec); pid != <-slow {
		t.Errorf("pid %d: a second process was started beyond the one slot", pid)
	}
}

// A process that crashes fails the invocations it had (502), is started
// again after the back-off, and serves the next ones.
func TestHTTPRestartsACrashedProcess(t *testing.T) {
	t.Parallel()
	cfg := serverConfig(t)
	log, logs := newLogger(t)
	cfg.Logger = log
	h := startHTTP(t, cfg)
	first := pidOf(t, call(h, "GET", "/pid", nil, 5*time.Second))

	msg := wantError(t, call(h, "GET", "/exit", nil, 5*time.Second), http.StatusBadGateway, invocation.CodeFunctionCrashed)
	if !strings.Contains(msg, "exit status 7") || !strings.Contains(msg, "crashing on purpose") {
		t.Errorf("message %q: want the exit status and the stderr tail", msg)
	}
	second := pidOf(t, call(h, "GET", "/pid", nil, 5*time.Second)) // waits for the restart
	if second == first {
		t.Fatalf("served by pid %d again", first)
	}
	logs.waitLog(t, "process exited; starting it again", "exit=\"exit status 7", "backoff=100ms")
	if alive(first) {
		t.Errorf("crashed process %d is alive", first)
	}

	// A second crash soon after waits twice as long.
	wantError(t, call(h, "GET", "/exit", nil, 5*time.Second), http.StatusBadGateway, invocation.CodeFunctionCrashed)
	logs.waitLog(t, "process exited; starting it again", "backoff=200ms")
	third := pidOf(t, call(h, "GET", "/pid", nil, 5*time.Second))
	if third == second {
		t.Fatalf("served by pid %d again", second)
	}
}

// errorRecorder is a ResponseRecorder that takes a handler's failure
// apart, as the runner's writer does (invocation.ErrorWriter).
type errorRecorder struct {
	*httptest.ResponseRecorder
	failed *invocation.Error
}

func (r *errorRecorder) WriteError(e *invocation.Error) {
	if r.failed == nil {
		r.failed = e
	}
}

// A process that dies in the middle of its answer's body fails the
// invocation (502 function_crashed), rather than answering a truncated
// 200.
func TestHTTPTruncatedAnswer(t *testing.T) {
	t.Parallel()
	h := startHTTP(t, serverConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec := &errorRecorder{ResponseRecorder: httptest.NewRecorder()}
	h.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, "GET", "/truncate", nil))
	if rec.failed == nil {
		t.Fatalf("got %d %q and no failure, want 502 function_crashed", rec.Code, rec.Body.String())
	}
	if rec.failed.Status != http.StatusBadGateway || rec.failed.Code != invocation.CodeFunctionCrashed ||
		!strings.Contains(rec.failed.Message, "exit status 9") {
		t.Errorf("failure %v, want 502 function_crashed with the exit status", rec.failed)
	}
	pidOf(t, call(h, "GET", "/pid", nil, 5*time.Second)) // started again
}

func TestStartHTTPFails(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	script := filepath.Join(dir, "run.sh")
	if err := os.WriteFile(script, []byte("#!/bin/bash\necho 'cannot find module express' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notexec"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		command []string
		timeout time.Duration
		is      error
		want    []string
		// stderr is what the process printed: in the error, but not in
		// its summary; "" when the error is no *StartError.
		stderr string
	}{
		{name: "exits at once", command: []string{"./run.sh"}, want: []string{"exited before it was ready", "exit status 3", "cannot find module express"},
			stderr: "cannot find module express"},
		{name: "never ready", command: []string{"bash", "-c", "echo starting >&2; exec sleep 100"}, timeout: 300 * time.Millisecond,
			want: []string{"not ready within 300ms", "connection refused", "signal: killed: starting"}, stderr: "starting"},
		{name: "runtime not in PATH", command: []string{"no-such-runtime-3", "app.js"}, is: process.ErrRuntimeMissing,
			want: []string{"runtime missing: no-such-runtime-3 not found in PATH"}},
		{name: "relative command missing", command: []string{"./app"}, is: process.ErrRuntimeMissing, want: []string{"./app: no such file"}},
		{name: "relative command not executable", command: []string{"./notexec"}, is: process.ErrRuntimeMissing, want: []string{"is not executable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, err := process.StartHTTP(context.Background(), process.HTTPConfig{
				Config:       process.Config{Name: "broken", Command: tc.command, Dir: dir},
				StartTimeout: cmpOr(tc.timeout, 5*time.Second),
			})
			if err == nil {
				_ = h.Close(context.Background())
				t.Fatal("started")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			var serr *process.StartError
			if tc.stderr == "" {
				if errors.As(err, &serr) {
					t.Errorf("error %q is a *StartError", err)
				}
				return
			}
			if !errors.As(err, &serr) {
				t.Fatalf("error %q (%T) is no *StartError", err, err)
			}
			if sum := serr.Summary(); strings.Contains(sum, tc.stderr) || !strings.Contains(sum, tc.want[0]) || serr.Stderr != tc.stderr {
				t.Errorf("summary %q, stderr %q: want the failure without the stderr %q", sum, serr.Stderr, tc.stderr)
			}
		})
	}
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// A process that says its port was taken (another program got it between
// the pick and the listen) is started again on another port.
func TestHTTPRetriesATakenPort(t *testing.T) {
	t.Parallel()
	cfg := serverConfig(t, "FAIL_FIRST="+filepath.Join(t.TempDir(), "failed"))
	h := startHTTP(t, cfg)
	pidOf(t, call(h, "GET", "/pid", nil, 5*time.Second))
}

// The process is ready once it listens itself: a server out of its
// process group on its port (another program that took the port between
// the pick and the listen) does not make it ready, and gets none of its
// invocations.
func TestHTTPPortHeldByAnotherProcess(t *testing.T) {
	t.Parallel()
	cfg := serverConfig(t)
	cfg.Env = []string{envMode + "=setsid"}
	cfg.StartTimeout = time.Second
	h, err := process.StartHTTP(context.Background(), cfg)
	if err == nil {
		_ = h.Close(context.Background())
		t.Fatal("ready, with another process group's server on its port")
	}
	if !regexp.MustCompile(`not ready within 1s \(port \d+ is held by another process`).MatchString(err.Error()) {
		t.Errorf("error %q: want the port held by another process", err)
	}
	m := regexp.MustCompile(`server (\d+)`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error %q: no pid of the other server", err)
	}
	pid, _ := strconv.Atoi(m[1])
	waitGone(t, 5*time.Second, pid) // it died with its parent
}

// Close stops the process group (the function's own children too), with
// SIGTERM, and SIGKILL for a process that ignores it once Close's context
// ends.
func TestHTTPCloseStopsTheGroup(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		env      []string
		grace    time.Duration
		wantKill bool
	}{
		{name: "SIGTERM", grace: 5 * time.Second},
		{name: "SIGKILL after the grace", env: []string{"IGNORE_TERM=1"}, grace: 300 * time.Millisecond, wantKill: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, err := process.StartHTTP(context.Background(), serverConfig(t, tc.env...))
			if err != nil {
				t.Fatal(err)
			}
			pid := pidOf(t, call(h, "GET", "/pid", nil, 5*time.Second))
			child := pidOf(t, call(h, "GET", "/spawn", nil, 5*time.Second))
			ctx, cancel := context.WithTimeout(context.Background(), tc.grace)
			defer cancel()
			err = h.Close(ctx)
			if tc.wantKill != errors.Is(err, process.ErrClosed) {
				t.Errorf("Close: %v", err)
			}
			waitGone(t, 2*time.Second, pid, child)
			wantError(t, call(h, "GET", "/pid", nil, time.Second), http.StatusServiceUnavailable, invocation.CodeFunctionUnavailable)
		})
	}
}

// startParent runs a runner (this binary as "parent") with tmp as its
// TMPDIR, and returns it and the pid of its function's process.
func startParent(t *testing.T, tmp string) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command(testBinary(t)[0])
	cmd.Env = append(os.Environ(), envMode+"=parent", "TMPDIR="+tmp)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	child, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("parent said %q: %v", line, err)
	}
	return cmd, child
}

// privateDirs lists the private directories in tmp of the runner pid.
func privateDirs(t *testing.T, tmp string, pid int) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(tmp, fmt.Sprintf("shoal-%d-orphan-*", pid)))
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// A function's process dies with the runner, even a runner killed with
// SIGKILL, which can clean nothing up; the next runner removes the
// private directory it left.
func TestProcessNeverOrphaned(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	cmd, child := startParent(t, tmp)
	// Threads of the parent keep ending meanwhile: the child survives
	// them, and dies with the parent only.
	time.Sleep(300 * time.Millisecond)
	if !alive(child) {
		t.Fatal("the function's process died with a thread of its parent")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, 5*time.Second, child)
	_ = cmd.Wait()

	left := privateDirs(t, tmp, cmd.Process.Pid)
	if len(left) != 1 {
		t.Fatalf("the killed runner left %q, want its private directory", left)
	}
	next, _ := startParent(t, tmp)
	if _, err := os.Stat(left[0]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the next runner's first start left %s: %v", left[0], err)
	}
	if dirs := privateDirs(t, tmp, next.Process.Pid); len(dirs) != 1 {
		t.Errorf("the next runner's private directories: %q, want one", dirs)
	}
}

// Threads ending in the runner do not take its functions' processes
// along (the parent-death signal follows the forking thread). In
// practice an unlocked reaper would pass this too, as it sits in waitid
// on the thread that forked; the lock makes that a guarantee.
func TestProcessOutlivesEndingThreads(t *testing.T) {
	t.Parallel()
	h := startHTTP(t, serverConfig(t))
	pid := pidOf(t, call(h, "GET", "/pid", nil, 5*time.Second))
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { runtime.LockOSThread() }) // ends its thread
	}
	wg.Wait()
	time.Sleep(100 * time.Millisecond)
	if got := pidOf(t, call(h, "GET", "/pid", nil, 5*time.Second)); got != pid {
		t.Fatalf("served by %d, want %d: the process died with a thread", got, pid)
	}
}

// A per-slot process that does not answer within its invocation's
// deadline is killed, as its invocation's alone, and started again; a
// shared one serves on, since other invocations use it.
func TestHTTPTimeoutKillsPerSlotProcess(t *testing.T) {
	t.Parallel()
	for _, perSlot := range []bool{true, false} {
		t.Run(fmt.Sprintf("per-slot=%v", perSlot), func(t *testing.T) {
			t.Parallel()
			cfg := serverConfig(t)
			cfg.PerSlot, cfg.Slots = perSlot, 1
			h := startHTTP(t, cfg)
			before, _ := strconv.Atoi(call(h, "GET", "/pid", nil, 10*time.Second).Body.String())
			if rec := call(h, "GET", "/pid?sleep=30s", nil, 300*time.Millisecond); rec.Code != http.StatusGatewayTimeout {
				t.Fatalf("a stuck invocation: %d %s, want 504", rec.Code, rec.Body)
			}
			after, _ := strconv.Atoi(call(h, "GET", "/pid", nil, 10*time.Second).Body.String())
			switch {
			case before == 0 || after == 0:
				t.Fatalf("pids before %d, after %d", before, after)
			case perSlot && (after == before || alive(before)):
				t.Errorf("per-slot: the stuck process %d still serves or runs (now %d)", before, after)
			case !perSlot && after != before:
				t.Errorf("shared: the process was replaced (%d, then %d)", before, after)
			}
		})
	}
}
