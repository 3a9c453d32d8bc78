package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/invocation"
)

// DefaultMaxOutput is [ExecConfig].MaxOutput when it is 0.
const DefaultMaxOutput = 8 << 20

// ExecConfig configures NewExec.
type ExecConfig struct {
	Config
	// MaxOutput is the most bytes of stdout an invocation may answer
	// (e.g. what a NATS reply can carry); a process that writes more is
	// killed and the invocation answered 500 response_too_large. 0 means
	// DefaultMaxOutput.
	MaxOutput int
}

// Exec serves a function by running its command once per invocation, as
// CGI does. The process gets the request body on stdin and, besides the
// function's environment:
//
//	SHOAL_METHOD      the request method
//	SHOAL_PATH        the path below /function/NAME, "/" if none
//	SHOAL_QUERY       the raw query, without "?"
//	SHOAL_REQUEST_ID  the X-Request-Id header, if any
//	CONTENT_TYPE      the Content-Type header, if any
//	CONTENT_LENGTH    the body's length, if known
//	HTTP_<NAME>       each other header: the name upper-cased, '-' as '_',
//	                  values joined with ", "
//
// What the caller sends cannot set the function's own variables: the
// function's environment ([Config].Env: its env and secrets) wins over
// what the request sets, and a header whose HTTP_<NAME> is a name in
// Config.Env is not passed (so an Api-Key header cannot replace an
// HTTP_API_KEY secret); the SHOAL_* variables above win over both. Not
// passed either: a header whose name has anything but letters, digits
// and '-' (X_Forwarded_For would pass as HTTP_X_FORWARDED_FOR, as
// X-Forwarded-For does; nginx drops them too), Proxy (it would be
// HTTP_PROXY, which HTTP clients take for their proxy: "httpoxy"), and
// Authorization, which holds the caller's token, which the runner has
// already checked: a function has no use for a credential it could
// replay. A process that exits 0 answers 200 with
// its stdout as the body (its Content-Type sniffed from it); any other
// end answers 500 function_failed with "exit status N" (or "signal:
// killed") and the last 2 KiB of its stderr. Its stderr also goes to the
// log, line by line. When the request's context ends, the process group
// is killed at once.
type Exec struct {
	cfg ExecConfig
	sp  *spawner

	mu      sync.Mutex
	running map[*proc]struct{}
	closed  bool
	// calls counts the invocations between the closed check and their
	// end.
	calls sync.WaitGroup
}

// NewExec checks that the function's command can be found (else the
// error wraps [ErrRuntimeMissing]) and returns its handler. It starts no
// process.
func NewExec(cfg ExecConfig) (*Exec, error) {
	if cfg.MaxOutput < 0 {
		return nil, fmt.Errorf("function %q: negative MaxOutput %d", cfg.Name, cfg.MaxOutput)
	}
	if cfg.MaxOutput == 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	sp, err := newSpawner(cfg.Config)
	if err != nil {
		return nil, err
	}
	return &Exec{cfg: cfg, sp: sp, running: make(map[*proc]struct{})}, nil
}

// ServeHTTP runs the command for one invocation.
func (e *Exec) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		e.unavailable("it is shutting down on this runner").WriteHTTP(w)
		return
	}
	e.calls.Add(1)
	e.mu.Unlock()
	defer e.calls.Done()
	if ierr := e.run(w, r); ierr != nil {
		ierr.WriteHTTP(w)
	}
}

func (e *Exec) unavailable(why string) *invocation.Error {
	return invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeFunctionUnavailable, "function %q: %s", e.cfg.Name, why)
}

