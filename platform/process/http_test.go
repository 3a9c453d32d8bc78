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
			if v := env("HOME"); v != cfg.Dir {
				t.Errorf("HOME=%q, want %q", v, cfg.Dir)
			}
			if v := env("TMPDIR"); !strings.Contains(v, "shoal-srv-") {
				t.Errorf("TMPDIR=%q, want the function's private directory", v)
			}
			port, socket := env("PORT"), env("SHOAL_SOCKET")
			if tc.listen == process.ListenUnix {
				if port != "" || !strings.HasSuffix(socket, ".sock") {
					t.Errorf("PORT=%q SHOAL_SOCKET=%q, want a socket only", port, socket)
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
	}{
		{name: "exits at once", command: []string{"./run.sh"}, want: []string{"exited before it was ready", "exit status 3", "cannot find module express"}},
		{name: "never ready", command: []string{"bash", "-c", "echo starting >&2; exec sleep 100"}, timeout: 300 * time.Millisecond,
			want: []string{"not ready within 300ms", "connection refused", "signal: killed: starting"}},
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

// A function's process dies with the runner, even a runner killed with
// SIGKILL, which can clean nothing up.
func TestProcessNeverOrphaned(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(testBinary(t)[0])
	cmd.Env = append(os.Environ(), envMode+"=parent", "TMPDIR="+t.TempDir()) // its private directory stays behind
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	child, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("parent said %q: %v", line, err)
	}
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
