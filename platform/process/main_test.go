//go:build linux

package process_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
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

// The test binary is also the function: TestMain runs it in the mode
// named by envMode.
const envMode = "SHOAL_PROCESS_TEST_MODE"

// canary is set in the tests' own environment; no function may see it.
const canary = "SHOAL_PROCESS_TEST_CANARY"

func TestMain(m *testing.M) {
	switch os.Getenv(envMode) {
	case "":
		os.Setenv(canary, "leaked")
		os.Exit(m.Run())
	case "server":
		serve()
	case "parent":
		parent()
	case "setsid":
		setsidServer()
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Getenv(envMode))
		os.Exit(2)
	}
}

// serve is an HTTP function: it listens where PORT or SHOAL_SOCKET says.
// With FAIL_FIRST=<file> it fails once, as when its port was taken; with
// READY_AFTER=<duration> GET /ready answers 503 until then; with
// PORT_ONLY=1 it reads PORT alone, as Node's server.listen(PORT) does: a
// path there is a Unix socket.
func serve() {
	if f := os.Getenv("FAIL_FIRST"); f != "" {
		if _, err := os.Stat(f); err != nil {
			_ = os.WriteFile(f, nil, 0o600)
			fmt.Fprintln(os.Stderr, "Error: listen EADDRINUSE: address already in use")
			os.Exit(1)
		}
	}
	start := time.Now()
	readyAfter, _ := time.ParseDuration(os.Getenv("READY_AFTER"))
	var l net.Listener
	var err error
	if s := os.Getenv("SHOAL_SOCKET"); s != "" && os.Getenv("PORT_ONLY") == "" {
		l, err = net.Listen("unix", s)
	} else if s := os.Getenv("PORT"); strings.Contains(s, "/") {
		l, err = net.Listen("unix", s)
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		if time.Since(start) < readyAfter {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	// /ping is the benchmarks' function: a small constant answer.
	mux.HandleFunc("/ping", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write(pong)
	})
	mux.HandleFunc("/pid", func(w http.ResponseWriter, r *http.Request) {
		if d, _ := time.ParseDuration(r.URL.Query().Get("sleep")); d > 0 {
			time.Sleep(d)
		}
		fmt.Fprint(w, os.Getpid())
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Echo", "yes")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "path": r.URL.Path, "query": r.URL.RawQuery,
			"header": r.Header.Get("X-Test"), "body": hex.EncodeToString(body),
			"accept_encoding": r.Header.Get("Accept-Encoding"),
		})
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, os.Getenv(r.URL.Query().Get("k")))
	})
	mux.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(os.Stderr, "crashing on purpose")
		os.Exit(7)
	})
	mux.HandleFunc("/truncate", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		_, _ = w.Write([]byte("the first bytes"))
		w.(http.Flusher).Flush()
		fmt.Fprintln(os.Stderr, "dying mid-body")
		os.Exit(9)
	})
	mux.HandleFunc("/spawn", func(w http.ResponseWriter, r *http.Request) {
		cmd := exec.Command("sleep", "100")
		if err := cmd.Start(); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprint(w, cmd.Process.Pid)
	})
	if os.Getenv("IGNORE_TERM") != "" {
		signalIgnore(syscall.SIGTERM)
	}
	_ = http.Serve(l, mux)
}

// pong is what /ping answers.
var pong = []byte("pong!")

// parent starts an http function whose process it prints, then waits to
// be killed.
func parent() {
	exe, _ := os.Executable()
	h, err := process.StartHTTP(context.Background(), process.HTTPConfig{
		Config: process.Config{Name: "orphan", Command: []string{exe}, Dir: os.TempDir(), Env: []string{envMode + "=server"}},
	})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/pid", nil))
	fmt.Println(rec.Body.String())
	// Go on forking from other threads meanwhile, and end some, as a
	// busy runner would.
	for {
		for range 4 {
			go func() { runtimeLockAndExit() }()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// setsidServer runs a server in a session of its own, out of its process
// group, as another program that took its port would be; the server dies
// with it.
func setsidServer() {
	runtime.LockOSThread() // the server's parent-death signal follows this thread
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envMode+"=server")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "server %d\n", cmd.Process.Pid)
	_ = cmd.Wait()
	os.Exit(1)
}

// testBinary is the command that runs this binary as a function.
func testBinary(t testing.TB) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe}
}

