package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/invocation"
)

// Where an http function's process is told to listen, [HTTPConfig].Listen.
const (
	// ListenPort passes a free loopback TCP port in env PORT. The process
	// must bind it on 127.0.0.1 itself: bound on every interface, it is
	// reachable from the network, around the gateway. Prefer ListenUnix.
	ListenPort = "port"
	// ListenUnix passes the path of a Unix socket in env SHOAL_SOCKET, and
	// in PORT too: Node's server.listen(path), and so an unchanged
	// Express app's app.listen(process.env.PORT), listens on it. The
	// socket is in a directory only the runner's user can enter.
	ListenUnix = "unix"
)

// The environment variables that tell an http function's process where to
// listen.
const (
	EnvPort   = "PORT"
	EnvSocket = "SHOAL_SOCKET"
)

// HTTPConfig configures StartHTTP.
type HTTPConfig struct {
	Config
	// Listen is ListenPort ("" too) or ListenUnix.
	Listen string
	// Readiness is the path a process is ready on: it is ready once a GET
	// of it answers with a status below 500. "" means ready once it
	// accepts connections.
	Readiness string
	// PerSlot gives each invocation a process of its own: a process
	// takes one invocation at a time, and up to Slots processes run.
	// False means one process takes every invocation.
	PerSlot bool
	// Slots is the function's concurrency: the most processes PerSlot
	// starts; 0 means 1.
	Slots int
	// StartTimeout is how long a process may take to be ready; 0 means
	// 30s.
	StartTimeout time.Duration
}

// Restarts of a process that exited on its own: the first waits
// initialBackoff, each next one twice as long up to maxBackoff, and once
// a process stayed up stableUptime the next waits initialBackoff again.
const (
	initialBackoff = 100 * time.Millisecond
	maxBackoff     = 30 * time.Second
	stableUptime   = 10 * time.Second
)

// Readiness polling: the interval doubles from the first to the last,
// and each probe may take probeTimeout.
const (
	firstPoll    = 10 * time.Millisecond
	lastPoll     = 250 * time.Millisecond
	probeTimeout = time.Second
)

// portRetries is how many times a start is tried again, with another
// port, when the process says its port was taken meanwhile.
const portRetries = 3

// maxSocketPath is the longest path a Unix socket address holds
// (sun_path, with its terminating NUL).
const maxSocketPath = 107

// StartError is the error of a process that did not become ready. Its
// Error has the tail of the process's stderr, which may hold what the
// function prints of its secrets as it starts: report Summary where
// others than the function's owner read (a runner's service metadata).
type StartError struct {
	Function string
	Pid      int
	// Reason says what happened, without the process's output: "exited
	// before it was ready: exit status 3".
	Reason string
	// Stderr is the tail of the process's stderr (at most 2 KiB).
	Stderr string
	// Err is the cause, if any: the context's, for a start that was
	// interrupted.
	Err error
}

// Summary describes the failure without the process's output.
func (e *StartError) Summary() string {
	return fmt.Sprintf("function %q: its process (pid %d) %s", e.Function, e.Pid, e.Reason)
}

// Error is Summary followed by the tail of the process's stderr.
func (e *StartError) Error() string {
	if e.Stderr == "" {
		return e.Summary()
	}
	return e.Summary() + ": " + e.Stderr
}

func (e *StartError) Unwrap() error { return e.Err }

// errStartTimeout is the cause of a start that took StartTimeout.
var errStartTimeout = errors.New("start timeout")

// HTTP serves a function by forwarding each invocation to the function's
// own HTTP server processes. It is safe for concurrent use.
type HTTP struct {
	cfg HTTPConfig
	sp  *spawner
	log *slog.Logger

	// ctx ends when Close is called; it bounds the starts of processes.
	ctx    context.Context
	cancel context.CancelFunc
	// kill is closed when Close's context ends: stopping processes get
	// SIGKILL.
	kill     chan struct{}
	killOnce sync.Once
	// loops counts the instances' goroutines.
	loops     sync.WaitGroup
	closeOnce sync.Once

	mu        sync.Mutex
	instances []*instance
	waiting   int           // invocations waiting for a process
	changed   chan struct{} // closed, and replaced, when a process becomes ready or free
	closed    bool
}

