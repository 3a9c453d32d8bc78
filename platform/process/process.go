// Package process runs a function's own code as operating-system
// processes and serves it as an [http.Handler]: the runner turns each
// invocation into an *http.Request and calls the handler, whatever
// language the function is written in. It knows nothing of NATS or of
// fn.yaml; the runner maps a function's handler onto [HTTPConfig] or
// [ExecConfig].
//
// # Kinds
//
// [StartHTTP] runs a long-lived HTTP server (an Express app, a Flask
// app, a Go binary): it tells the process where to listen — env PORT
// (a free loopback port, which the process must bind on 127.0.0.1
// itself), or SHOAL_SOCKET and PORT both (the path of a Unix socket in a
// private directory: Node's server.listen(PORT) listens on it) — waits
// until it is ready (on a port, until the socket listening on it is the
// process's own, or its process group's), and forwards each invocation
// to it. One process takes every invocation ([HTTPConfig].PerSlot false),
// or each process takes one at a time, up to [HTTPConfig].Slots of them.
// A process that exits on its own is started again after a back-off
// that doubles from 100 ms to 30 s (and starts from 100 ms again once a
// process stayed up 10 s); invocations wait for it within their
// context's deadline.
//
// [NewExec] runs one process per invocation, as CGI and OpenFaaS's
// classic watchdog do: the request body is its stdin, its stdout the
// answer (exit 0: 200; otherwise 500 function_failed with the tail of
// its stderr). The request comes in the environment; see [Exec].
//
// # Environment
//
// A process never inherits the runner's environment (which holds NATS
// credentials and keys). It gets PATH (the runner's), HOME and TMPDIR
// (directories of its own, private to the function's processes on this
// runner and removed by Close: the working directory is the unpacked
// code, which runners share and nothing may write to), LANG (if the
// runner has one), then [Config].Env, then the variables of its kind.
//
// The private directory is os.TempDir()/shoal-<runner pid>-<function>-*.
// A runner killed with SIGKILL cannot remove its own: the first start of
// a function by a runner removes those, in os.TempDir() and owned by its
// user, whose runner's pid is no longer running.
//
// # Processes
//
// Every process leads its own process group; when it exits, what is left
// of its group (the function's own children) is killed, and Close stops
// the whole group: SIGTERM, then SIGKILL when Close's context ends. On
// Linux every process also gets SIGKILL when the runner dies, however it
// dies (the parent-death signal). That signal is tied to the OS thread
// that forked the process, not to the runner's process
// (https://go.dev/issue/27505), so each process is forked, waited for and
// reaped by a goroutine locked to its thread for the process's whole
// life: no other goroutine can run on that thread, and so none can end
// it by exiting while locked to it. It costs one OS thread per running
// process. A function's own children do not get the signal: they outlive
// a runner killed with SIGKILL, as they are not in its reach any more.
//
// # Limits
//
// [Limits] are enforced with a cgroup v2 per process when the runner may
// create one: [Config].CgroupParent, or the runner's own cgroup when
// cgroup v2 is mounted at /sys/fs/cgroup and that cgroup delegates the
// memory and cpu controllers (cgroup.subtree_control). The process is
// started inside it (clone3 CLONE_INTO_CGROUP), with memory.max and
// cpu.max set, and the cgroup is removed once the process has exited.
// Otherwise they are rlimits, set before the program runs by a trampoline
// (the process starts as the runner's own binary, which sets them and
// execs the program; see sys_linux.go): memory as
// RLIMIT_AS, which caps virtual memory, not resident memory — runtimes
// that reserve large address spaces (Node.js, the JVM, Go) need a limit
// well above what they use — and cpu is not enforced (logged once).
// OpenFiles is always RLIMIT_NOFILE.
//
// Elsewhere than on Linux, [StartHTTP] and [NewExec] return an error
// wrapping [errors.ErrUnsupported].
package process

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config describes a function's processes, whatever their kind.
type Config struct {
	// Name is the function's name, for logs, errors and the private
	// directory's name.
	Name string
	// Command is the argv to run. Command[0] is looked up in the PATH
	// the process gets, or, when it contains a slash, taken relative to
	// Dir ("./app").
	Command []string
	// Dir is the working directory, an absolute path: the function's
	// unpacked code.
	Dir string
	// Env holds the KEY=VALUE pairs the function gets (its env and
	// secrets). Later entries win over earlier ones and over the base
	// (PATH, HOME, LANG, TMPDIR), and Env wins over what an exec
	// process's request sets (HTTP_*, CONTENT_*); the kind's own
	// variables (PORT, SHOAL_SOCKET, SHOAL_METHOD, ...) win over Env.
	Env []string
	// Limits caps each process.
	Limits Limits
	// CgroupParent, if set, is a cgroup v2 directory the runner may
	// create cgroups in (delegated to it); "" means the runner's own
	// cgroup, when it can be used. See the package documentation.
	CgroupParent string
	// Logger receives the package's log and each line a process writes
	// to stderr (and, for the http kind, stdout), with the attributes
	// function, pid and stream; nil discards them.
	Logger *slog.Logger
}

