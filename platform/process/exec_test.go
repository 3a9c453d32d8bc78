//go:build linux

package process_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/process"
)

// newExec returns the handler of a bash script in a fresh directory.
func newExec(t *testing.T, script string, change func(*process.ExecConfig)) (*process.Exec, string, *logBuffer) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "handler.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	log, logs := newLogger(t)
	cfg := process.ExecConfig{Config: process.Config{
		Name: "sh", Command: []string{"bash", "handler.sh"}, Dir: dir, Logger: log,
		Env: []string{"GREETING=hi"},
	}}
	if change != nil {
		change(&cfg)
	}
	e, err := process.NewExec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return e, dir, logs
}

func TestExecRoundTrip(t *testing.T) {
	t.Parallel()
	e, _, _ := newExec(t, "exec cat\n", nil)
	body := make([]byte, 256*1024)
	for i := range body {
		body[i] = byte(i * 7)
	}
	rec := call(e, "POST", "/", body, 5*time.Second)
	if rec.Code != 200 || !bytesEqual(rec.Body.Bytes(), body) {
		t.Fatalf("got %d, %d bytes; want 200 and the %d bytes sent", rec.Code, rec.Body.Len(), len(body))
	}
	// No body, no output: 200 and nothing.
	rec = call(e, "GET", "/", nil, 5*time.Second)
	if rec.Code != 200 || rec.Body.Len() != 0 {
		t.Fatalf("got %d %q", rec.Code, rec.Body.String())
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

func TestExecEnvironment(t *testing.T) {
	t.Parallel()
	e, dir, _ := newExec(t, `env | grep -E '^(SHOAL_|HTTP_|CONTENT_|GREETING|HOME|TMPDIR|PATH|`+canary+`)' | sort`+"\n", func(c *process.ExecConfig) {
		// The function's own variables: a request cannot replace them,
		// but Shoal's win over them.
		c.Env = append(c.Env, "HTTP_API_KEY=the function's", "CONTENT_TYPE=the function's", "SHOAL_METHOD=the function's")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, "PATCH", "/items/42?x=1&y=%20", strings.NewReader("abc"))
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("X-Request-Id", "req-1")
	req.Header.Add("X-Multi-Value", "a")
	req.Header.Add("X-Multi-Value", "b")
	req.Header.Set("Authorization", "Bearer secret-token")
	req.Header.Set("Proxy", "http://evil.example:8080")
	req.Header.Set("Api-Key", "the caller's")
	req.Header["X_Forwarded_For"] = []string{"6.6.6.6"}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Fatalf("got %d %q", rec.Code, rec.Body.String())
	}
	env := map[string]string{}
	for line := range strings.Lines(rec.Body.String()) {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		env[k] = v
	}
	for k, want := range map[string]string{
		"SHOAL_METHOD":       "PATCH",
		"SHOAL_PATH":         "/items/42",
		"SHOAL_QUERY":        "x=1&y=%20",
		"SHOAL_REQUEST_ID":   "req-1",
		"CONTENT_TYPE":       "the function's",
		"HTTP_API_KEY":       "the function's",
		"CONTENT_LENGTH":     "3",
		"HTTP_X_MULTI_VALUE": "a, b",
		"HTTP_X_REQUEST_ID":  "req-1",
		"GREETING":           "hi",
		"PATH":               os.Getenv("PATH"),
	} {
		if env[k] != want {
			t.Errorf("%s=%q, want %q", k, env[k], want)
		}
	}
	for _, k := range []string{"HTTP_AUTHORIZATION", "HTTP_CONTENT_TYPE", "HTTP_PROXY", "HTTP_X_FORWARDED_FOR", canary} {
		if v, ok := env[k]; ok {
			t.Errorf("%s=%q passed", k, v)
		}
	}
	wantPrivate(t, env["HOME"], env["TMPDIR"], "sh", dir)

	// An empty path is "/".
	req = httptest.NewRequestWithContext(ctx, "GET", "/", nil)
	req.URL.Path = ""
	rec = httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	if !strings.Contains(rec.Body.String(), "SHOAL_PATH=/\n") {
		t.Errorf("got %q, want SHOAL_PATH=/", rec.Body.String())
	}
}

func TestExecFailures(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 5000)
	for _, tc := range []struct {
		name, script string
		maxOutput    int
		status       int
		code         invocation.Code
		want         []string
		wantNot      []string
		log          []string
	}{
		{name: "exit status", script: "echo partial\necho 'oops: no such table' >&2\nexit 3\n",
			status: 500, code: invocation.CodeFunctionFailed, want: []string{"exit status 3: oops: no such table"},
			log: []string{"msg=\"oops: no such table\"", "stream=stderr"}},
		{name: "killed by a signal", script: "kill -KILL $$\n",
			status: 500, code: invocation.CodeFunctionFailed, want: []string{"signal: killed"}},
		{name: "only the stderr tail", script: "echo BEGIN" + long + " >&2\necho END >&2\nexit 1\n",
			status: 500, code: invocation.CodeFunctionFailed, want: []string{"exit status 1: ", "END"}, wantNot: []string{"BEGIN"}},
		{name: "output over the limit", script: "head -c 100000 /dev/zero\n", maxOutput: 1000,
			status: 500, code: invocation.CodeResponseTooLarge, want: []string{"more than 1000 bytes"}},
		{name: "endless output", script: "exec yes\n", maxOutput: 4096,
			status: 500, code: invocation.CodeResponseTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, _, logs := newExec(t, tc.script, func(c *process.ExecConfig) { c.MaxOutput = tc.maxOutput })
			msg := wantError(t, call(e, "POST", "/", []byte("in"), 10*time.Second), tc.status, tc.code)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(msg, w) {
					t.Errorf("message %q has %q", msg, w)
				}
			}
			if len(msg) > 2200 {
				t.Errorf("message of %d bytes, want the stderr tail only", len(msg))
			}
			if tc.log != nil {
				logs.waitLog(t, tc.log...)
			}
		})
	}
}