// instance is a slot that runs one process at a time, and runs it again
// when it exits.
type instance struct {
	h      *HTTP
	n      int
	socket string // ListenUnix: the socket's path
	rt     *http.Transport

	// Guarded by h.mu.
	proc     *proc  // the ready process; nil if none
	host     string // where it listens, the host of forwarded URLs
	busy     int    // invocations in flight
	lastExit string // how its last process ended, or failed to start
}

// StartHTTP starts the function's first process and waits until it is
// ready. It fails when the command cannot be found (wrapping
// [ErrRuntimeMissing]), or the process exits or is not ready within
// StartTimeout, or ctx ends first. An error that names a started
// process is a [*StartError], which holds the tail of its stderr.
func StartHTTP(ctx context.Context, cfg HTTPConfig) (*HTTP, error) {
	switch cfg.Listen {
	case "":
		cfg.Listen = ListenPort
	case ListenPort, ListenUnix:
	default:
		return nil, fmt.Errorf("function %q: listen %q: want %q or %q", cfg.Name, cfg.Listen, ListenPort, ListenUnix)
	}
	if cfg.Readiness != "" && !strings.HasPrefix(cfg.Readiness, "/") {
		return nil, fmt.Errorf("function %q: readiness path %q does not start with /", cfg.Name, cfg.Readiness)
	}
	cfg.Slots = max(cfg.Slots, 1)
	if !cfg.PerSlot {
		cfg.Slots = 1
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	sp, err := newSpawner(cfg.Config)
	if err != nil {
		return nil, err
	}
	h := &HTTP{cfg: cfg, sp: sp, log: sp.log, kill: make(chan struct{}), changed: make(chan struct{})}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	if cfg.Listen == ListenUnix {
		if p := filepath.Join(sp.dir, strconv.Itoa(cfg.Slots)+".sock"); len(p) > maxSocketPath {
			sp.cleanup()
			return nil, fmt.Errorf("function %q: socket path %s is longer than %d bytes: set TMPDIR to a shorter directory", cfg.Name, p, maxSocketPath)
		}
	}
	inst := h.newInstance(1)
	p, host, err := inst.start(ctx)
	if err != nil {
		h.cancel()
		sp.wg.Wait()
		sp.cleanup()
		return nil, err
	}
	h.instances = append(h.instances, inst)
	h.loops.Add(1)
	go inst.run(p, host)
	return h, nil
}

func (h *HTTP) newInstance(n int) *instance {
	inst := &instance{h: h, n: n}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	dial := dialer.DialContext
	if h.cfg.Listen == ListenUnix {
		inst.socket = filepath.Join(h.sp.dir, strconv.Itoa(n)+".sock")
		dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", inst.socket)
		}
	}
	inst.rt = &http.Transport{
		Proxy:               nil, // never the runner's proxy settings
		DialContext:         dial,
		DisableCompression:  true, // pass the function's encoding through untouched
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	return inst
}

// ServeHTTP forwards the invocation to a ready process, waiting for one
// within r's context. It answers 503 function_unavailable when none is
// ready before r's context ends, and 502 function_crashed when the
// process exits, or breaks the connection, before it answered or in the
// middle of its answer's body: then w should be an
// [invocation.ErrorWriter] (the runner's is), which replaces what was
// written. Under an http.Server, ReverseProxy aborts the connection
// (panic [http.ErrAbortHandler]); any other w gets the error after what
// was written. An
// invocation that could not connect to a process that has just exited
// (so it never reached it) waits for the next one.
func (h *HTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	out := r
	var body *unreadBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &unreadBody{ReadCloser: r.Body}
		out = r.WithContext(ctx)
		out.Body = body
	}
	for attempt := 1; ; attempt++ {
		inst, p, host, ierr := h.acquire(ctx)
		if ierr != nil {
			ierr.WriteHTTP(w)
			return
		}
		failed, broken := h.forward(w, out, inst, p, host)
		if broken != nil {
			// The answer's status and part of its body were written:
			// the runner's writer (an invocation.ErrorWriter) replaces
			// them with the error.
			h.forwardError(ctx, p, broken).WriteHTTP(w)
			return
		}
		if failed == nil {
			return
		}
		var op *net.OpError
		if errors.As(failed, &op) && op.Op == "dial" && (body == nil || !body.read.Load()) && ctx.Err() == nil &&
			attempt < maxAttempts && waitChan(p.done, time.Second) {
			continue
		}
		h.forwardError(ctx, p, failed).WriteHTTP(w)
		return
	}
}

