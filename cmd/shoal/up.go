package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/catalog"
	"github.com/shoal-dev/shoal/platform/keyring"
	"github.com/shoal-dev/shoal/platform/supervisor"
)

// payloadHeaderRoom is what the embedded server's max_payload adds to the
// body limit, for the invocation's headers.
const payloadHeaderRoom = 1 << 20

type upOptions struct {
	file        string
	httpAddr    string
	natsAddr    string
	dataDir     string
	workers     int
	limits      gatewayLimits
	trust       trustFlags
	auth        authFlags
	drain       time.Duration
	natsContext string
	crashLoop   supervisor.CrashLoop
	acks        bool
	natsSync    syncPolicy
	async       runnerAsyncFlags
	asyncLimits asyncLimitFlags
	processes   processFlags
	noBuild     bool
}

func newUpCmd() *cobra.Command {
	var o upOptions
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the whole platform on this machine: embedded NATS, gateway and runners",
		Long: `Start the whole platform in one process: an embedded NATS server with
JetStream (store under --data), the HTTP gateway, and runner workers
serving the functions of the manifest. Ctrl-C or SIGTERM drains in-flight
requests and exits 0.

The manifest is deployed into the function catalog at start (functions it
does not declare are removed from the catalog); while up runs, shoal deploy
and shoal rm change the catalog live, without a restart.

NATS requires credentials: one NKey identity per role (admin, gateway,
runner, auth, client), kept under DATA/credentials. The token signing key is
created in DATA/keys on the first start. A context named shoal is saved for
the nats CLI, with the client role's credentials.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return up(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVarP(&o.file, "file", "f", defaultManifest, "function manifest")
	f.StringVar(&o.httpAddr, "http", defaultHTTPAddr, "HTTP listen address of the gateway")
	f.StringVar(&o.natsAddr, "nats", broker.DefaultAddr, "listen address of the embedded NATS server (port 0 picks a free one)")
	f.Var(&o.natsSync, "nats-sync", "JetStream fsync: always (every write, before its acknowledgement) or an interval like 2m (lazy: a power failure can lose acknowledged writes)")
	f.StringVar(&o.dataDir, "data", ".shoal", "data directory (JetStream store)")
	f.IntVar(&o.workers, "workers", runtime.NumCPU(), "runner workers, each on its own NATS connection")
	o.limits.register(f)
	f.DurationVar(&o.drain, "drain-timeout", defaultDrainTimeout, "how long shutdown waits for in-flight requests")
	f.StringVar(&o.natsContext, "nats-context", "shoal", "name of the nats CLI context to save, with client credentials (\"\" saves none)")
	f.BoolVar(&o.acks, "runner-acks", true, "runners acknowledge each invocation running longer than 10 ms, so that those of a worker that dies are answered 502 at once (younger ones after 2 s; false: they wait for their timeout)")
	f.IntVar(&o.crashLoop.Exits, "crash-loop-exits", 5, "a worker that exits this many times within --crash-loop-window is not re-forked again")
	f.DurationVar(&o.crashLoop.Window, "crash-loop-window", time.Minute, "window of the crash-loop guard")
	o.trust.register(f)
	o.auth.register(f, false)
	o.async.register(f)
	o.asyncLimits.register(f)
	o.processes.register(f, "directory of the functions' unpacked code (default DATA/code)")
	f.BoolVar(&o.noBuild, "no-build", false, "do not run the manifest's build commands before uploading functions' code")
	return cmd
}

func up(ctx context.Context, o upOptions) error {
	// SIGHUP (shoal restart) asks for a rolling restart of the workers.
	// Caught from the start, so that one arriving while up starts is
	// kept for when it serves instead of ending the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if o.workers < 1 {
		return fmt.Errorf("--workers %d: want at least 1", o.workers)
	}
	if o.crashLoop.Exits < 1 || o.crashLoop.Window < time.Second {
		return fmt.Errorf("--crash-loop-exits %d --crash-loop-window %s: want at least 1 exit and 1s", o.crashLoop.Exits, o.crashLoop.Window)
	}
	if err := errors.Join(o.limits.check(), o.trust.check(), o.auth.check(), o.async.check()); err != nil {
		return err
	}
	asyncLimits, err := o.asyncLimits.limits(0)
	if err != nil {
		return err
	}
	callbacks, err := o.async.callbacks.policy()
	if err != nil {
		return err
	}
	m, err := loadManifest(o.file)
	if err != nil {
		return err
	}
	code, err := prepareCode(ctx, m, !o.noBuild, os.Stderr)
	if err != nil {
		return err
	}
	defer code.close()
	if o.processes.cacheDir == "" {
		o.processes.cacheDir = filepath.Join(o.dataDir, "code")
	}
	if o.processes.cacheDir, err = filepath.Abs(o.processes.cacheDir); err != nil {
		return fmt.Errorf("--code-cache: %w", err)
	}
	creds, err := broker.EnsureCredentials(credentialsPath(o.dataDir))
	if err != nil {
		return err
	}
	keyFile := keyFilePath(o.dataDir)
	keys, err := ensureKeyFile(keyFile)
	if err != nil {
		return err
	}
	warnLazySync(time.Duration(o.natsSync))
	srv, err := broker.Start(broker.Config{
		Addr:       o.natsAddr,
		DataDir:    o.dataDir,
		MaxPayload: int(o.limits.maxBody) + payloadHeaderRoom,
		Users:      creds.Users(),
		Logger:     logger,
		LazySync:   time.Duration(o.natsSync),
	})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	logger.Info("nats listening", "url", srv.ClientURL(), "jetstream", srv.StoreDir(), "credentials", creds.Dir)

	url := srv.ClientURL()
	as := func(role broker.Role) natsFlags {
		return natsFlags{url: url, nkey: creds.SeedFile(role), inboxPrefix: broker.InboxPrefix(role)}
	}
	admin := as(broker.RoleAdmin)
	anc, err := admin.connect("shoal-admin")
	if err != nil {
		return err
	}
	defer anc.Close()
	if err := prepareStores(ctx, anc, keys, o.auth.limits, asyncLimits, m, code); err != nil {
		return err
	}
	code.close() // uploaded: the packed archives are not needed any more
	tr, err := buildTrust(ctx, anc, &o.trust, keys, needsTokens(m))
	if err != nil {
		return err
	}
	defer tr.stop()
	pidFile, err := lockPIDFile(o.dataDir)
	if err != nil {
		return err
	}
	defer pidFile.release()

	// The runners are worker processes: this binary again, as `shoal
	// runner`, supervised.
	wc, err := newWorkerCommand(o, url, creds, keyFile)
	if err != nil {
		return err
	}
	// The workers' metrics, in the gateway's GET /metrics.
	wm, err := newWorkerMetrics(o.workers)
	if err != nil {
		return err
	}
	defer wm.close()
	wc.metrics = wm
	var lost runnerLoss
	sup, err := supervisor.Start(ctx, supervisor.Config{
		Workers:   o.workers,
		Command:   wc.command,
		Drain:     o.drain + 5*time.Second,
		CrashLoop: o.crashLoop,
		Logger:    logger.With("component", "supervisor"),
		Output:    workerOutput,
		OnExit:    lost.report,
		// A function's processes die with their worker; what they started
		// in turn is killed by the supervisor, which up makes their reaper.
		ReapOrphans: true,
	})
	if err != nil {
		return err
	}
	stopWorkers := func(ctx context.Context) error { return sup.Stop(ctx) }
	// abort undoes a start that failed half-way.
	abort := func(err error) error {
		ctx, cancel := context.WithTimeout(context.Background(), o.drain+10*time.Second)
		defer cancel()
		return errors.Join(err, stopWorkers(ctx))
	}
	wm.follow(sup.Workers)
	logger.Info("runners serving", "workers", o.workers, "pids", workerPIDs(sup))

	gf := as(broker.RoleGateway)
	// The gateway lives in the server's process: it talks to it through
	// memory, not loopback TCP (measured: docs/benchmarks.md).
	nc, err := gf.connect("shoal-gateway", slices.Concat(gatewayConnOpts, []nats.Option{nats.InProcessServer(srv)})...)
	if err != nil {
		return abort(err)
	}
	sys := &systemInfo{sup: sup, nc: anc}
	// The console re-drives and discards dead letters as the admin,
	// which the gateway role may not.
	operator, err := jetstream.New(anc)
	if err != nil {
		return abort(fmt.Errorf("jetstream: %w", err))
	}
	sg, err := startGateway(ctx, nc, nil, o.httpAddr, o.limits, tr, gatewayExtras{ackRunners: o.acks, workers: sys.workers, callbacks: callbacks, metrics: wm, operator: operator})
	if err != nil {
		return abort(err)
	}
	lost.set(sg.Gateway)
	if o.natsContext != "" {
		if err := saveNATSContext(o.natsContext, url, creds.SeedFile(broker.RoleClient)); err != nil {
			logger.Warn("cannot save the nats CLI context", "error", err)
		}
	}

	// Each SIGHUP replaces the workers one at a time.
	runErr := waitForStop(ctx, sg, func() {
		logger.Info("rolling restart of the workers")
		if err := sup.Restart(ctx); err != nil {
			logger.Error("rolling restart", "error", err)
			return
		}
		logger.Info("rolling restart done", "pids", workerPIDs(sup))
	}, hup)

	// Shutdown, in order, each step bounded by the drain timeout.
	drainCtx, cancel := context.WithTimeout(context.Background(), o.drain)
	defer cancel()
	// 1. The gateway stops accepting requests and waits for those in
	//    flight, which still need the runners and NATS to finish.
	gwErr := sg.shutdown(drainCtx)
	// 2. The workers leave their queue groups and answer what reached
	//    them (SIGTERM; SIGKILL past the drain timeout and a margin).
	wctx, wcancel := context.WithTimeout(context.Background(), o.drain+10*time.Second)
	defer wcancel()
	rErr := stopWorkers(wctx)
	// 3. The deferred calls stop the key watch, close the admin
	//    connection and stop NATS last.
	if err := errors.Join(runErr, gwErr, rErr); err != nil {
		return err
	}
	logger.Info("stopped cleanly")
	return nil
}

