package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/invocation"
)

// The process-clustering tests run `shoal up` with worker processes and
// act on them with real signals.

const clusterManifest = `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true, concurrency: 1000}
  crash: {handler: {builtin: crash}, public: true}
  sleep: {handler: {builtin: sleep}, public: true, timeout: 30s, concurrency: 1000}
`

// cluster is a running `shoal up` with worker processes.
type cluster struct {
	t    *testing.T
	p    *proc
	gw   string
	data string
	dir  string
}

func startCluster(t *testing.T, workers int, args ...string) *cluster {
	t.Helper()
	dir := t.TempDir()
	fn := filepath.Join(dir, "fn.yaml")
	if err := os.WriteFile(fn, []byte(clusterManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	p := startShoalEnv(t, []string{testFunctions + "=1"}, append([]string{"up", "-f", fn, "--http", "127.0.0.1:0",
		"--nats", "127.0.0.1:0", "--data", data, "--workers", fmt.Sprint(workers), "--nats-context", ""}, args...)...)
	p.waitLog(`msg="runners serving"`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	return &cluster{t: t, p: p, gw: gw, data: data, dir: dir}
}

// ps returns the workers as GET /system/workers (through shoal ps) shows
// them.
func (c *cluster) ps() []WorkerStatus {
	c.t.Helper()
	out, errOut, code := runShoal(c.t, c.dir, "ps", "--json", "--gateway", c.gw, "--data", c.data)
	if code != 0 {
		c.t.Fatalf("shoal ps = %d %s", code, errOut)
	}
	var ws []WorkerStatus
	if err := json.Unmarshal([]byte(out), &ws); err != nil {
		c.t.Fatalf("shoal ps --json: %v: %s", err, out)
	}
	return ws
}

// waitWorkers polls ps, every 50 ms for at most limit, until cond holds.
func (c *cluster) waitWorkers(limit time.Duration, cond func([]WorkerStatus) bool) []WorkerStatus {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ws := c.ps()
		if cond(ws) {
			return ws
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("workers not as expected within %s: %+v", limit, ws)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func allReady(n int) func([]WorkerStatus) bool {
	return func(ws []WorkerStatus) bool {
		ready := 0
		for _, w := range ws {
			if w.State == "ready" {
				ready++
			}
		}
		return ready == n
	}
}

func pids(ws []WorkerStatus) []int {
	var out []int
	for _, w := range ws {
		out = append(out, w.PID)
	}
	return out
}

// outcome is one request's result under load.
type outcome struct {
	status int
	code   string
	err    error
}

// load sends GET path from callers goroutines until stop is closed, at
// most max requests each, and returns every outcome.
func (c *cluster) load(path string, callers, max int, stop <-chan struct{}) func() []outcome {
	client := &http.Client{Timeout: 20 * time.Second}
	var mu sync.Mutex
	var outs []outcome
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range max { // bounded
				select {
				case <-stop:
					return
				default:
				}
				o := outcome{}
				resp, err := client.Get(c.gw + path)
				if err != nil {
					o.err = err
				} else {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					o.status = resp.StatusCode
					if e, ok := invocation.ParseError(resp.StatusCode, body); ok {
						o.code = string(e.Code)
					}
				}
				mu.Lock()
				outs = append(outs, o)
				mu.Unlock()
			}
		})
	}
	return func() []outcome {
		wg.Wait()
		return outs
	}
}

// TestWorkerKilledUnderLoad: a worker SIGKILLed while requests flow is
// re-forked within 2 s; the only failures are the invocations that were
// running on it, answered at once with 502 runner_lost; afterwards
// nothing fails.
func TestWorkerKilledUnderLoad(t *testing.T) {
	c := startCluster(t, 2)
	before := c.waitWorkers(10*time.Second, allReady(2))
	stop := make(chan struct{})
	const callers = 8
	wait := c.load("/function/sleep?d=20ms", callers, 2000, stop)
	time.Sleep(300 * time.Millisecond)
	victim := before[0]
	killed := time.Now()
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	after := c.waitWorkers(10*time.Second, func(ws []WorkerStatus) bool {
		return allReady(2)(ws) && !slices.Contains(pids(ws), victim.PID)
	})
	// Re-forked within 2 s: the new process started then (it serves a
	// little later, once connected).
	for _, w := range after {
		if w.Worker == victim.Worker {
			forked := w.Started.Sub(killed)
			t.Logf("worker %d re-forked %s after the kill: pids %v -> %v", w.Worker, forked.Round(time.Millisecond), pids(before), pids(after))
			if forked > 2*time.Second {
				t.Errorf("worker %d re-forked %s after the kill, want within 2s", w.Worker, forked)
			}
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	outs := wait()

	var ok, lost int
	for _, o := range outs {
		switch {
		case o.err == nil && o.status == 200:
			ok++
		case o.err == nil && o.status == 502 && o.code == string(invocation.CodeRunnerLost):
			lost++
		default:
			t.Errorf("unexpected outcome %+v", o)
		}
	}
	if lost > callers {
		t.Errorf("%d invocations lost, more than the %d that can be in flight", lost, callers)
	}
	t.Logf("%d requests: %d ok, %d runner_lost", len(outs), ok, lost)
	for _, w := range after {
		if w.Worker == victim.Worker && w.Restarts != 1 {
			t.Errorf("worker %d restarts = %d, want 1", w.Worker, w.Restarts)
		}
	}
	log := c.p.output()
	if !strings.Contains(log, "signal: killed") {
		t.Error("the worker's exit (signal: killed) was not logged")
	}
	// The workers' own output reaches up's log, marked with the worker.
	if !regexp.MustCompile(`(?m)^worker=\d+ pid=\d+ .*msg="runner serving"`).MatchString(log) {
		t.Error("no worker's own log line reached up's log")
	}
	for _, w := range after {
		if w.Worker != victim.Worker && w.Served == 0 {
			t.Errorf("worker %d served nothing according to ps: %+v", w.Worker, w)
		}
	}

	// Afterwards nothing fails.
	for _, o := range c.load("/function/ping", 4, 50, make(chan struct{}))() {
		if o.err != nil || o.status != 200 {
			t.Errorf("after the re-fork: %+v", o)
		}
	}
}

// TestCrashLoop: a function that ends its worker with os.Exit(3) gets the
// worker re-forked, until the crash-loop guard stops re-forking that
// slot; the other worker keeps serving.
func TestCrashLoop(t *testing.T) {
	c := startCluster(t, 2, "--crash-loop-exits", "3", "--crash-loop-window", "1m")
	c.waitWorkers(10*time.Second, allReady(2))
	client := &http.Client{Timeout: 20 * time.Second}
	looped := false
	for range 30 { // bounded
		resp, err := client.Get(c.gw + "/function/crash")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// Never a 200 with an empty body: the caller learns at once that
		// the worker running its invocation is gone.
		if e, ok := invocation.ParseError(resp.StatusCode, body); resp.StatusCode != 502 || !ok || e.Code != invocation.CodeRunnerLost {
			t.Fatalf("crash answered %d %s, want 502 runner_lost", resp.StatusCode, body)
		}
		ws := c.ps()
		if slices.ContainsFunc(ws, func(w WorkerStatus) bool { return w.State == "crashloop" }) {
			looped = true
			break
		}
		// Let the supervisor re-fork before the next crash.
		c.waitWorkers(10*time.Second, func(ws []WorkerStatus) bool {
			return !slices.ContainsFunc(ws, func(w WorkerStatus) bool { return w.State == "starting" || w.State == "backoff" })
		})
	}
	if !looped {
		t.Fatal("the crash-loop guard never tripped")
	}
	out := c.p.output()
	if !strings.Contains(out, "exit status 3") || !strings.Contains(out, "CRASH LOOP") {
		t.Errorf("log lacks the exits or the crash-loop error:\n%s", out)
	}
	// Other functions keep serving, on the worker left.
	for _, o := range c.load("/function/ping", 4, 25, make(chan struct{}))() {
		if o.err != nil || o.status != 200 {
			t.Errorf("ping with one worker in a crash loop: %+v", o)
		}
	}
}

// TestRollingRestart: shoal restart (SIGHUP) during a bounded load
// replaces every worker and fails no request.
func TestRollingRestart(t *testing.T) {
	c := startCluster(t, 2)
	before := c.waitWorkers(10*time.Second, allReady(2))
	stop := make(chan struct{})
	wait := c.load("/function/sleep?d=10ms", 8, 5000, stop)
	time.Sleep(200 * time.Millisecond)
	if out, errOut, code := runShoal(t, c.dir, "restart", "--data", c.data); code != 0 {
		t.Fatalf("shoal restart = %d %s %s", code, out, errOut)
	}
	c.p.waitLog(`msg="rolling restart done"`)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	outs := wait()
	failed := 0
	for _, o := range outs {
		if o.err != nil || o.status != 200 {
			failed++
			if failed <= 5 {
				t.Errorf("failed during the rolling restart: %+v", o)
			}
		}
	}
	after := c.waitWorkers(5*time.Second, allReady(2))
	for _, pid := range pids(after) {
		if slices.Contains(pids(before), pid) {
			t.Errorf("pid %d survived the rolling restart (%v -> %v)", pid, pids(before), pids(after))
		}
	}
	t.Logf("%d requests during the restart, %d failed; pids %v -> %v", len(outs), failed, pids(before), pids(after))
}

// TestShutdownDrainsWorkers: SIGTERM lets in-flight slow requests finish,
// exits 0 and leaves no worker process behind.
func TestShutdownDrainsWorkers(t *testing.T) {
	c := startCluster(t, 2)
	ws := c.waitWorkers(10*time.Second, allReady(2))
	stop := make(chan struct{})
	wait := c.load("/function/sleep?d=2500ms", 4, 1, stop)
	time.Sleep(time.Second) // the four are running
	if err := c.p.stop(syscall.SIGTERM); err != nil {
		t.Errorf("shoal up exited with %v on SIGTERM, want 0", err)
	}
	close(stop)
	for _, o := range wait() {
		if o.err != nil || o.status != 200 {
			t.Errorf("in-flight request across shutdown: %+v", o)
		}
	}
	for _, pid := range pids(ws) {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("worker pid %d still exists after shoal up exited (%v)", pid, err)
		}
	}
}

// TestRestartIgnoresStalePIDFile: a pid file left by an up that died is
// stale; shoal restart says so and signals nobody, even when its pid now
// belongs to another process.
func TestRestartIgnoresStalePIDFile(t *testing.T) {
	data := t.TempDir()
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Skipf("no sleep command: %v", err)
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	if err := os.WriteFile(filepath.Join(data, pidFileName), []byte(fmt.Sprintln(other.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runShoal(t, t.TempDir(), "restart", "--data", data)
	if code != 1 || !strings.Contains(errOut, "stale") {
		t.Errorf("shoal restart with a stale pid file = %d %s", code, errOut)
	}
	if err := other.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the process named by the stale pid file was hit: %v", err)
	}
}

// TestSIGHUPWhileStarting: a rolling restart asked for while up starts
// its workers waits until up serves; it does not end the process.
func TestSIGHUPWhileStarting(t *testing.T) {
	dir := t.TempDir()
	fn := filepath.Join(dir, "fn.yaml")
	if err := os.WriteFile(fn, []byte(clusterManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	p := startShoalEnv(t, []string{testFunctions + "=1"}, "up", "-f", fn, "--http", "127.0.0.1:0",
		"--nats", "127.0.0.1:0", "--data", data, "--workers", "2", "--nats-context", "")
	// As soon as the pid file names up, it asks for a restart.
	pidPath := filepath.Join(data, pidFileName)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if pid, err := readPID(pidPath); err == nil && pid == p.cmd.Process.Pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no pid file within 30s")
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLog(`msg="rolling restart done"`)
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Errorf("shoal up exited with %v, want 0", err)
	}
}