// Limits caps each of a function's processes; a zero field means no
// limit.
type Limits struct {
	MemoryBytes int64   // memory.max, or RLIMIT_AS without cgroups
	CPU         float64 // cores, e.g. 0.5; cgroup cpu.max only
	OpenFiles   uint64  // RLIMIT_NOFILE
}

var (
	// ErrRuntimeMissing is wrapped by the error of StartHTTP and NewExec
	// when the command cannot be found: the function cannot be served on
	// this machine (e.g. "runtime missing: python3 not found in PATH
	// /usr/bin:/bin").
	ErrRuntimeMissing = errors.New("runtime missing")
	// ErrClosed is wrapped by the error of Close when its context ended
	// before the processes did, and it killed them.
	ErrClosed = errors.New("process: closed")
)

// stderrTail is how much of a process's stderr is kept for errors.
const stderrTail = 2 << 10

// maxLine is the longest line of output logged whole; longer lines are
// logged in pieces.
const maxLine = 4 << 10

// outputDrain bounds how long an error waits for the last of a dead
// process's stderr (a grandchild that left its process group may hold
// the pipe open for ever).
const outputDrain = time.Second

// spawner starts a function's processes; both kinds share it.
type spawner struct {
	cfg  Config
	log  *slog.Logger
	path string   // Command[0], resolved
	base []string // PATH, HOME, TMPDIR, LANG
	// names holds the names of cfg.Env's variables, which a request's
	// may not set.
	names map[string]bool
	// dir is the function's private directory (0700): HOME, TMPDIR and
	// the Unix sockets are in it.
	dir    string
	cgroup string // the cgroup parent; "" for rlimits
	// wg counts the goroutines of every process: the reaper and the
	// output readers.
	wg sync.WaitGroup
}

// cgroupSeq numbers the cgroups of the runner's processes; with the
// runner's pid, it keeps their names apart from those of other runners,
// and of other handlers of the same function (a redeployment).
var cgroupSeq atomic.Int64

