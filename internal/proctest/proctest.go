// Package proctest starts and watches real processes for tests: free
// loopback ports, a server process killed and reaped at the test's end,
// waiting for it to answer HTTP, and the languages' runtimes a test needs.
//
// A test that needs a tool which is not installed is skipped, or fails
// when SHOAL_REQUIRE_RUNTIMES=1 (for CI, where the languages must be
// there).
package proctest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequireRuntimes is the variable that, set to 1, turns a missing tool
// from a skip into a failure.
const RequireRuntimes = "SHOAL_REQUIRE_RUNTIMES"

// readyWithin is how long WaitGet waits for a process to be ready.
const readyWithin = 30 * time.Second

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, for
// a process that takes its port from PORT as Shoal's runner gives it.
func FreePort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	return port
}

// Process is a process started by Start; the test's cleanup kills it and
// waits for it.
type Process struct {
	Argv []string // the command line, as started

	done chan struct{}
	err  error // set before done is closed
	out  lockedBuffer
}

// Output returns what the process has written to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process exited (nil for status 0); it is nil until Done
// is closed.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Start starts argv in dir with env added to the test's environment. It
// fails tb if the process cannot start; tb's cleanup kills it, reaps it and,
// if the test failed, logs its output.
func Start(tb testing.TB, dir string, env []string, argv ...string) *Process {
	tb.Helper()
	p := &Process{Argv: argv, done: make(chan struct{})}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if tb.Failed() {
			tb.Logf("output of %s:\n%s", strings.Join(argv, " "), p.Output())
		}
	})
	return p
}

// WaitGet GETs url with client until an answer's status is ready, as
// Shoal's readiness check does, and returns that answer; a nil ready takes
// any answer. It fails tb if p exits first or nothing is ready within 30 s.
func WaitGet(tb testing.TB, p *Process, client *http.Client, url string, ready func(status int) bool) (status int, body string) {
	tb.Helper()
	deadline := time.Now().Add(readyWithin)
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr != nil {
				tb.Fatalf("GET %s: %v", url, rerr)
			}
			if ready == nil || ready(resp.StatusCode) {
				return resp.StatusCode, string(b)
			}
			err = fmt.Errorf("%s: %s", resp.Status, b)
		}
		select {
		case <-p.done:
			tb.Fatalf("%s exited (%v) before it was ready at GET %s (last answer: %v)", strings.Join(p.Argv, " "), p.err, url, err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("GET %s: not ready within %s (last answer: %v)", url, readyWithin, err)
		}
	}
}

// Run runs argv in dir to completion with env added to the test's
// environment and stdin as its input. code is its exit status, or -1 with
// the reason in stderr when it could not run.
func Run(dir string, env []string, stdin string, argv ...string) (stdout, stderr string, code int) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		return "", err.Error(), -1
	}
	return out.String(), errOut.String(), code
}

// NeedTool skips the test when tool is not installed, or fails it when
// SHOAL_REQUIRE_RUNTIMES=1.
func NeedTool(tb testing.TB, tool string) {
	tb.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv(RequireRuntimes) == "1" {
			tb.Fatalf("%s not found, and %s=1: install %s", tool, RequireRuntimes, tool)
		}
		tb.Skipf("%s not found: install %s to run this test", tool, tool)
	}
}

// HaveTools reports whether tools, which what needs, are all installed.
// When one is not, it says so and returns false, so that the test can skip
// what needs them and go on; with SHOAL_REQUIRE_RUNTIMES=1 it fails tb too.
func HaveTools(tb testing.TB, what string, tools ...string) bool {
	tb.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv(RequireRuntimes) == "1" {
				tb.Errorf("%s: %s not found, and %s=1", what, tool, RequireRuntimes)
			} else {
				tb.Logf("SKIP %s: %s not found (install it to run this part)", what, tool)
			}
			return false
		}
	}
	return true
}

// lockedBuffer is a process's output, written by exec's copying goroutines
// while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
