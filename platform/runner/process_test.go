//go:build linux

package runner_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/bundle"
	"github.com/shoal-dev/shoal/platform/catalog"
	"github.com/shoal-dev/shoal/platform/launcher"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
	"github.com/shoal-dev/shoal/platform/secrets"
	"github.com/shoal-dev/shoal/token/tokentest"
)

// The test binary is also the http functions' server: TestMain runs it
// as one when the function's env sets modeEnv (a name a function may
// set in fn.yaml, unlike SHOAL_*).
const modeEnv = "RUNNERTEST_MODE"

func TestMain(m *testing.M) {
	switch os.Getenv(modeEnv) {
	case "":
		os.Exit(m.Run())
	case "server":
		serveFunction()
	case "hang":
		// A version that never gets ready: it does not listen.
		time.Sleep(time.Hour)
	case "crash":
		// A version that cannot start: it exits before it listens.
		fmt.Fprintln(os.Stderr, "boom: cannot open the database")
		os.Exit(3)
	default:
		fmt.Fprintln(os.Stderr, "unknown", modeEnv, os.Getenv(modeEnv))
		os.Exit(2)
	}
}

// serveFunction is an http function listening on PORT. Every path
// answers "VERSION PID", VERSION from the file ./version of its code if
// there is one, else from env VERSION; ?wait=FILE answers once FILE
// exists (at most 10 s later).
func serveFunction() {
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	version := os.Getenv("VERSION")
	if b, err := os.ReadFile("version"); err == nil {
		version = strings.TrimSpace(string(b))
	}
	answer := version + " " + strconv.Itoa(os.Getpid())
	_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := r.URL.Query().Get("wait"); f != "" {
			for range 1000 {
				if _, err := os.Stat(f); err == nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		fmt.Fprint(w, answer)
	}))
}

// fixture is a NATS server with the code and secret stores, the
// launcher a runner starts functions' processes with, and a client
// connection, as `shoal up` wires them.
type fixture struct {
	t        *testing.T
	s        *broker.Server
	nc       *nats.Conn
	code     *bundle.Store
	secrets  *secrets.Store
	launcher *launcher.Launcher
	log      *slog.Logger
	logs     *lockedBuffer
	// self is the test binary, the http functions' program.
	self string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	// The runner's and the functions' log, shown if the test fails; it
	// is printed last, after the runner stopped.
	logs := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("runner log:\n%s", logs.String())
		}
	})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := brokertest.Start(t)
	nc := brokertest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, err := bundle.Create(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := secrets.Create(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l, err := launcher.New(launcher.Config{JetStream: js, CacheDir: filepath.Join(t.TempDir(), "code"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, s: s, nc: nc, code: code, secrets: sec, launcher: l, log: log, logs: logs, self: self}
}

// lockedBuffer is a log destination safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// upload packs a source directory holding files (name → content; *.sh
// executable) and puts it in the code store, as `shoal deploy` does.
func (f *fixture) upload(files map[string]string) manifest.CodeRef {
	f.t.Helper()
	dir := f.t.TempDir()
	files = maps.Clone(files)
	if len(files) == 0 {
		files = map[string]string{"README": "the code of a test function\n"}
	}
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			f.t.Fatal(err)
		}
	}
	b, err := bundle.Pack(dir, bundle.PackOptions{TempDir: f.t.TempDir()})
	if err != nil {
		f.t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.code.Put(ctx, b, "test"); err != nil {
		f.t.Fatal(err)
	}
	return manifest.CodeRef{Digest: b.Digest.String(), Size: b.Size}
}

// httpFunction is a public http function served by serveFunction, one
// process for every invocation, with env added to its environment.
func (f *fixture) httpFunction(name string, code manifest.CodeRef, env map[string]string) manifest.Function {
	vars := map[string]string{modeEnv: "server"}
	maps.Copy(vars, env)
	return manifest.Function{
		Name: name, Timeout: 10 * time.Second, Concurrency: 100, Public: true,
		Handler: manifest.Handler{HTTP: &manifest.HTTPHandler{
			Command: []string{f.self}, Listen: manifest.ListenPort, StartTimeout: 10 * time.Second,
		}},
		Process: manifest.Process{Code: code, Env: vars},
	}
}

// execFunction is a public exec function running command in its code.
func execFunction(name string, code manifest.CodeRef, command ...string) manifest.Function {
	return manifest.Function{
		Name: name, Timeout: 10 * time.Second, Concurrency: 100, Public: true,
		Handler: manifest.Handler{Exec: &manifest.ExecHandler{Command: command}},
		Process: manifest.Process{Code: code},
	}
}

// startRunner starts a runner of fns whose processes the fixture's
// launcher starts; it stops with the test.
func (f *fixture) startRunner(cfg runner.Config, fns ...manifest.Function) *runner.Runner {
	f.t.Helper()
	cfg.Manifest = &manifest.Manifest{File: "fn.yaml", Version: 1, Functions: fns}
	cfg.Processes = f.launcher
	cfg.Logger = f.log
	r := runnertest.Start(f.t, f.s.ClientURL(), cfg)
	waitStarts(f.t, r)
	return r
}

// waitStarts waits until the processes the runner is starting in the
// background are started and served (or found unservable).
func waitStarts(t *testing.T, r *runner.Runner) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.WaitStarts(ctx); err != nil {
		t.Fatal(err)
	}
}

// setFunctions replaces the runner's functions, as the catalog does.
func setFunctions(t *testing.T, r *runner.Runner, fns ...manifest.Function) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.SetFunctions(ctx, fns); err != nil {
		t.Fatalf("SetFunctions: %v", err)
	}
	waitStarts(t, r)
}