func newSpawner(cfg Config) (*spawner, error) {
	if err := supported(); err != nil {
		return nil, err
	}
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return nil, fmt.Errorf("function %q: no command to run", cfg.Name)
	}
	if !filepath.IsAbs(cfg.Dir) {
		return nil, fmt.Errorf("function %q: working directory %q is not an absolute path", cfg.Name, cfg.Dir)
	}
	if fi, err := os.Stat(cfg.Dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("function %q: working directory %q: not a directory", cfg.Name, cfg.Dir)
	}
	if cfg.Limits.MemoryBytes < 0 || cfg.Limits.CPU < 0 {
		return nil, fmt.Errorf("function %q: negative limits %+v", cfg.Name, cfg.Limits)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("function", cfg.Name)
	s := &spawner{cfg: cfg, log: log}

	path, err := resolve(cfg.Command[0], cfg.Dir, searchPath(cfg.Env))
	if err != nil {
		return nil, fmt.Errorf("function %q: %w", cfg.Name, err)
	}
	s.path = path

	if s.cgroup, err = findCgroupParent(cfg.CgroupParent, cfg.Limits); err != nil {
		if cfg.CgroupParent != "" {
			return nil, fmt.Errorf("function %q: %w", cfg.Name, err)
		}
		if cfg.Limits.CPU > 0 {
			log.Warn("cpu limit not enforced: it needs a cgroup v2 the runner may create", "cpu", cfg.Limits.CPU, "reason", err.Error())
		}
	}

	sweepOnce.Do(func() { sweepStale(os.TempDir(), log) })
	s.dir, err = os.MkdirTemp("", privatePrefix(os.Getpid(), cfg.Name))
	if err != nil {
		return nil, fmt.Errorf("function %q: private directory: %w", cfg.Name, err)
	}
	home, tmp := filepath.Join(s.dir, "home"), filepath.Join(s.dir, "tmp")
	for _, d := range []string{home, tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			_ = os.RemoveAll(s.dir)
			return nil, fmt.Errorf("function %q: private directory: %w", cfg.Name, err)
		}
	}
	s.base = []string{"PATH=" + searchPath(cfg.Env), "HOME=" + home, "TMPDIR=" + tmp}
	if lang := os.Getenv("LANG"); lang != "" {
		s.base = append(s.base, "LANG="+lang)
	}
	s.names = make(map[string]bool, len(cfg.Env))
	for _, kv := range cfg.Env {
		k, _, _ := strings.Cut(kv, "=")
		s.names[k] = true
	}
	return s, nil
}

// privatePrefix is the start of the name of a function's private
// directory: shoal-<runner pid>-<function>-.
func privatePrefix(pid int, name string) string {
	return "shoal-" + strconv.Itoa(pid) + "-" + safeName(name) + "-"
}

// sweepOnce sweeps the private directories of dead runners at the first
// start of a function.
var sweepOnce sync.Once

// sweepStale removes the private directories in tmp left by runners
// that died without removing them (SIGKILL): those named
// shoal-<pid>-*, owned by this user, whose pid is not a running
// process. A pid reused since is taken for its runner: its directory
// stays, for a later runner to remove.
func sweepStale(tmp string, log *slog.Logger) {
	entries, err := os.ReadDir(tmp)
	if err != nil {
		log.Warn("cannot look for private directories of dead runners", "dir", tmp, "error", err)
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "shoal-")
		if !ok || !e.IsDir() {
			continue
		}
		digits, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(digits)
		if !ok || err != nil || pid <= 0 || strconv.Itoa(pid) != digits || pid == os.Getpid() || running(pid) {
			continue
		}
		dir := filepath.Join(tmp, e.Name())
		if !ownedByMe(dir) {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("cannot remove the private directory of a dead runner", "dir", dir, "error", err)
			continue
		}
		log.Info("removed the private directory of a dead runner", "dir", dir, "pid", pid)
	}
}

// cleanup removes the private directory; call it once every process
// has exited.
func (s *spawner) cleanup() {
	if err := os.RemoveAll(s.dir); err != nil {
		s.log.Warn("cannot remove the function's private directory", "dir", s.dir, "error", err)
	}
}

// safeName keeps the letters, digits, '-' and '_' of a function name,
// for file and cgroup names.
func safeName(name string) string {
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 40 {
		b = b[:40]
	}
	return string(b)
}

// searchPath is the PATH a command is looked up in: the function's own
// (a PATH= in env, the last one), else the runner's, else a default.
func searchPath(env []string) string {
	path := cmp.Or(os.Getenv("PATH"), "/usr/local/bin:/usr/bin:/bin")
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	return path
}