// forward sends the invocation to the process p of inst, which it then
// releases. failed is the error of a forwarding that wrote nothing to w;
// broken that of an answer whose body could not be read whole (the
// process died, or broke the connection, in the middle): what w got of
// it is truncated.
func (h *HTTP) forward(w http.ResponseWriter, out *http.Request, inst *instance, p *proc, host string) (failed, broken error) {
	ctx := out.Context()
	// Deferred: under an http.Server, ReverseProxy panics
	// (http.ErrAbortHandler) when it cannot copy the body.
	defer func() {
		if h.cfg.PerSlot && errors.Is(ctx.Err(), context.DeadlineExceeded) && !p.exited() {
			// The process took the invocation and did not answer in
			// time: it is this invocation's alone, so its timeout ends
			// it, as an exec function's does, rather than leave a stuck
			// process in the pool. It is started again.
			h.log.Warn("killing a process at its invocation's timeout", "pid", p.pid)
			h.mu.Lock()
			if inst.proc == p {
				inst.proc = nil // no other invocation is sent to it
			}
			h.mu.Unlock()
			p.signal(syscall.SIGKILL)
		}
		h.release(inst)
	}()
	target := &url.URL{Scheme: "http", Host: host}
	var body *answerBody
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			// Rewrite drops these; the runner's request carries the
			// gateway's.
			for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = v
				}
			}
		},
		// Without an http.Server in the request's context (the
		// runner's case), ReverseProxy only logs an error that cuts the
		// body short, and returns: the answer would be a truncated 200.
		ModifyResponse: func(res *http.Response) error {
			body = &answerBody{ReadCloser: res.Body}
			res.Body = body
			return nil
		},
		Transport:     inst.rt,
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
		// Called before anything is written to w.
		ErrorHandler: func(_ http.ResponseWriter, _ *http.Request, err error) { failed = err },
	}
	rp.ServeHTTP(w, out)
	if failed == nil && body != nil {
		broken = body.err
	}
	return failed, broken
}

// answerBody keeps the error that ended the read of an answer's body
// early: anything but io.EOF.
type answerBody struct {
	io.ReadCloser
	err error
}

func (b *answerBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// maxAttempts bounds the processes an invocation tries to connect to.
const maxAttempts = 3

// unreadBody tells whether a request body has been read from. Closing it
// does nothing: the body is its server's to close, and stays readable
// for another attempt.
type unreadBody struct {
	io.ReadCloser
	read atomic.Bool
}

func (b *unreadBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	return b.ReadCloser.Read(p)
}

func (b *unreadBody) Close() error { return nil }

// forwardError is the answer to an invocation whose forwarding failed.
func (h *HTTP) forwardError(ctx context.Context, p *proc, err error) *invocation.Error {
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return invocation.Errorf(http.StatusGatewayTimeout, invocation.CodeTimeout, "function %q did not answer within the invocation's deadline", h.cfg.Name)
		}
		return invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable, "function %q: the invocation was cancelled", h.cfg.Name)
	}
	// A process that died resets its connections at once; its reaper
	// may be a moment behind.
	select {
	case <-p.done:
		return invocation.Errorf(http.StatusBadGateway, invocation.CodeFunctionCrashed, "function %q: its process (pid %d) exited before it answered: %s", h.cfg.Name, p.pid, p.exit())
	case <-time.After(time.Second):
		return invocation.Errorf(http.StatusBadGateway, invocation.CodeFunctionCrashed, "function %q: its process (pid %d) broke the connection before it answered: %v", h.cfg.Name, p.pid, err)
	}
}