// invoke sends an invocation over NATS as the gateway does; header
// holds HTTP headers besides the invocation's.
func (f *fixture) invoke(name, query string, header map[string]string) (status int, body string, reply *nats.Msg, err error) {
	msg := nats.NewMsg(invocation.Subject(name))
	msg.Header.Set(invocation.HeaderMethod, http.MethodGet)
	msg.Header.Set(invocation.HeaderQuery, query)
	for k, v := range header {
		msg.Header.Set(k, v)
	}
	reply, err = f.nc.RequestMsg(msg, 15*time.Second)
	if err != nil {
		return 0, "", nil, err
	}
	status, err = invocation.ReadReply(http.Header{}, reply.Header)
	return status, string(reply.Data), reply, err
}

// answer invokes an http function that must answer 200, and returns the
// version and the pid of the process that answered.
func (f *fixture) answer(name, query string, header map[string]string) (version string, pid int) {
	f.t.Helper()
	status, body, _, err := f.invoke(name, query, header)
	if err != nil || status != http.StatusOK {
		f.t.Fatalf("invoke %s: %d %q %v", name, status, body, err)
	}
	return parseAnswer(f.t, body)
}

func parseAnswer(t *testing.T, body string) (version string, pid int) {
	t.Helper()
	version, p, ok := strings.Cut(body, " ")
	pid, err := strconv.Atoi(p)
	if !ok || err != nil || pid <= 0 {
		t.Fatalf("answer %q is not VERSION PID", body)
	}
	return version, pid
}

// alive reports whether the process pid exists, a zombie included: the
// process package reaps its processes, so a zombie is a leak too.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// procState is the state of pid from /proc, for failure messages.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "gone"
	}
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return "state " + string(b[i+2])
	}
	return string(b)
}

// waitGone waits, at most 5 s, until the process pid is gone.
func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still runs 5s later: %s", what, pid, procState(pid))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFor polls cond, at most 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting, after 5s, for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func requireBash(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("exec functions here are bash scripts, and bash is not installed")
	}
}