// LookRuntime checks that a command's program found in PATH (python3,
// node), as StartHTTP and NewExec will look it up for a function with
// env, is installed, without starting anything; the error wraps
// [ErrRuntimeMissing]. A program named by a path (./app) is in the
// function's code and is not checked.
func LookRuntime(program string, env []string) error {
	if strings.Contains(program, "/") {
		return nil
	}
	_, err := resolve(program, "", searchPath(env))
	return err
}

// resolve finds the executable of a command: relative to dir when it has
// a slash, else in the directories of pathEnv (absolute ones only: a
// relative entry would depend on the working directory).
func resolve(arg0, dir, pathEnv string) (string, error) {
	if strings.Contains(arg0, "/") {
		p := arg0
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := executable(p); err != nil {
			return "", fmt.Errorf("%w: %s: %w", ErrRuntimeMissing, arg0, err)
		}
		return p, nil
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if !filepath.IsAbs(d) {
			continue
		}
		p := filepath.Join(d, arg0)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s not found in PATH %s", ErrRuntimeMissing, arg0, pathEnv)
}

// executable reports why p is not an executable file, nil if it is.
func executable(p string) error {
	fi, err := os.Stat(p)
	switch {
	case err != nil:
		return errors.Unwrap(err) // the *PathError's path is already in the message
	case fi.IsDir():
		return errors.New("is a directory")
	case fi.Mode()&0o111 == 0:
		return errors.New("is not executable")
	}
	return nil
}

// proc is one running process.
type proc struct {
	pid     int
	started time.Time
	// done is closed once the process has exited, what was left of its
	// group has been killed, and it has been reaped; state is set then.
	done  chan struct{}
	state *os.ProcessState
	// output is done when its stdout and stderr readers have ended.
	output sync.WaitGroup

	tailMu sync.Mutex
	tail   []byte // the last stderrTail bytes of stderr

	// mu keeps signals off a reaped pid, which the system may reuse.
	mu     sync.Mutex
	reaped bool
}

// signal signals the process's group, unless it has been reaped.
func (p *proc) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reaped {
		_ = signalGroup(p.pid, sig) // ESRCH: the whole group is gone already
	}
}