// When the invocation's context ends, the whole process group is
// killed, the function's own children too, and the handler returns at
// once.
func TestExecTimeoutKillsTheGroup(t *testing.T) {
	t.Parallel()
	e, dir, _ := newExec(t, "sleep 100 &\necho $! > child\necho $$ > main\nwait\n", nil)
	began := time.Now()
	rec := call(e, "GET", "/", nil, 500*time.Millisecond)
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("returned after %v", d)
	}
	wantError(t, rec, http.StatusGatewayTimeout, invocation.CodeTimeout)
	var pids []int
	for _, f := range []string{"main", "child"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || perr != nil {
			t.Fatalf("%s: %q %v", f, b, err)
		}
		pids = append(pids, pid)
	}
	waitGone(t, 2*time.Second, pids...)
}

// A background child left by a process that exited does not hold the
// answer back: the rest of the group is killed with it.
func TestExecKillsLeftovers(t *testing.T) {
	t.Parallel()
	e, dir, _ := newExec(t, "sleep 100 &\necho $! > child\necho done\n", nil)
	rec := call(e, "GET", "/", nil, 5*time.Second)
	if rec.Code != 200 || rec.Body.String() != "done\n" {
		t.Fatalf("got %d %q", rec.Code, rec.Body.String())
	}
	b, _ := os.ReadFile(filepath.Join(dir, "child"))
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	waitGone(t, 2*time.Second, pid)
}

func TestExecClose(t *testing.T) {
	t.Parallel()
	e, _, _ := newExec(t, "sleep 100\n", nil)
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- call(e, "GET", "/", nil, 30*time.Second) }()
	time.Sleep(200 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := e.Close(ctx); !errors.Is(err, process.ErrClosed) {
		t.Errorf("Close: %v, want processes killed", err)
	}
	wantError(t, <-done, 500, invocation.CodeFunctionFailed)
	wantError(t, call(e, "GET", "/", nil, time.Second), http.StatusServiceUnavailable, invocation.CodeFunctionUnavailable)
}

func TestNewExecRuntimeMissing(t *testing.T) {
	t.Parallel()
	_, err := process.NewExec(process.ExecConfig{Config: process.Config{Name: "py", Command: []string{"python-that-is-not-here"}, Dir: t.TempDir()}})
	if !errors.Is(err, process.ErrRuntimeMissing) || !strings.Contains(err.Error(), "python-that-is-not-here not found in PATH") {
		t.Fatalf("got %v", err)
	}
}

// Limits without cgroup v2 are rlimits.
func TestLimits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		limits process.Limits
		script string
		ok     bool
		want   string
	}{
		{name: "open files", limits: process.Limits{OpenFiles: 64}, script: "ulimit -Sn; ulimit -Hn\n", ok: true, want: "64\n64\n"},
		{name: "open files exhausted", limits: process.Limits{OpenFiles: 16},
			script: "for i in $(seq 3 40); do eval \"exec $i</dev/null\" || exit 9; done\n"},
		{name: "memory within", limits: process.Limits{MemoryBytes: 64 << 20}, script: "x=$(head -c 1000000 /dev/zero | tr '\\0' a); echo ${#x}\n", ok: true, want: "1000000\n"},
		{name: "memory over", limits: process.Limits{MemoryBytes: 64 << 20}, script: "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo ${#x}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, _, _ := newExec(t, tc.script, func(c *process.ExecConfig) { c.Limits = tc.limits })
			rec := call(e, "GET", "/", nil, 20*time.Second)
			if tc.ok {
				if rec.Code != 200 || rec.Body.String() != tc.want {
					t.Fatalf("got %d %q, want 200 %q", rec.Code, rec.Body.String(), tc.want)
				}
				return
			}
			msg := wantError(t, rec, 500, invocation.CodeFunctionFailed)
			t.Log(msg)
		})
	}
}

// A function run once per invocation: here cat, which answers what it
// reads.
func ExampleExec() {
	e, err := process.NewExec(process.ExecConfig{Config: process.Config{
		Name:    "echo",
		Command: []string{"cat"},
		Dir:     os.TempDir(),
	}})
	if err != nil {
		fmt.Println(err) // e.g. runtime missing: cat not found in PATH ...
		return
	}
	defer e.Close(context.Background())

	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest("POST", "/", strings.NewReader("hello from stdin")))
	fmt.Println(rec.Code, rec.Body.String())
	// Output: 200 hello from stdin
}
