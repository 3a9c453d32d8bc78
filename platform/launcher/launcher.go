// Package launcher starts the functions that run as processes (http and
// exec handlers in fn.yaml) for a runner: it fetches the function's code
// by digest from the code store (platform/bundle) into a local cache,
// resolves its secrets (platform/secrets), builds its environment and
// starts its processes (platform/process). It is the runner's
// [runner.ProcessStarter].
package launcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/bundle"
	"github.com/shoal-dev/shoal/platform/process"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/secrets"
)

// Config configures a Launcher.
type Config struct {
	// JetStream is where the code store (platform/bundle) and the secret
	// store (platform/secrets) are; required. They are opened at each
	// start, so that stores created after the runner are found.
	JetStream jetstream.JetStream
	// CacheDir holds the unpacked code, one directory per digest; the
	// runners of one machine may share it.
	CacheDir string
	// MaxOutput bounds an exec function's answer (what a NATS reply
	// carries); 0 means process.DefaultMaxOutput.
	MaxOutput int
	// CgroupParent is a delegated cgroup v2 directory for the functions'
	// cgroups; "" means the runner's own, when it can be used.
	CgroupParent string
	// Logger receives the functions' output and the launcher's log.
	Logger *slog.Logger
}

// Launcher starts functions' processes.
type Launcher struct {
	cfg Config
	log *slog.Logger
}

// New returns a launcher. The cache directory is created at the first
// start, so that a runner serving only built-ins needs no writable disk.
func New(cfg Config) (*Launcher, error) {
	if cfg.JetStream == nil {
		return nil, errors.New("launcher: no JetStream")
	}
	if cfg.CacheDir == "" {
		return nil, errors.New("launcher: no cache directory")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Launcher{cfg: cfg, log: log}, nil
}

// DefaultCacheDir is where a runner keeps functions' code unless told
// otherwise: shoal/code in the user's cache directory.
func DefaultCacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "shoal", "code")
}

// Start fetches fn's code, checks its runtime is here, and starts its
// processes: an http function is ready when Start returns.
func (l *Launcher) Start(ctx context.Context, fn manifest.Function) (runner.ProcessHandler, error) {
	argv := fn.Handler.Command()
	if len(argv) == 0 {
		return nil, fmt.Errorf("function %q does not run as processes", fn.Name)
	}
	// A runtime named by the command (python3, node) is looked for
	// first, in the PATH the function gets: without it, fetching the
	// code is pointless.
	var pathEnv []string
	if p, ok := fn.Process.Env["PATH"]; ok {
		pathEnv = []string{"PATH=" + p}
	}
	if err := process.LookRuntime(argv[0], pathEnv); err != nil {
		return nil, err
	}
	d, err := bundle.ParseDigest(fn.Process.Code.Digest)
	if err != nil {
		return nil, fmt.Errorf("function %q: %w", fn.Name, err)
	}
	if err := os.MkdirAll(l.cfg.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("code cache: %w", err)
	}
	code, err := bundle.Open(ctx, l.cfg.JetStream)
	if err != nil {
		return nil, fmt.Errorf("fetch the code: %w", err)
	}
	root, err := code.Fetch(ctx, d, l.cfg.CacheDir)
	if err != nil {
		return nil, fmt.Errorf("fetch the code: %w", err)
	}
	dir := filepath.Join(root, filepath.FromSlash(fn.Process.Workdir))
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("workdir %q is not a directory of the code", fn.Process.Workdir)
	}
	env, err := l.env(ctx, fn)
	if err != nil {
		return nil, err
	}
	cfg := process.Config{
		Name:         fn.Name,
		Command:      argv,
		Dir:          dir,
		Env:          env,
		Limits:       process.Limits{MemoryBytes: fn.Process.Limits.Memory, CPU: fn.Process.Limits.CPU, OpenFiles: fn.Process.Limits.OpenFiles},
		CgroupParent: l.cfg.CgroupParent,
		Logger:       l.log, // the process package names the function
	}
	if h := fn.Handler.HTTP; h != nil {
		p, err := process.StartHTTP(ctx, process.HTTPConfig{
			Config: cfg, Listen: h.Listen, Readiness: h.Readiness,
			PerSlot: h.PerSlot, Slots: fn.Concurrency, StartTimeout: h.StartTimeout,
		})
		if err != nil {
			return nil, err
		}
		return p, nil
	}
	p, err := process.NewExec(process.ExecConfig{Config: cfg, MaxOutput: l.cfg.MaxOutput})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// env is the function's environment: its env, its secrets, and what
// Shoal tells every function. Nothing of the runner's own environment
// (its NATS credentials, its keys) is passed; the process package adds
// PATH, HOME, LANG and TMPDIR.
func (l *Launcher) env(ctx context.Context, fn manifest.Function) ([]string, error) {
	vars := maps.Clone(fn.Process.Env)
	if vars == nil {
		vars = map[string]string{}
	}
	if len(fn.Process.Secrets) > 0 {
		store, err := secrets.Open(ctx, l.cfg.JetStream)
		if err != nil {
			return nil, err
		}
		values, err := store.Resolve(ctx, fn.Process.Secrets)
		if err != nil {
			return nil, fmt.Errorf("secrets (shoal secret set NAME): %w", err)
		}
		maps.Copy(vars, values)
	}
	vars["SHOAL_FUNCTION"] = fn.Name
	vars["SHOAL_CODE_DIGEST"] = fn.Process.Code.Digest
	env := make([]string, 0, len(vars))
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		env = append(env, k+"="+vars[k])
	}
	return env, nil
}