// exited reports whether the process has exited (and been reaped).
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exit describes how the process ended ("exit status 3", "signal:
// killed"), followed by the tail of its stderr, if any. It waits for the
// process to be reaped and, at most outputDrain, for its stderr.
func (p *proc) exit() string {
	state, stderr := p.exitParts()
	if stderr != "" {
		return state + ": " + stderr
	}
	return state
}

// exitParts is exit's two parts: how the process ended, and the tail of
// its stderr.
func (p *proc) exitParts() (state, stderr string) {
	<-p.done
	waitTimeout(&p.output, outputDrain)
	return p.state.String(), p.stderrTail()
}

// stderrTail is the last 2 KiB of the process's stderr, trimmed.
func (p *proc) stderrTail() string {
	p.tailMu.Lock()
	defer p.tailMu.Unlock()
	return strings.TrimSpace(strings.ToValidUTF8(string(p.tail), "\uFFFD"))
}

func (p *proc) keepTail(b []byte) {
	p.tailMu.Lock()
	defer p.tailMu.Unlock()
	p.tail = append(p.tail, b...)
	if n := len(p.tail); n > stderrTail {
		p.tail = append(p.tail[:0], p.tail[n-stderrTail:]...)
	}
}

// spawnSpec is what differs between the processes of a function.
type spawnSpec struct {
	// request holds the variables an exec process's request sets
	// (HTTP_*, CONTENT_*): Config.Env wins over them.
	request []string
	env     []string // the kind's own variables; they win over all
	// stdin and stdout are the process's ends; nil means /dev/null for
	// stdin and a pipe logged line by line for stdout. spawn does not
	// close them.
	stdin, stdout *os.File
}

// spawn starts a process. Its goroutines are counted in s.wg.
func (s *spawner) spawn(spec spawnSpec) (*proc, error) {
	// Later entries win (os/exec keeps the last of a name): what a
	// request sets yields to the function's own env, which yields to
	// the kind's variables.
	env := slices.Concat(s.base, spec.request, s.cfg.Env, spec.env)
	p := &proc{done: make(chan struct{})}
	var closeAfterStart []*os.File
	defer func() {
		for _, f := range closeAfterStart {
			_ = f.Close()
		}
	}()
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("function %q: %w", s.cfg.Name, err)
	}
	closeAfterStart = append(closeAfterStart, stderrW)
	stdout, stdoutR := spec.stdout, (*os.File)(nil)
	if stdout == nil {
		if stdoutR, stdout, err = os.Pipe(); err != nil {
			_ = stderrR.Close()
			return nil, fmt.Errorf("function %q: %w", s.cfg.Name, err)
		}
		closeAfterStart = append(closeAfterStart, stdout)
	}
	closeReaders := func() {
		_ = stderrR.Close()
		if stdoutR != nil {
			_ = stdoutR.Close()
		}
	}

	var cg *cgroup
	if s.cgroup != "" {
		if cg, err = newCgroup(s.cgroup, fmt.Sprintf("shoal-%s-%d-%d", safeName(s.cfg.Name), os.Getpid(), cgroupSeq.Add(1)), s.cfg.Limits); err != nil {
			closeReaders()
			return nil, fmt.Errorf("function %q: %w", s.cfg.Name, err)
		}
	}

	started := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// See the package documentation: the parent-death signal of the
		// process is tied to this thread, which no other goroutine may
		// use (and end) while the process runs.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		pid, wait, err := startLocked(s.path, s.cfg.Command, s.cfg.Dir, env, spec.stdin, stdout, stderrW, cg, s.cfg.Limits)
		if err != nil {
			if err := cg.remove(); err != nil {
				s.log.Warn("cannot remove a process's cgroup", "error", err)
			}
			started <- err
			return
		}
		p.pid, p.started = pid, time.Now()
		started <- nil
		// Wait for the exit without reaping, so that the pid, and the
		// group's id, stay reserved while what is left of the group is
		// killed.
		if err := waitExited(pid); err != nil {
			s.log.Error("cannot wait for a process; waiting without killing its group", "pid", pid, "error", err)
		} else {
			_ = signalGroup(pid, syscall.SIGKILL)
		}
		p.mu.Lock()
		p.state = wait()
		p.reaped = true
		p.mu.Unlock()
		if err := cg.remove(); err != nil {
			s.log.Warn("cannot remove a process's cgroup", "pid", pid, "error", err)
		}
		close(p.done)
	}()
	if err := <-started; err != nil {
		closeReaders()
		return nil, fmt.Errorf("function %q: start %s: %w", s.cfg.Name, s.cfg.Command[0], err)
	}
	readers := []*os.File{stderrR}
	p.output.Add(1)
	s.wg.Add(1)
	go s.readOutput(p, "stderr", stderrR)
	if stdoutR != nil {
		readers = append(readers, stdoutR)
		p.output.Add(1)
		s.wg.Add(1)
		go s.readOutput(p, "stdout", stdoutR)
	}
	// A process of the function that left its process group (setsid)
	// may hold the pipes open after the group is gone: the readers do
	// not wait for it longer than outputDrain.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-p.done
		if !waitTimeout(&p.output, outputDrain) {
			for _, f := range readers {
				_ = f.Close() // ends the blocked Read
			}
		}
	}()
	return p, nil
}

// waitTimeout waits for wg, at most d; it reports whether wg was done.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// readOutput logs each line of a process's stdout or stderr, keeping the
// tail of stderr.
func (s *spawner) readOutput(p *proc, stream string, r *os.File) {
	defer s.wg.Done()
	defer p.output.Done()
	defer r.Close()
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, more, err := br.ReadLine()
		if len(line) > 0 || err == nil {
			if stream == "stderr" {
				p.keepTail(line)
				if !more {
					p.keepTail([]byte{'\n'})
				}
			}
			s.log.Info(string(line), "pid", p.pid, "stream", stream)
		}
		if err != nil {
			return // EOF: every process of the group has closed it
		}
	}
}