// run runs the process and writes its answer, or returns an error to
// answer in its place.
func (e *Exec) run(w http.ResponseWriter, r *http.Request) *invocation.Error {
	ctx := r.Context()
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return e.unavailable(err.Error())
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		_, _ = stdinR.Close(), stdinW.Close()
		return e.unavailable(err.Error())
	}
	shoal, request := requestEnv(r, e.sp.names)
	p, err := e.sp.spawn(spawnSpec{request: request, env: shoal, stdin: stdinR, stdout: stdoutW})
	_, _ = stdinR.Close(), stdoutW.Close() // the process's ends
	if err != nil {
		_, _ = stdinW.Close(), stdoutR.Close()
		e.sp.log.Error("cannot start process", "error", err)
		return e.unavailable(err.Error())
	}
	e.track(p)
	defer e.untrack(p)

	// The body goes to stdin; a process that exits without reading it
	// ends the copy (EPIPE, or the pipe closed below).
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		if r.Body != nil {
			_, _ = io.Copy(stdinW, r.Body)
		}
		_ = stdinW.Close()
	}()
	// The watcher kills the process group when ctx ends, and ends the
	// reads of a process that has exited (its group killed) once its
	// output drained, or after outputDrain.
	read := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-p.done:
		case <-ctx.Done():
			p.signal(syscall.SIGKILL)
			<-p.done
		}
		_ = stdinW.Close()
		if !waitChan(read, outputDrain) {
			_ = stdoutR.Close()
		}
	}()

	var out bytes.Buffer
	_, _ = io.Copy(&out, io.LimitReader(stdoutR, int64(e.cfg.MaxOutput)+1))
	over := out.Len() > e.cfg.MaxOutput
	if over {
		p.signal(syscall.SIGKILL)
	}
	close(read)
	_ = stdoutR.Close()
	<-watched
	<-copied

	switch {
	case ctx.Err() != nil:
		// The runner answers the timeout itself; this only ends the
		// handler promptly.
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return invocation.Errorf(http.StatusGatewayTimeout, invocation.CodeTimeout, "function %q did not answer within the invocation's deadline; its process was killed", e.cfg.Name)
		}
		return invocation.Errorf(http.StatusServiceUnavailable, invocation.CodeUnavailable, "function %q: the invocation was cancelled; its process was killed", e.cfg.Name)
	case over:
		return invocation.Errorf(http.StatusInternalServerError, invocation.CodeResponseTooLarge, "function %q wrote more than %d bytes to stdout; its process was killed", e.cfg.Name, e.cfg.MaxOutput)
	case !p.state.Success():
		return invocation.Errorf(http.StatusInternalServerError, invocation.CodeFunctionFailed, "function %q: %s", e.cfg.Name, p.exit())
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out.Bytes()) // a write error is the runner's to report
	return nil
}

// waitChan waits for ch to be closed, at most d; it reports whether it
// was.
func waitChan(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

func (e *Exec) track(p *proc) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.running[p] = struct{}{}
}

func (e *Exec) untrack(p *proc) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.running, p)
}

// Close refuses new invocations (503 function_unavailable), lets the
// running ones end until ctx ends, then kills their process groups, and
// waits for them. It returns an error wrapping [ErrClosed] when it had to
// kill.
func (e *Exec) Close(ctx context.Context) error {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	done := make(chan struct{})
	go func() {
		e.calls.Wait()
		e.sp.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		e.mu.Lock()
		for p := range e.running {
			p.signal(syscall.SIGKILL)
		}
		n := len(e.running)
		e.mu.Unlock()
		<-done
		if n > 0 {
			err = fmt.Errorf("function %q: %w: %d processes killed after %v", e.cfg.Name, ErrClosed, n, context.Cause(ctx))
		}
	}
	e.sp.cleanup()
	return err
}

// requestEnv is the environment that carries an invocation to an exec
// process: Shoal's own variables, which win over the function's, and
// those the request sets (CONTENT_*, HTTP_*), over which the function's
// win; those whose names are in fnNames are left out. See [Exec].
func requestEnv(r *http.Request, fnNames map[string]bool) (shoal, request []string) {
	path := r.URL.Path
	if path == "" {
		path = "/"
	}
	shoal = []string{
		"SHOAL_METHOD=" + r.Method,
		"SHOAL_PATH=" + path,
		"SHOAL_QUERY=" + r.URL.RawQuery,
		"SHOAL_REQUEST_ID=" + r.Header.Get("X-Request-Id"),
	}
	add := func(k, v string) {
		if !fnNames[k] && strings.IndexByte(v, 0) < 0 { // a NUL cannot be in an environment
			request = append(request, k+"="+v)
		}
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		add("CONTENT_TYPE", ct)
	}
	if r.ContentLength >= 0 {
		add("CONTENT_LENGTH", strconv.FormatInt(r.ContentLength, 10))
	}
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Authorization", "Content-Type", "Content-Length", "Proxy":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		name, ok := envName(k)
		if !ok || seen[name] {
			continue
		}
		seen[name] = true
		add(name, strings.Join(r.Header[k], ", "))
	}
	return shoal, request
}

// envName turns a header name into an environment variable's,
// HTTP_<NAME>; ok is false for a name with anything but letters, digits
// and '-', which could pass for another header's.
func envName(header string) (name string, ok bool) {
	b := make([]byte, 0, len("HTTP_")+len(header))
	b = append(b, "HTTP_"...)
	for _, c := range []byte(header) {
		switch {
		case c >= 'a' && c <= 'z':
			b = append(b, c-'a'+'A')
		case c >= 'A' && c <= 'Z' || c >= '0' && c <= '9':
			b = append(b, c)
		case c == '-':
			b = append(b, '_')
		default:
			return "", false
		}
	}
	return string(b), header != ""
}