// acquire returns a ready process to forward an invocation to, waiting
// for one until ctx ends. PerSlot starts another process when every one
// is taken, or about to be, and Slots allows one more.
func (h *HTTP) acquire(ctx context.Context) (*instance, *proc, string, *invocation.Error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.waiting++
	defer func() { h.waiting-- }()
	for {
		if h.closed {
			return nil, nil, "", invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeFunctionUnavailable, "function %q is shutting down on this runner", h.cfg.Name)
		}
		spare := 0
		for _, inst := range h.instances {
			if inst.proc != nil && !inst.proc.exited() && (inst.busy == 0 || !h.cfg.PerSlot) {
				inst.busy++
				return inst, inst.proc, inst.host, nil
			}
			if inst.busy == 0 {
				spare++ // starting: it will be free
			}
		}
		if h.cfg.PerSlot && len(h.instances) < h.cfg.Slots && h.waiting > spare {
			inst := h.newInstance(len(h.instances) + 1)
			h.instances = append(h.instances, inst)
			h.loops.Add(1)
			go inst.run(nil, "")
		}
		changed := h.changed
		h.mu.Unlock()
		select {
		case <-changed:
			h.mu.Lock()
		case <-ctx.Done():
			h.mu.Lock()
			return nil, nil, "", invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeFunctionUnavailable, "function %q had no process ready to take the invocation before its deadline%s", h.cfg.Name, h.lastExitLocked())
		}
	}
}

// lastExitLocked tells how the last process to end ended, if one did.
func (h *HTTP) lastExitLocked() string {
	for _, inst := range h.instances {
		if inst.proc == nil && inst.lastExit != "" {
			return "; its last process: " + inst.lastExit
		}
	}
	return ""
}

func (h *HTTP) release(inst *instance) {
	h.mu.Lock()
	defer h.mu.Unlock()
	inst.busy--
	if h.cfg.PerSlot {
		h.notifyLocked()
	}
}

// notifyLocked wakes the invocations waiting for a process.
func (h *HTTP) notifyLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// Close stops every process: SIGTERM to its process group, then SIGKILL
// when ctx ends, and waits for them. Invocations waiting for a process
// get 503 function_unavailable; those in flight end as their process
// does. It returns an error wrapping [ErrClosed] when it had to kill.
func (h *HTTP) Close(ctx context.Context) error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closed = true
		h.notifyLocked()
		h.mu.Unlock()
		h.cancel()
	})
	stopped := make(chan struct{})
	go func() {
		h.loops.Wait()
		h.sp.wg.Wait()
		close(stopped)
	}()
	var err error
	select {
	case <-stopped:
	case <-ctx.Done():
		h.killOnce.Do(func() { close(h.kill) })
		<-stopped
		err = fmt.Errorf("function %q: %w: processes killed after %v", h.cfg.Name, ErrClosed, context.Cause(ctx))
	}
	h.mu.Lock()
	for _, inst := range h.instances {
		inst.rt.CloseIdleConnections()
	}
	h.mu.Unlock()
	h.sp.cleanup()
	return err
}

// run keeps a process running in the instance until Close: first, if
// not nil, is already ready.
func (inst *instance) run(first *proc, host string) {
	h := inst.h
	defer h.loops.Done()
	backoff := initialBackoff
	p := first
	for {
		if p == nil {
			var err error
			if p, host, err = inst.start(h.ctx); err != nil {
				if h.ctx.Err() != nil {
					return
				}
				h.mu.Lock()
				inst.lastExit = err.Error()
				h.mu.Unlock()
				h.log.Error("process failed to start; trying again", "instance", inst.n, "error", err, "backoff", backoff)
				if !h.sleep(backoff) {
					return
				}
				backoff = min(2*backoff, maxBackoff)
				continue
			}
		}
		h.mu.Lock()
		inst.proc, inst.host = p, host
		h.notifyLocked()
		h.mu.Unlock()
		h.log.Info("process ready", "instance", inst.n, "pid", p.pid, "startup", time.Since(p.started).Round(time.Millisecond))

		select {
		case <-p.done:
		case <-h.ctx.Done():
			inst.stop(p)
			return
		}
		exit := p.exit()
		uptime := time.Since(p.started)
		h.mu.Lock()
		inst.proc, inst.lastExit = nil, exit
		h.mu.Unlock()
		inst.rt.CloseIdleConnections()
		if uptime >= stableUptime {
			backoff = initialBackoff
		}
		h.log.Warn("process exited; starting it again", "instance", inst.n, "pid", p.pid, "exit", exit, "uptime", uptime.Round(time.Millisecond), "backoff", backoff)
		p = nil
		if !h.sleep(backoff) {
			return
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// sleep waits d, or until Close; it reports whether d passed.
func (h *HTTP) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-h.ctx.Done():
		return false
	}
}

// stop ends a process: SIGTERM, then SIGKILL once Close's context ends.
func (inst *instance) stop(p *proc) {
	h := inst.h
	h.mu.Lock()
	inst.proc = nil
	h.mu.Unlock()
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-h.kill:
		h.log.Warn("process did not stop in time after SIGTERM; killing it", "instance", inst.n, "pid", p.pid)
		p.signal(syscall.SIGKILL)
		<-p.done
	}
	h.log.Info("process stopped", "instance", inst.n, "pid", p.pid, "exit", p.state.String())
}

