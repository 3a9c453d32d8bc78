package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/proctest"
	"github.com/shoal-dev/shoal/platform/catalog"
)

// copyTree copies the directory src to dst, leaving out what builds make
// (node_modules, the Go example's binary), so that tests build their own
// copy and never write into the repository.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() && d.Name() == "node_modules" || rel == filepath.Join("go", "hello") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// processTree lists the live processes descending from pid, by pid, with
// their command names; zombies are left out: they have exited.
func processTree(pid int) map[int]string {
	parent := map[int]int{}
	name := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < 0 {
			continue
		}
		fields := strings.Fields(s[end+1:])
		if len(fields) < 2 || fields[0] == "Z" || fields[0] == "X" {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		parent[p], name[p] = ppid, s[open+1:end]
	}
	out := map[int]string{}
	for p := range parent {
		for q := parent[p]; q > 1; q = parent[q] {
			if q == pid {
				out[p] = name[p]
				break
			}
		}
	}
	return out
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

// waitGone waits up to 10 s for every pid to be gone.
func waitGone(t *testing.T, what string, pids map[int]string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		for pid, name := range pids {
			if alive(pid) {
				left = append(left, fmt.Sprintf("%d (%s)", pid, name))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: processes still running after 10 s: %s", what, strings.Join(left, ", "))
			for pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// functionProcesses are the processes of tree that are functions': not
// shoal itself.
func functionProcesses(tree map[int]string, self string) map[int]string {
	out := map[int]string{}
	for pid, name := range tree {
		if name != self {
			out[pid] = name
		}
	}
	return out
}

// TestUpRunsFunctionsInAnyLanguage runs the examples (bash and Go always,
// Python and Node.js when installed) through `shoal up` as a real process:
// code built and uploaded by up, fetched by digest by each worker, run as
// processes. Then: a runtime missing and a secret not set are reported;
// a new version of the Go server rolls over under load without a failed
// request; rollback; a killed worker's function processes die with it; a
// stop leaves no function process behind.
func TestUpRunsFunctionsInAnyLanguage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the examples")
	}
	dir, data := t.TempDir(), t.TempDir()
	copyTree(t, "../../examples", filepath.Join(dir, "examples"))
	if err := os.MkdirAll(filepath.Join(dir, "extra"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "extra"), "secret.sh", "#!/usr/bin/env bash\nprintf 'password is %s' \"$DB_PASSWORD\"\n")
	withPython := proctest.HaveTools(t, "the Python example", "python3")
	withNode := proctest.HaveTools(t, "the Express example", "node", "npm")

	manifest := func(goSource, greeting string) string {
		m := `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true}
  hello-bash:
    source: examples/bash
    handler: {exec: {command: [bash, handler.sh]}}
    env: {GREETING: "` + greeting + `"}
    public: true
  hello-go:
    source: ` + goSource + `
    build: [go, build, -o, hello, .]
    handler: {http: {command: [./hello], listen: unix, readiness: /}}
    timeout: 10s
    public: true
  secret-bash:
    source: extra
    handler: {exec: {command: [bash, secret.sh]}}
    secrets: {DB_PASSWORD: db-password}
    public: true
  missing-runtime:
    source: extra
    handler: {http: {command: [shoal-test-no-such-runtime, app.js]}}
    public: true
`
		if withPython {
			m += "  hello-python:\n    source: examples/python\n    handler: {http: {command: [python3, serve.py], readiness: /}}\n    public: true\n"
		}
		if withNode {
			m += "  hello-node:\n    source: examples/node-express\n    build: [npm, ci, --omit=dev, --no-audit, --no-fund]\n    handler: {http: {command: [node, index.js], listen: unix, readiness: /ping}}\n    public: true\n"
		}
		return m
	}
	v1 := writeFile(t, dir, "fn.yaml", manifest("examples/go", "v1"))
	p := startShoal(t, "up", "-f", v1, "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "2")
	natsURL := p.waitLog(`msg="nats listening" url=(\S+)`)[1]
	p.waitLog(`msg="runners serving" workers=2`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	admin := []string{"--data", data, "--nats", natsURL}
	shoal := func(args ...string) string {
		t.Helper()
		out, errOut, code := runShoal(t, dir, append(args, admin...)...)
		if code != 0 {
			t.Fatalf("shoal %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
		return out
	}
	call := func(method, path, body string) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequest(method, gw+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	// Every worker starts the functions' processes in the background as
	// it loads the catalog: wait until each function is served by both,
	// or both say why they cannot serve it.
	waitFunction := func(name string, runners, unservable int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			out := shoal("list", "--json")
			var list []struct {
				Name       string   `json:"name"`
				Runners    int      `json:"runners"`
				Unservable []string `json:"unservable"`
			}
			if err := json.Unmarshal([]byte(out), &list); err != nil {
				t.Fatalf("shoal list --json: %v\n%s", err, out)
			}
			for _, f := range list {
				if f.Name == name && f.Runners == runners && len(f.Unservable) == unservable {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not served by %d runners and unservable on %d within 30 s:\n%s", name, runners, unservable, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitServed := func(name string, runners int) { t.Helper(); waitFunction(name, runners, 0) }
	for _, name := range []string{"hello-bash", "hello-go"} {
		waitServed(name, 2)
	}
	if withPython {
		waitServed("hello-python", 2)
	}
	if withNode {
		waitServed("hello-node", 2)
	}
	waitFunction("missing-runtime", 0, 2)
	waitFunction("secret-bash", 0, 2)

	t.Run("examples", func(t *testing.T) {
		status, _, body := call("POST", "/function/hello-bash/y?b=2", "body!")
		for _, want := range []string{"Hello, world, from bash!", "method: POST", "path: /y", "query: b=2", "body:\nbody!"} {
			if status != 200 || !strings.Contains(body, want) {
				t.Errorf("hello-bash: %d %q lacks %q", status, body, want)
			}
		}
		status, h, body := call("GET", "/function/hello-bash/?fail=1", "")
		if status != 500 || h.Get("Content-Type") != "application/json" || !strings.Contains(body, `"code":"function_failed"`) ||
			!strings.Contains(body, "exit status 1: handler.sh: failing on purpose") {
			t.Errorf("hello-bash ?fail=1: %d %s %s", status, h, body)
		}
		if status, _, body := call("GET", "/function/hello-go/", ""); status != 200 || body != "Hello, world! (GET /, function \"hello-go\")\n" {
			t.Errorf("hello-go: %d %q", status, body)
		}
		if withPython {
			status, _, body := call("GET", "/function/hello-python/x?name=Ada", "")
			if status != 200 || !strings.Contains(body, `"path": "/x"`) || !strings.Contains(body, `"function": "hello-python"`) {
				t.Errorf("hello-python: %d %s", status, body)
			}
		}
		if withNode {
			if status, _, body := call("GET", "/function/hello-node/ping", ""); status != 200 || body != "pong!" {
				t.Errorf("hello-node /ping: %d %q", status, body)
			}
		}
	})

	t.Run("not servable", func(t *testing.T) {
		out := shoal("list")
		for _, want := range []string{
			"missing-runtime is not servable on runner ",
			"runtime missing: shoal-test-no-such-runtime not found in PATH",
			"secret-bash is not servable on runner ",
			`DB_PASSWORD: secret "db-password": secret not set`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("shoal list does not say %q:\n%s", want, out)
			}
		}
		if status, _, body := call("GET", "/function/missing-runtime", ""); status != 503 || !strings.Contains(body, "no_runner") {
			t.Errorf("missing-runtime: %d %s", status, body)
		}
	})

	// The secret is set; the next change of the catalog (the rollover
	// below) makes the runners try the function again.
	if out, errOut, code := runShoalIn(t, dir, "hunter2", append([]string{"secret", "set", "db-password"}, admin...)...); code != 0 {
		t.Fatalf("shoal secret set: %d %s%s", code, out, errOut)
	}
	if out := shoal("secret", "ls"); out != "db-password\n" {
		t.Errorf("shoal secret ls = %q", out)
	}

	t.Run("rollover under load", func(t *testing.T) {
		// Version 2 of the Go server: other code, so another digest.
		goV2 := filepath.Join(dir, "go-v2")
		copyTree(t, filepath.Join(dir, "examples", "go"), goV2)
		src := filepath.Join(goV2, "main.go")
		code, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(src, bytes.Replace(code, []byte(`"Hello, %s!`), []byte(`"Howdy, %s!`), 1), 0o644); err != nil {
			t.Fatal(err)
		}
		before := functionProcesses(processTree(p.cmd.Process.Pid), "shoal.test")
		v2 := writeFile(t, dir, "v2.yaml", manifest("go-v2", "v2"))
		var (
			stop              atomic.Bool
			wg                sync.WaitGroup
			mu                sync.Mutex
			ok, failed, howdy int
			failed1           string
		)
		// Until the deploy has returned, bounded in count and time.
		loadEnds := time.Now().Add(time.Minute)
		for range 4 {
			wg.Go(func() {
				for i := 0; i < 50000 && !stop.Load() && time.Now().Before(loadEnds); i++ {
					// Not call: t.Fatal is for the test's goroutine.
					status, body := 0, ""
					resp, err := http.Get(gw + "/function/hello-go/")
					if err != nil {
						body = err.Error()
					} else {
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						status, body = resp.StatusCode, string(b)
					}
					mu.Lock()
					if status == 200 {
						ok++
						if strings.HasPrefix(body, "Howdy") {
							howdy++
						}
					} else {
						failed++
						failed1 = fmt.Sprintf("%d %s", status, body)
					}
					mu.Unlock()
				}
			})
		}
		out := shoal("deploy", "-f", v2)
		time.Sleep(300 * time.Millisecond)
		stop.Store(true)
		wg.Wait()
		if !strings.Contains(out, "updated   hello-go") || !strings.Contains(out, "updated   hello-bash") {
			t.Errorf("deploy of v2:\n%s", out)
		}
		t.Logf("during the rollover: %d answered 200 (%d by version 2), %d failed", ok, howdy, failed)
		if failed > 0 || howdy == 0 || howdy == ok {
			t.Errorf("%d invocations failed during the rollover (first: %s), %d succeeded, %d of them by version 2: the load must span the switch", failed, failed1, ok, howdy)
		}
		// Each worker answers with the new version once its deploy is
		// seen; both have by the time the old processes are gone.
		oldGo := map[int]string{}
		for pid, name := range before {
			if name == "hello" {
				oldGo[pid] = name
			}
		}
		if len(oldGo) != 2 {
			t.Errorf("before the rollover, Go servers %v in %v, want one per worker", oldGo, before)
		}
		waitGone(t, "the Go servers of version 1", oldGo)
		for range 4 {
			if status, _, body := call("GET", "/function/hello-go/", ""); status != 200 || body != "Howdy, world! (GET /, function \"hello-go\")\n" {
				t.Errorf("hello-go after the rollover: %d %q", status, body)
			}
		}
	})

	t.Run("secret", func(t *testing.T) {
		waitServed("secret-bash", 2)
		if status, _, body := call("GET", "/function/secret-bash", ""); status != 200 || body != "password is hunter2" {
			t.Errorf("secret-bash: %d %q", status, body)
		}
		if out := shoal("list", "--json"); strings.Contains(out, "hunter2") || !strings.Contains(out, `"DB_PASSWORD": "db-password"`) {
			t.Errorf("shoal list --json shows the secret's value, or not its name:\n%s", out)
		}
		// Removed: listed no more, and a second removal says it is not set.
		if out := shoal("secret", "rm", "db-password"); out != "removed db-password\n" {
			t.Errorf("shoal secret rm = %q", out)
		}
		if out := shoal("secret", "ls"); out != "" {
			t.Errorf("shoal secret ls after rm = %q", out)
		}
		if _, errOut, code := runShoal(t, dir, append([]string{"secret", "rm", "db-password"}, admin...)...); code == 0 || !strings.Contains(errOut, "secret not set") {
			t.Errorf("a second shoal secret rm: exit %d %s", code, errOut)
		}
	})

	t.Run("rollback", func(t *testing.T) {
		out := shoal("rollback", "hello-go")
		if !strings.Contains(out, "updated   hello-go") {
			t.Fatalf("shoal rollback: %s", out)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			status, _, body := call("GET", "/function/hello-go/", "")
			if status == 200 && strings.HasPrefix(body, "Hello, world!") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("hello-go still answers %d %q 20 s after the rollback", status, body)
			}
			time.Sleep(50 * time.Millisecond)
		}
		list := shoal("rollback", "hello-go", "--list")
		if strings.Count(list, "http:./hello") != 3 {
			t.Fatalf("shoal rollback --list:\n%s", list)
		}
		// Forward again, to the revision named: version 2's.
		v2rev := strings.Fields(strings.Split(strings.TrimSpace(list), "\n")[2])[0]
		if out := shoal("rollback", "hello-go", "--revision", v2rev); !strings.Contains(out, "the definition of revision "+v2rev+")") {
			t.Fatalf("shoal rollback --revision %s: %s", v2rev, out)
		}
		for deadline := time.Now().Add(20 * time.Second); ; {
			status, _, body := call("GET", "/function/hello-go/", "")
			if status == 200 && strings.HasPrefix(body, "Howdy") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("hello-go answers %d %q 20 s after the rollback to revision %s", status, body, v2rev)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Both versions' code is in use by the kept definitions: gc keeps
		// it.
		if out := shoal("code", "gc", "--dry-run", "--min-age", "0s"); out != "" {
			t.Errorf("shoal code gc would remove code in use:\n%s", out)
		}
		if out := shoal("code", "ls"); strings.Count(out, "hello-go") != 2 {
			t.Errorf("shoal code ls:\n%s", out)
		}
	})

	// A build that fails deploys nothing, --no-build skips it; and gc
	// removes the code no kept definition names any more.
	t.Run("build and gc", func(t *testing.T) {
		src := filepath.Join(dir, "gcme")
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		fnFile := writeFile(t, dir, "gc.yaml", "version: 1\nfunctions:\n  gcme:\n    source: gcme\n    build: [\"false\"]\n    handler: {exec: {command: [bash, x.sh]}}\n    public: true\n")
		deploy := func(version int, args ...string) (string, string, int) {
			t.Helper()
			writeFile(t, src, "x.sh", fmt.Sprintf("echo version %d\n", version))
			return runShoal(t, dir, append(append([]string{"deploy", "-f", fnFile}, args...), admin...)...)
		}
		if out, errOut, code := deploy(0); code == 0 || !strings.Contains(errOut, "nothing was deployed") || strings.Contains(shoal("list"), "gcme") {
			t.Fatalf("a deploy whose build fails: exit %d\n%s%s", code, out, errOut)
		}
		uploaded := regexp.MustCompile(`uploaded  gcme code (sha256:[0-9a-f]{64})`)
		var digests []string
		for v := 1; v <= catalog.HistoryDepth+1; v++ {
			out, errOut, code := deploy(v, "--no-build")
			m := uploaded.FindStringSubmatch(errOut)
			if code != 0 || m == nil {
				t.Fatalf("deploy --no-build of version %d: exit %d\n%s%s", v, code, out, errOut)
			}
			digests = append(digests, m[1])
		}
		// The catalog keeps the last HistoryDepth definitions: the first
		// version's code is used by none.
		first := digests[0]
		if out := shoal("code", "gc", "--dry-run", "--min-age", "0s"); !strings.HasPrefix(out, "would remove "+first+" ") || strings.Count(out, "\n") != 1 {
			t.Errorf("shoal code gc --dry-run:\n%s", out)
		}
		if out := shoal("code", "gc", "--min-age", "1h"); out != "" {
			t.Errorf("shoal code gc removed code younger than --min-age:\n%s", out)
		}
		if out := shoal("code", "gc", "--min-age", "0s"); !strings.HasPrefix(out, "removed   "+first+" ") {
			t.Errorf("shoal code gc:\n%s", out)
		}
		ls := shoal("code", "ls")
		if strings.Contains(ls, first) {
			t.Errorf("shoal code ls still lists %s:\n%s", first, ls)
		}
		for _, d := range digests[1:] {
			if !strings.Contains(ls, d) {
				t.Errorf("shoal code ls lost %s, still in use:\n%s", d, ls)
			}
		}
		want := fmt.Sprintf("version %d\n", catalog.HistoryDepth+1)
		for deadline := time.Now().Add(20 * time.Second); ; {
			status, _, body := call("GET", "/function/gcme", "")
			if status == 200 && body == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("gcme: %d %q, want %q", status, body, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("killed worker", func(t *testing.T) {
		tree := processTree(p.cmd.Process.Pid)
		var worker int
		for pid, name := range tree {
			if name == "shoal.test" {
				if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.Contains(cmdline, []byte("--worker\x001\x00")) {
					worker = pid
				}
			}
		}
		if worker == 0 {
			t.Fatalf("no worker 1 among %v", tree)
		}
		children := functionProcesses(processTree(worker), "shoal.test")
		if len(children) == 0 {
			t.Fatalf("worker %d runs no function process", worker)
		}
		if err := syscall.Kill(worker, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitGone(t, "the function processes of a worker killed with SIGKILL", children)
	})

	// A stop drains and leaves no function process behind.
	left := functionProcesses(processTree(p.cmd.Process.Pid), "shoal.test")
	if len(left) == 0 {
		t.Error("no function process runs before the stop")
	}
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Errorf("shoal up exited with %v", err)
	}
	waitGone(t, "the function processes after shoal up stopped", left)
	logText := p.output()
	if strings.Contains(logText, "hunter2") {
		t.Error("the log holds the secret's value")
	}
	sc := bufio.NewScanner(strings.NewReader(logText))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "DATA RACE") {
			t.Errorf("data race in shoal up:\n%s", logText)
			break
		}
	}
}

// TestUpKillsWhatAKilledWorkersFunctionsLeft: a function's server dies
// with its worker (the parent-death signal), but what the server started
// does not get that signal: up, their subreaper, kills and reaps it. The
// worker is re-forked and the function serves again; a stop leaves no
// process behind.
func TestUpKillsWhatAKilledWorkersFunctionsLeft(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the Go example")
	}
	dir, data := t.TempDir(), t.TempDir()
	fn := filepath.Join(dir, "fn")
	copyTree(t, "../../examples/go", fn)
	// The sleep is in the server's process group, as any process a
	// function starts is; bash forks it, then becomes the server.
	// Its length is the test's own, so that what a failure leaves can be
	// found and killed.
	length := strconv.Itoa(1_000_000 + os.Getpid())
	writeFile(t, fn, "start.sh", "sleep "+length+" &\nexec ./hello\n")
	t.Cleanup(func() { // runs after up is stopped or killed
		time.Sleep(100 * time.Millisecond) // for the parent-death signals
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || !alive(pid) {
				continue
			}
			if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); string(cmdline) == "sleep\x00"+length+"\x00" {
				t.Errorf("sleep %d left running", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	m := writeFile(t, dir, "fn.yaml", `version: 1
functions:
  leaver:
    source: fn
    build: [go, build, -o, hello, .]
    handler: {http: {command: [bash, start.sh], listen: unix, readiness: /}}
    public: true
`)
	p := startShoal(t, "up", "-f", m, "--http", "127.0.0.1:0", "--nats", "127.0.0.1:0", "--data", data, "--workers", "1")
	p.waitLog(`msg="runners serving" workers=1`)
	gw := p.waitLog(`msg="gateway listening" url=(\S+)`)[1]
	serves := func(what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Get(gw + "/function/leaver/")
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 && strings.HasPrefix(string(b), "Hello, world!") {
					return
				}
				err = fmt.Errorf("%s: %s", resp.Status, b)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the function does not serve within 30 s: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// functionTree returns the worker, its server and the server's sleep.
	functionTree := func() (worker, server, sleep int) {
		t.Helper()
		for pid, name := range processTree(p.cmd.Process.Pid) {
			if name == "shoal.test" {
				worker = pid
			}
		}
		for pid, name := range processTree(worker) {
			switch name {
			case "hello":
				server = pid
			case "sleep":
				sleep = pid
			}
		}
		if worker == 0 || server == 0 || sleep == 0 {
			t.Fatalf("no worker, server or sleep among %v", processTree(p.cmd.Process.Pid))
		}
		return worker, server, sleep
	}
	serves("at start")
	worker, server, sleep := functionTree()
	if g := processGroup(t, sleep); g != server {
		t.Fatalf("the sleep %d is in group %d, not in its server's (%d)", sleep, g, server)
	}

	if err := syscall.Kill(worker, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Gone, and reaped: not a zombie of up's.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", sleep))
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			state := "running"
			if !alive(sleep) {
				state = "a zombie"
			}
			t.Fatalf("the sleep %d its function started is still %s 5 s after its worker was killed", sleep, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !regexp.MustCompile(fmt.Sprintf(`level=WARN msg="killed an orphaned process" .*pid=%d command=sleep`, sleep)).MatchString(p.output()) {
		t.Errorf("up did not log the sleep %d it killed at WARN", sleep)
	}

	serves("after the worker was killed")
	worker2, _, sleep2 := functionTree()
	if worker2 == worker || sleep2 == sleep {
		t.Errorf("worker %d, sleep %d: not re-forked", worker2, sleep2)
	}
	left := processTree(p.cmd.Process.Pid)
	if err := p.stop(syscall.SIGTERM); err != nil {
		t.Errorf("shoal up exited with %v", err)
	}
	waitGone(t, "the processes after shoal up stopped", left)
}

// processGroup returns the process group of pid.
func processGroup(t *testing.T, pid int) int {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // state ppid pgrp ...
	g, err := strconv.Atoi(fields[2])
	if err != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	return g
}