// logBuffer collects a logger's lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitLog waits until the log has a line with every one of parts.
func (b *logBuffer) waitLog(t *testing.T, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for line := range strings.Lines(b.String()) {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log line with %q in:\n%s", parts, b.String())
}

func newLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", b.String())
		}
	})
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// serverConfig is the config of an http function run by this binary.
func serverConfig(t testing.TB, env ...string) process.HTTPConfig {
	log, _ := newLogger(t)
	return process.HTTPConfig{
		Config: process.Config{
			Name:    "srv",
			Command: testBinary(t),
			Dir:     t.TempDir(),
			Env:     append([]string{envMode + "=server"}, env...),
			Logger:  log,
		},
		StartTimeout: 10 * time.Second,
	}
}

func startHTTP(t testing.TB, cfg process.HTTPConfig) *process.HTTP {
	t.Helper()
	h, err := process.StartHTTP(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return h
}

// call serves one request with h, within d.
func call(h http.Handler, method, target string, body []byte, d time.Duration) *httptest.ResponseRecorder {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req := httptest.NewRequestWithContext(ctx, method, target, r)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// wantError checks that rec is a Shoal error of that status and code,
// and returns its message.
func wantError(t *testing.T, rec *httptest.ResponseRecorder, status int, code invocation.Code) string {
	t.Helper()
	e, ok := invocation.ParseError(rec.Code, rec.Body.Bytes())
	if rec.Code != status || !ok || e.Code != code {
		t.Fatalf("got %d %q, want %d %s", rec.Code, rec.Body.String(), status, code)
	}
	return e.Message
}

// pidOf reads a pid answered by the server.
func pidOf(t *testing.T, rec *httptest.ResponseRecorder) int {
	t.Helper()
	pid, err := strconv.Atoi(strings.TrimSpace(rec.Body.String()))
	if rec.Code != 200 || err != nil {
		t.Fatalf("got %d %q, want a pid", rec.Code, rec.Body.String())
	}
	return pid
}

// alive reports whether pid is a process that has not exited (a zombie
// has).
func alive(pid int) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// waitGone waits until none of pids is alive.
func waitGone(t *testing.T, d time.Duration, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var left []int
		for _, pid := range pids {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v still alive after %v", left, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func signalIgnore(sig os.Signal) { signal.Ignore(sig) }

// runtimeLockAndExit ends the calling goroutine locked to its thread,
// which ends the thread: a process forked from it would get its
// parent-death signal.
func runtimeLockAndExit() { runtime.LockOSThread() }

// wantPrivate checks that HOME and TMPDIR are in the function's private
// directory, os.TempDir()/shoal-<runner pid>-<function>-*, not in its
// working directory (the code, shared between runners).
func wantPrivate(t *testing.T, home, tmp, function, workdir string) {
	t.Helper()
	private := filepath.Dir(tmp)
	prefix := filepath.Join(os.TempDir(), fmt.Sprintf("shoal-%d-%s-", os.Getpid(), function))
	if !strings.HasPrefix(private, prefix) || tmp != filepath.Join(private, "tmp") {
		t.Errorf("TMPDIR=%q, want %s*/tmp", tmp, prefix)
	}
	if home != filepath.Join(private, "home") || strings.HasPrefix(home, workdir) {
		t.Errorf("HOME=%q, want %s (not the working directory %s)", home, filepath.Join(private, "home"), workdir)
	}
	if fi, err := os.Stat(home); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("HOME %s: %v %v, want a directory of mode 0700", home, fi, err)
	}
}