// prepareStores creates the platform's KV buckets, deploys m and
// publishes the public signing keys. The manifest is this machine's source
// of truth: it is deployed with prune, removing what it does not declare;
// shoal deploy and shoal rm change the catalog live afterwards.
func prepareStores(ctx context.Context, nc *nats.Conn, keys []jwkset.JWK, limits auth.Limits, asyncLimits calls.Limits, m *manifest.Manifest, code *functionCode) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	// First, so that the failed-login counters live as long as up's
	// --login-window (deployManifest leaves an existing bucket alone).
	if _, err := auth.CreateLimiter(ctx, js, limits, 1); err != nil {
		return err
	}
	changes, err := deployManifest(ctx, js, m, code, true, asyncLimits)
	if err != nil {
		return fmt.Errorf("deploy %s: %w", m.File, err)
	}
	for _, ch := range changes {
		if ch.Action != catalog.Unchanged {
			logger.Info("function "+string(ch.Action), "function", ch.Name, "revision", ch.Revision, "from", m.File)
		}
	}
	kv, err := keyring.Create(ctx, js, 0) // created by deployManifest
	if err != nil {
		return err
	}
	return publishKeys(ctx, kv, keys)
}

// saveNATSContext saves a nats CLI context with the client role's
// credentials and says how to use it.
func saveNATSContext(name, url, seed string) error {
	dir, err := natsContextDir()
	if err != nil {
		return err
	}
	seed, err = filepath.Abs(seed)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(map[string]any{
		"description":  "Shoal (shoal up): client role",
		"url":          url,
		"nkey":         seed,
		"inbox_prefix": broker.ClientInboxPrefix,
	}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(dir, name+".json")
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return err
	}
	logger.Info("saved a nats CLI context with client credentials", "context", name, "file", path,
		"try", "nats --context "+name+" req fn.ping ''")
	return nil
}