// start starts a process and waits until it is ready, within
// StartTimeout and ctx; it returns the host forwarded URLs name. A
// process that fails is killed.
func (inst *instance) start(ctx context.Context) (*proc, string, error) {
	h := inst.h
	ctx, cancel := context.WithTimeoutCause(ctx, h.cfg.StartTimeout, errStartTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		var env []string
		host := "localhost"
		if inst.socket != "" {
			if err := removeStale(inst.socket); err != nil {
				return nil, "", fmt.Errorf("function %q: %w", h.cfg.Name, err)
			}
			env = []string{EnvSocket + "=" + inst.socket, EnvPort + "=" + inst.socket}
		} else {
			port, err := freePort()
			if err != nil {
				return nil, "", fmt.Errorf("function %q: %w", h.cfg.Name, err)
			}
			env = []string{EnvPort + "=" + strconv.Itoa(port)}
			host = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		}
		p, err := h.sp.spawn(spawnSpec{env: env})
		if err != nil {
			return nil, "", err
		}
		err = inst.waitReady(ctx, p, host)
		if err == nil {
			return p, host, nil
		}
		p.signal(syscall.SIGKILL)
		state, stderr := p.exitParts()
		serr := &StartError{Function: h.cfg.Name, Pid: p.pid, Stderr: stderr}
		switch {
		case errors.Is(err, errExited) && inst.socket == "" && portTaken(stderr) && attempt < portRetries:
			h.log.Warn("process found its port taken; starting it again on another", "instance", inst.n, "pid", p.pid, "exit", p.exit())
			continue
		case errors.Is(err, errExited):
			serr.Reason = "exited before it was ready: " + state
		case context.Cause(ctx) == errStartTimeout:
			serr.Reason = fmt.Sprintf("was not ready within %v (%v), killed: %s", h.cfg.StartTimeout, err, state)
		default:
			serr.Reason = fmt.Sprintf("was killed: start interrupted: %v", context.Cause(ctx))
			serr.Err = context.Cause(ctx)
		}
		return nil, "", serr
	}
}

// errExited is waitReady's error when the process exited.
var errExited = errors.New("exited")

// waitReady polls the process until it is ready, it exits (errExited),
// or ctx ends (the last probe's error). On a port, what answers the
// probe must be the process, or one of its process group: the port was
// free when it was picked, but another program may have taken it since,
// and would get the invocations, and their callers' credentials.
func (inst *instance) waitReady(ctx context.Context, p *proc, host string) error {
	interval := firstPoll
	for {
		err := inst.probe(ctx, host)
		if err == nil && inst.socket == "" {
			err = listensInGroup(host, p.pid)
		}
		if err == nil {
			return nil
		}
		t := time.NewTimer(interval)
		select {
		case <-p.done:
			t.Stop()
			return errExited
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		interval = min(2*interval, lastPoll)
	}
}

// probe checks readiness once: a GET of the readiness path that answers
// below 500, or else a connection accepted.
func (inst *instance) probe(ctx context.Context, host string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if inst.h.cfg.Readiness == "" {
		c, err := inst.rt.DialContext(ctx, "tcp", host)
		if err != nil {
			return err
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+inst.h.cfg.Readiness, nil)
	if err != nil {
		return err
	}
	res, err := inst.rt.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	_ = res.Body.Close()
	if res.StatusCode >= 500 {
		return fmt.Errorf("GET %s: %s", inst.h.cfg.Readiness, res.Status)
	}
	return nil
}

// freePort returns a loopback TCP port no one listens on, for now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// portTaken reports whether a process's exit says its port was in use.
func portTaken(exit string) bool {
	e := strings.ToLower(exit)
	return strings.Contains(e, "address already in use") || strings.Contains(e, "eaddrinuse") || strings.Contains(e, "address in use")
}

// removeStale removes the socket a previous process left.
func removeStale(socket string) error {
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}