// TestProcessRollover: under steady load, a new version of an http
// function takes over without one invocation failing; every invocation
// sent after SetFunctions and WaitStarts returned is answered by the new
// version, and
// the old version's process goes away.
func TestProcessRollover(t *testing.T) {
	f := newFixture(t)
	code := f.upload(nil)
	r := f.startRunner(runner.Config{}, f.httpFunction("web", code, map[string]string{"VERSION": "1"}))
	_, pid1 := f.answer("web", "", nil)

	var (
		swapped                           atomic.Bool
		sent, v1, v2, v1AfterSwap, failed atomic.Int64
		errMu                             sync.Mutex
		firstErr                          string
		wg                                sync.WaitGroup
	)
	stop := make(chan struct{})
	stopLoad := sync.OnceFunc(func() { close(stop) })
	defer wg.Wait()
	// If the test fails first, the load stops with it.
	defer stopLoad()
	// A bound: the test stops the load much sooner.
	deadline := time.Now().Add(10 * time.Second)
	for range 8 {
		wg.Go(func() {
			for time.Now().Before(deadline) && sent.Add(1) <= 50_000 {
				select {
				case <-stop:
					return
				default:
				}
				after := swapped.Load()
				status, body, _, err := f.invoke("web", "", nil)
				version, _, _ := strings.Cut(body, " ")
				switch {
				case err != nil || status != http.StatusOK:
					failed.Add(1)
					errMu.Lock()
					if firstErr == "" {
						firstErr = fmt.Sprintf("%d %q %v", status, body, err)
					}
					errMu.Unlock()
				case version == "2":
					v2.Add(1)
				case after:
					v1AfterSwap.Add(1)
				default:
					v1.Add(1)
				}
			}
		})
	}
	waitFor(t, "answers of version 1 under load", func() bool { return v1.Load() >= 50 })
	start := time.Now()
	setFunctions(t, r, f.httpFunction("web", code, map[string]string{"VERSION": "2"}))
	took := time.Since(start)
	swapped.Store(true)
	waitFor(t, "answers of version 2 under load", func() bool { return v2.Load() >= 200 })
	stopLoad()
	wg.Wait()
	t.Logf("%d invocations of version 1, %d of version 2; the swap took %v", v1.Load(), v2.Load(), took.Round(time.Millisecond))

	if n := failed.Load(); n > 0 {
		t.Errorf("%d invocations failed during the rollover; the first: %s", n, firstErr)
	}
	if n := v1AfterSwap.Load(); n > 0 {
		t.Errorf("%d invocations sent after SetFunctions returned were answered by version 1", n)
	}
	waitGone(t, pid1, "version 1's process")
	version, pid2 := f.answer("web", "", nil)
	if version != "2" || pid2 == pid1 || !alive(pid2) {
		t.Errorf("after the rollover: version %s pid %d (alive %v), want version 2 in a process other than %d", version, pid2, alive(pid2), pid1)
	}
}

