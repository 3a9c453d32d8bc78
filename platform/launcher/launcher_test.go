//go:build linux

package launcher_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/bundle"
	"github.com/shoal-dev/shoal/platform/launcher"
	"github.com/shoal-dev/shoal/platform/process"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/secrets"
)

// canary is set in the runner's (the test's) environment; no function
// may see it.
const canary = "SHOAL_LAUNCHER_TEST_CANARY"

// showEnv prints the working directory and the exported environment.
const showEnv = `echo "PWD=$(pwd -P)"
for v in $(compgen -e); do printf '%s=%s\n' "$v" "${!v}"; done
`

// fixture is a NATS server with the code and secret stores, and a
// launcher over them.
type fixture struct {
	js       jetstream.JetStream
	code     *bundle.Store
	secrets  *secrets.Store
	launcher *launcher.Launcher
	cache    string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("the test functions are bash scripts, and bash is not installed")
	}
	s := brokertest.Start(t)
	js, err := jetstream.New(brokertest.Connect(t, s))
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
	cache := filepath.Join(t.TempDir(), "code")
	l, err := launcher.New(launcher.Config{JetStream: js, CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{js: js, code: code, secrets: sec, launcher: l, cache: cache}
}

// upload packs files (slash-separated name → content, *.sh executable)
// and puts them in the code store.
func (f *fixture) upload(t *testing.T, files map[string]string) manifest.CodeRef {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	b, err := bundle.Pack(dir, bundle.PackOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.code.Put(ctx, b, "test"); err != nil {
		t.Fatal(err)
	}
	return manifest.CodeRef{Digest: b.Digest.String(), Size: b.Size}
}

func execFunction(name string, code manifest.CodeRef, command ...string) manifest.Function {
	return manifest.Function{
		Name: name, Timeout: 10 * time.Second, Concurrency: 4, Public: true,
		Handler: manifest.Handler{Exec: &manifest.ExecHandler{Command: command}},
		Process: manifest.Process{Code: code},
	}
}

// start starts fn and closes it with the test.
func (f *fixture) start(t *testing.T, fn manifest.Function) runner.ProcessHandler {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := f.launcher.Start(ctx, fn)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

// run invokes h and returns its answer, which must be 200.
func run(t *testing.T, h http.Handler) string {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("invocation: %d %s", w.Code, w.Body)
	}
	return w.Body.String()
}

// environ parses NAME=VALUE lines.
func environ(out string) map[string]string {
	env := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}

// TestStartEnvironment: a function's process gets its env, its secrets
// and what Shoal tells it, runs in its workdir inside the fetched code,
// and sees nothing of the runner's own environment.
func TestStartEnvironment(t *testing.T) {
	t.Setenv(canary, "leaked")
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.secrets.Set(ctx, "db-password", []byte("hunter2")); err != nil {
		t.Fatal(err)
	}
	code := f.upload(t, map[string]string{"sub/show.sh": showEnv})
	fn := execFunction("show", code, "bash", "show.sh")
	fn.Process.Workdir = "sub"
	fn.Process.Env = map[string]string{"GREETING": "hello"}
	fn.Process.Secrets = map[string]string{"DB_PASSWORD": "db-password"}
	env := environ(run(t, f.start(t, fn)))

	d, err := bundle.ParseDigest(code.Digest)
	if err != nil {
		t.Fatal(err)
	}
	workdir := filepath.Join(f.cache, d.Hex(), "sub")
	realWorkdir, err := filepath.EvalSymlinks(workdir)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"SHOAL_FUNCTION":    "show",
		"SHOAL_CODE_DIGEST": code.Digest,
		"GREETING":          "hello",
		"DB_PASSWORD":       "hunter2",
		"PWD":               realWorkdir,
		"PATH":              os.Getenv("PATH"),
	} {
		if env[k] != want {
			t.Errorf("%s = %q, want %q", k, env[k], want)
		}
	}
	if v, ok := env[canary]; ok {
		t.Errorf("the runner's environment leaked: %s=%q", canary, v)
	}
	// HOME is the function's own, not the code, which runners share.
	if home, prefix := env["HOME"], filepath.Join(os.TempDir(), fmt.Sprintf("shoal-%d-show-", os.Getpid())); !strings.HasPrefix(home, prefix) || filepath.Base(home) != "home" {
		t.Errorf("HOME = %q, want %s*/home", home, prefix)
	}
}

// TestStartRefuses: each reason a runner cannot serve a function is an
// error of Start that says so.
func TestStartRefuses(t *testing.T) {
	f := newFixture(t)
	code := f.upload(t, map[string]string{"handler.sh": "echo hi\n"})
	notUploaded := manifest.CodeRef{Digest: "sha256:" + strings.Repeat("0f", 32), Size: 1}
	withSecret := execFunction("db", code, "bash", "handler.sh")
	withSecret.Process.Secrets = map[string]string{"DB_PASSWORD": "db-password"}
	badWorkdir := execFunction("wd", code, "bash", "handler.sh")
	badWorkdir.Process.Workdir = "nowhere"
	tests := []struct {
		name string
		fn   manifest.Function
		is   error
		not  error // the runtime is looked for before the code is fetched
		say  string
	}{
		{"runtime missing, before any fetch", execFunction("legacy", notUploaded, "shoal-no-such-runtime"), process.ErrRuntimeMissing, bundle.ErrNotFound, "shoal-no-such-runtime"},
		{"code not uploaded", execFunction("gone", notUploaded, "bash", "handler.sh"), bundle.ErrNotFound, nil, notUploaded.Digest},
		{"secret not set", withSecret, secrets.ErrNotFound, nil, `"db-password"`},
		{"workdir not in the code", badWorkdir, nil, nil, `workdir "nowhere"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			h, err := f.launcher.Start(ctx, tt.fn)
			if err == nil {
				_ = h.Close(ctx)
				t.Fatal("Start succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) || tt.not != nil && errors.Is(err, tt.not) || !strings.Contains(err.Error(), tt.say) {
				t.Errorf("Start: %v; want an error wrapping %v, saying %q", err, tt.is, tt.say)
			}
		})
	}
}

// TestStartPathFromEnv: a function that sets PATH in its env runs a
// program found there, as the process package looks it up, although
// the runner's own PATH does not have it.
func TestStartPathFromEnv(t *testing.T) {
	f := newFixture(t)
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "shoal-test-tool"), []byte("#!/bin/sh\necho tool ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	fn := execFunction("tool", f.upload(t, map[string]string{"README": "x"}), "shoal-test-tool")
	fn.Process.Env = map[string]string{"PATH": bin + ":/usr/bin:/bin"}
	if got := run(t, f.start(t, fn)); got != "tool ran\n" {
		t.Errorf("answer %q, want tool ran", got)
	}
}
