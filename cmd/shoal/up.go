package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/keyring"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/token"
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
	f.StringVar(&o.dataDir, "data", ".shoal", "data directory (JetStream store)")
	f.IntVar(&o.workers, "workers", runtime.NumCPU(), "runner workers, each on its own NATS connection")
	o.limits.register(f)
	f.DurationVar(&o.drain, "drain-timeout", defaultDrainTimeout, "how long shutdown waits for in-flight requests")
	f.StringVar(&o.natsContext, "nats-context", "shoal", "name of the nats CLI context to save, with client credentials (\"\" saves none)")
	o.trust.register(f)
	o.auth.register(f, false)
	return cmd
}

func up(ctx context.Context, o upOptions) error {
	if o.workers < 1 {
		return fmt.Errorf("--workers %d: want at least 1", o.workers)
	}
	if err := errors.Join(o.limits.check(), o.trust.check(), o.auth.check()); err != nil {
		return err
	}
	m, err := loadManifest(o.file)
	if err != nil {
		return err
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
	srv, err := broker.Start(broker.Config{
		Addr:       o.natsAddr,
		DataDir:    o.dataDir,
		MaxPayload: int(o.limits.maxBody) + payloadHeaderRoom,
		Users:      creds.Users(),
		Logger:     logger,
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
	if err := prepareStores(ctx, anc, keys, o.auth.limits); err != nil {
		return err
	}
	tr, err := buildTrust(ctx, anc, &o.trust, keys, needsTokens(m))
	if err != nil {
		return err
	}
	defer tr.stop()
	signer, err := token.NewFileSigner(keyFile, o.trust.issuer, o.trust.audience)
	if err != nil {
		return err
	}
	// The runners share one connection, as the auth role, for the auth
	// function's KV work; each owns its own for invocations, as the
	// runner role, which cannot read users.
	af := as(broker.RoleAuth)
	snc, err := af.connect("shoal-auth")
	if err != nil {
		return err
	}
	defer snc.Close()
	authCfg, err := authConfig(ctx, snc, signer, o.auth)
	if err != nil {
		return err
	}
	env := runnerEnv{trust: tr, auth: authCfg}

	var runners []*runner.Runner
	stopRunners := func(ctx context.Context) error {
		var wg sync.WaitGroup
		errs := make([]error, len(runners))
		for i, r := range runners {
			wg.Go(func() { errs[i] = r.Stop(ctx) })
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	// abort undoes a start that failed half-way.
	abort := func(err error) error {
		ctx, cancel := context.WithTimeout(context.Background(), o.drain)
		defer cancel()
		return errors.Join(err, stopRunners(ctx))
	}
	rf := as(broker.RoleRunner)
	for i := range o.workers {
		nc, err := rf.connect(fmt.Sprintf("shoal-runner-%d", i+1))
		if err != nil {
			return abort(err)
		}
		r, err := startRunner(nc, m, i+1, env)
		if err != nil {
			return abort(err)
		}
		runners = append(runners, r)
	}
	logger.Info("runners serving", "workers", len(runners), "functions", runners[0].Functions())

	gf := as(broker.RoleGateway)
	nc, err := gf.connect("shoal-gateway", gatewayConnOpts...)
	if err != nil {
		return abort(err)
	}
	sg, err := startGateway(nc, m, o.httpAddr, o.limits, tr)
	if err != nil {
		return abort(err)
	}
	if o.natsContext != "" {
		if err := saveNATSContext(o.natsContext, url, creds.SeedFile(broker.RoleClient)); err != nil {
			logger.Warn("cannot save the nats CLI context", "error", err)
		}
	}

	runErr := waitForStop(ctx, sg)

	// Shutdown, in order; one drain deadline covers it all.
	drainCtx, cancel := context.WithTimeout(context.Background(), o.drain)
	defer cancel()
	// 1. The gateway stops accepting requests and waits for those in
	//    flight, which still need the runners and NATS to finish.
	gwErr := sg.shutdown(drainCtx)
	// 2. The runners leave their queue groups and answer what reached them.
	rErr := stopRunners(drainCtx)
	// 3. The deferred calls stop the key watch, close the admin
	//    connection and stop NATS last.
	if err := errors.Join(runErr, gwErr, rErr); err != nil {
		return err
	}
	logger.Info("stopped cleanly")
	return nil
}

// prepareStores creates the KV buckets of the auth work and publishes the
// public signing keys.
func prepareStores(ctx context.Context, nc *nats.Conn, keys []jwkset.JWK, limits auth.Limits) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	kv, err := keyring.Create(ctx, js, 1)
	if err != nil {
		return err
	}
	if err := publishKeys(ctx, kv, keys); err != nil {
		return err
	}
	if _, err := auth.CreateUsers(ctx, js, 1); err != nil {
		return err
	}
	if _, err := auth.CreateLimiter(ctx, js, limits, 1); err != nil {
		return err
	}
	return nil
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