// TestProcessInFlightFinishesOnOldVersion: an invocation running on the
// old version when a new one (new code) takes over ends there, with its
// answer; the old version's process lives until then, and only until
// then.
func TestProcessInFlightFinishesOnOldVersion(t *testing.T) {
	f := newFixture(t)
	codeV1, codeV2 := f.upload(map[string]string{"version": "1"}), f.upload(map[string]string{"version": "2"})
	r := f.startRunner(runner.Config{}, f.httpFunction("web", codeV1, nil))
	_, pid1 := f.answer("web", "", nil)

	release := filepath.Join(t.TempDir(), "release")
	// A test that fails first releases it before the runner stops.
	t.Cleanup(func() { _ = os.WriteFile(release, nil, 0o600) })
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		status, body, _, err := f.invoke("web", "wait="+release, nil)
		done <- result{status, body, err}
	}()
	waitFor(t, "the slow invocation to run", func() bool { s, _ := r.Stats("web"); return s.InFlight == 1 })

	setFunctions(t, r, f.httpFunction("web", codeV2, nil))
	if version, pid2 := f.answer("web", "", nil); version != "2" || pid2 == pid1 {
		t.Fatalf("after SetFunctions: version %s pid %d, want version 2 in a new process", version, pid2)
	}
	// The old process serves the invocation still running on it: it
	// must not be closed meanwhile (retire would close it at once if
	// the invocation were not counted).
	for range 30 {
		select {
		case res := <-done:
			t.Fatalf("the slow invocation ended before it was released: %+v", res)
		default:
		}
		if !alive(pid1) {
			t.Fatalf("version 1's process (pid %d) is gone while an invocation runs on it", pid1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if res.err != nil || res.status != http.StatusOK {
			t.Fatalf("the slow invocation: %d %q %v", res.status, res.body, res.err)
		}
		if version, pid := parseAnswer(t, res.body); version != "1" || pid != pid1 {
			t.Errorf("the slow invocation was answered by version %s pid %d, want version 1 pid %d", version, pid, pid1)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the slow invocation did not end")
	}
	waitGone(t, pid1, "version 1's process, once its last invocation ended")
}

// TestProcessRuntimeMissing: a function whose runtime is not installed
// on the runner is not served, and the runner says why: Unservable, its
// service metadata, and so catalog.Serving (shoal list). The runtime is
// looked for before the code is fetched: this code was never uploaded.
func TestProcessRuntimeMissing(t *testing.T) {
	f := newFixture(t)
	fn := execFunction("legacy", manifest.CodeRef{Digest: "sha256:" + strings.Repeat("ab", 32), Size: 1}, "shoal-no-such-runtime", "x")
	r := f.startRunner(runner.Config{}, fn)

	if got := r.Functions(); len(got) != 0 {
		t.Errorf("Functions() = %v, want none", got)
	}
	why := r.Unservable()["legacy"]
	if !strings.Contains(why, "runtime missing") || !strings.Contains(why, "shoal-no-such-runtime") {
		t.Errorf("Unservable()[legacy] = %q, want the missing runtime named", why)
	}
	if _, _, _, err := f.invoke("legacy", "", nil); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("invoking it: %v, want no responders", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msgs, err := invocation.Discover(ctx, f.nc, micro.InfoVerb, 2*time.Second)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("INFO: %d answers, %v", len(msgs), err)
	}
	var info micro.Info
	if err := json.Unmarshal(msgs[0].Data, &info); err != nil {
		t.Fatal(err)
	}
	var meta map[string]string
	if err := json.Unmarshal([]byte(info.Metadata[invocation.UnservableMetadata]), &meta); err != nil {
		t.Fatalf("metadata %s = %q: %v", invocation.UnservableMetadata, info.Metadata[invocation.UnservableMetadata], err)
	}
	// Reasons are cut to 256 bytes in the metadata.
	if got := meta["legacy"]; len(meta) != 1 || len(got) > 256 || !strings.HasPrefix(got, "runtime missing: shoal-no-such-runtime") {
		t.Errorf("metadata %s = %v, want legacy: the start of %q", invocation.UnservableMetadata, meta, why)
	}

	av, err := catalog.Serving(ctx, f.nc, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := av.Unservable["legacy"]; len(got) != 1 || !strings.Contains(got[0], r.ID()) || !strings.Contains(got[0], "runtime missing") {
		t.Errorf("catalog.Serving: Unservable[legacy] = %q, want this runner and the missing runtime", got)
	}
	if av.Runners["legacy"] != 0 {
		t.Errorf("catalog.Serving: %d runners serve legacy, want 0", av.Runners["legacy"])
	}
}

// TestProcessNewVersionThatDoesNotStart: a new version whose process
// exits at once leaves the running version serving when it grants the
// same access, and is listed as unservable; a later good version takes
// over; a failing version that changes the permissions leaves the
// function not served at all.
func TestProcessNewVersionThatDoesNotStart(t *testing.T) {
	f := newFixture(t)
	key, v := tokentest.Key(t)
	auth := map[string]string{"Authorization": tokentest.Bearer(t, key, "alice")("web.call", "web.admin")}
	code := f.upload(nil)
	version := func(env map[string]string, perms ...string) manifest.Function {
		fn := f.httpFunction("web", code, env)
		fn.Public, fn.Permissions = false, perms
		return fn
	}
	r := f.startRunner(runner.Config{Verifier: v}, version(map[string]string{"VERSION": "1"}, "web.call"))
	_, pid1 := f.answer("web", "", auth)
	crashing := map[string]string{"VERSION": "2", modeEnv: "crash"}

	// Same access: version 1 serves on.
	setFunctions(t, r, version(crashing, "web.call"))
	if got, pid := f.answer("web", "", auth); got != "1" || pid != pid1 {
		t.Errorf("after a version that does not start: answered by version %s pid %d, want version 1 pid %d", got, pid, pid1)
	}
	// What the process wrote is logged, never in the reason, which NATS
	// clients read in the service metadata.
	why := r.Unservable()["web"]
	if !strings.Contains(why, "previous one serves on") || !strings.Contains(why, "exit status 3") || strings.Contains(why, "boom") {
		t.Errorf("Unservable()[web] = %q, want the previous version serving on and the new one's exit, without its stderr", why)
	}
	if !strings.Contains(f.logs.String(), "boom: cannot open the database") {
		t.Error("the log lacks the new version's stderr")
	}

	// A good version takes over, and the failure is forgotten.
	setFunctions(t, r, version(map[string]string{"VERSION": "3"}, "web.call"))
	_, pid3 := f.answer("web", "", auth)
	if got, _ := f.answer("web", "", auth); got != "3" {
		t.Errorf("after version 3: answered by version %s", got)
	}
	if u := r.Unservable(); len(u) != 0 {
		t.Errorf("Unservable() = %v, want none", u)
	}
	waitGone(t, pid1, "version 1's process")

	// Changed access: version 3 must not serve on under the old
	// permissions.
	setFunctions(t, r, version(crashing, "web.admin"))
	if got := r.Functions(); len(got) != 0 {
		t.Errorf("Functions() = %v, want none", got)
	}
	if status, body, _, err := f.invoke("web", "", auth); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("invoking it: %d %q %v, want no responders", status, body, err)
	}
	why = r.Unservable()["web"]
	if strings.Contains(why, "serves on") || !strings.Contains(why, "exit status 3") {
		t.Errorf("Unservable()[web] = %q, want the new version's failure alone", why)
	}
	waitGone(t, pid3, "version 3's process")
}

// TestProcessSecret: a function whose secret is not set is not served,
// and says which secret; once it is set, the next SetFunctions (the
// catalog's next change, or the runner's retry) serves it, and its
// process sees the value.
func TestProcessSecret(t *testing.T) {
	requireBash(t)
	f := newFixture(t)
	fn := execFunction("db", f.upload(map[string]string{"handler.sh": `printf '%s' "$DB_PASSWORD"`}), "bash", "handler.sh")
	fn.Process.Secrets = map[string]string{"DB_PASSWORD": "db-password"}
	r := f.startRunner(runner.Config{}, fn)

	if got := r.Functions(); len(got) != 0 {
		t.Errorf("Functions() = %v, want none", got)
	}
	if why := r.Unservable()["db"]; !strings.Contains(why, `"db-password"`) {
		t.Errorf("Unservable()[db] = %q, want the missing secret named", why)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.secrets.Set(ctx, "db-password", []byte("hunter2")); err != nil {
		t.Fatal(err)
	}
	setFunctions(t, r, fn)
	if got := r.Functions(); !slices.Equal(got, []string{"db"}) {
		t.Errorf("Functions() = %v, want [db]", got)
	}
	if u := r.Unservable(); len(u) != 0 {
		t.Errorf("Unservable() = %v, want none", u)
	}
	if status, body, _, err := f.invoke("db", "", nil); err != nil || status != http.StatusOK || body != "hunter2" {
		t.Errorf("invoke db: %d %q %v, want 200 hunter2", status, body, err)
	}
	av, err := catalog.Serving(ctx, f.nc, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(av.Unservable) != 0 || av.Runners["db"] != 1 {
		t.Errorf("catalog.Serving: %+v, want db served by 1 runner and nothing unservable", av)
	}
}

// TestProcessStopClosesProcesses: a runner's Stop lets the invocation
// still running on a replaced version end, then stops every function's
// processes, the replaced version's included, before it returns.
func TestProcessStopClosesProcesses(t *testing.T) {
	f := newFixture(t)
	code := f.upload(nil)
	a1 := f.httpFunction("a", code, map[string]string{"VERSION": "1"})
	b := f.httpFunction("b", code, map[string]string{"VERSION": "b"})
	b.Handler.HTTP.PerSlot, b.Concurrency = true, 2
	r := f.startRunner(runner.Config{}, a1, b)
	_, pidA1 := f.answer("a", "", nil)
	_, pidB := f.answer("b", "", nil)

	release := filepath.Join(t.TempDir(), "release")
	// A test that fails first releases it before the runner stops.
	t.Cleanup(func() { _ = os.WriteFile(release, nil, 0o600) })
	slow := make(chan int, 1)
	go func() {
		status, _, _, _ := f.invoke("a", "wait="+release, nil)
		slow <- status
	}()
	waitFor(t, "the slow invocation to run", func() bool { s, _ := r.Stats("a"); return s.InFlight == 1 })
	setFunctions(t, r, f.httpFunction("a", code, map[string]string{"VERSION": "2"}), b)
	_, pidA2 := f.answer("a", "", nil)

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		stopped <- r.Stop(ctx)
	}()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned while an invocation ran: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Stop: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Stop did not return")
	}
	if status := <-slow; status != http.StatusOK {
		t.Errorf("the invocation running at Stop: %d, want 200", status)
	}
	for name, pid := range map[string]int{"a version 1": pidA1, "a version 2": pidA2, "b": pidB} {
		if alive(pid) {
			t.Errorf("%s's process (pid %d) survived Stop: %s", name, pid, procState(pid))
		}
	}
}

// TestProcessExecFailure: an exec function whose script fails answers
// 500 function_failed with the tail of its stderr, as an invocation
// error the runner counts.
func TestProcessExecFailure(t *testing.T) {
	requireBash(t)
	f := newFixture(t)
	code := f.upload(map[string]string{"fail.sh": "echo 'bad input' >&2\nexit 3\n"})
	r := f.startRunner(runner.Config{}, execFunction("fail", code, "bash", "fail.sh"))

	status, body, reply, err := f.invoke("fail", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusInternalServerError || reply.Header.Get(micro.ErrorCodeHeader) != "500" {
		t.Errorf("status %d (%s %q), want 500", status, micro.ErrorCodeHeader, reply.Header.Get(micro.ErrorCodeHeader))
	}
	if got := invocation.Code(reply.Header.Get(invocation.HeaderError)); got != invocation.CodeFunctionFailed {
		t.Errorf("%s = %q, want %s", invocation.HeaderError, got, invocation.CodeFunctionFailed)
	}
	ierr, ok := invocation.ParseError(status, []byte(body))
	if !ok || ierr.Code != invocation.CodeFunctionFailed || !strings.Contains(ierr.Message, "exit status 3: bad input") {
		t.Errorf("body %q, want a function_failed error with the exit status and stderr", body)
	}
	st, _ := r.Stats("fail")
	if st.Completed != 1 || st.Errors != 1 || !strings.Contains(st.LastError, "bad input") {
		t.Errorf("stats %+v, want 1 completed, 1 error", st)
	}
}

// TestProcessStartsHoldNothingBack: a function whose processes take long
// to start (here, never get ready) delays no other change: SetFunctions
// returns at once, a removal applies at once, and a function removed or
// replaced while it starts is not served when its start ends, nor are
// the processes it started left running.
func TestProcessStartsHoldNothingBack(t *testing.T) {
	f := newFixture(t)
	code := f.upload(nil)
	web := f.httpFunction("web", code, map[string]string{"VERSION": "1"})
	r := f.startRunner(runner.Config{}, web)
	hang := f.httpFunction("hang", code, map[string]string{modeEnv: "hang"})
	h := *hang.Handler.HTTP
	h.StartTimeout = time.Minute
	hang.Handler.HTTP = &h
	apply := func(what string, fns ...manifest.Function) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		began := time.Now()
		if err := r.SetFunctions(ctx, fns); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if took := time.Since(began); took > 5*time.Second {
			t.Errorf("%s took %v: a start under way held it back", what, took.Round(time.Millisecond))
		}
	}
	apply("adding hang", web, hang)
	if got := r.Functions(); !slices.Equal(got, []string{"web"}) {
		t.Errorf("Functions() while hang starts = %v, want [web]", got)
	}
	apply("removing web while hang starts", hang)
	if got := r.Functions(); len(got) != 0 {
		t.Errorf("Functions() after web's removal = %v, want none", got)
	}
	if status, _, _, err := f.invoke("web", "", nil); err == nil {
		t.Errorf("web answered %d after its removal", status)
	}
	// hang is removed while it starts: its start is cut short, its
	// process stopped, and it is never served.
	apply("removing hang while it starts", web)
	waitStarts(t, r)
	if got := r.Functions(); !slices.Equal(got, []string{"web"}) {
		t.Errorf("Functions() = %v, want [web]", got)
	}
	waitFor(t, "no process of hang left", func() bool {
		for _, pid := range pidsWithEnv(t, modeEnv+"=hang") {
			if alive(pid) {
				return false
			}
		}
		return true
	})
}

// pidsWithEnv lists the processes whose environment holds kv.
func pidsWithEnv(t *testing.T, kv string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && slices.Contains(strings.Split(string(env), "\x00"), kv) {
			pids = append(pids, pid)
		}
	}
	return pids
}
