package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal/functions"
	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/callback"
	"github.com/shoal-dev/shoal/platform/calls"
	"github.com/shoal-dev/shoal/platform/catalog"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/launcher"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/supervisor"
	"github.com/shoal-dev/shoal/token"
)

const (
	defaultHTTPAddr     = "127.0.0.1:8080"
	defaultManifest     = "fn.yaml"
	defaultDrainTimeout = 30 * time.Second
)

// servingGateway is a gateway serving HTTP in the background.
type servingGateway struct {
	*gateway.Gateway
	// watcher follows the catalog; nil for a gateway serving a file.
	watcher *catalog.Watcher
	// done is closed when Serve has returned, with its result in err.
	done     chan struct{}
	err      error
	reported bool
}

// gatewayLimits are the gateway's flags that bound what it accepts.
type gatewayLimits struct {
	maxBody     byteSize
	maxInFlight int
}

func (l *gatewayLimits) register(fs *pflag.FlagSet) {
	l.maxBody = byteSize(gateway.DefaultMaxBody)
	fs.Var(&l.maxBody, "max-body", "largest request body accepted (at most 63MiB)")
	fs.IntVar(&l.maxInFlight, "max-inflight", gateway.DefaultMaxInFlight, "most invocations in flight at the gateway; past it, 429")
}

func (l *gatewayLimits) check() error {
	if l.maxInFlight < 1 {
		return fmt.Errorf("--max-inflight %d: want at least 1", l.maxInFlight)
	}
	return checkMaxBody(l.maxBody)
}

// gatewayConnOpts are the gateway's NATS connection options: no reconnect
// buffer, so that invocations fail at once (503) while NATS is away.
var gatewayConnOpts = []nats.Option{nats.ReconnectBufSize(-1)}

// gatewayExtras are what shoal up adds to a gateway: runner acks (so that
// it can fail the invocations of a worker that died at once) and the
// workers' status.
type gatewayExtras struct {
	ackRunners bool
	workers    func(context.Context) (any, error)
	// callbacks decides which callback URLs submissions may give.
	callbacks *callback.Policy
	// metrics are gathered with the gateway's at GET /metrics.
	metrics prometheus.Gatherer
	// operator re-drives and discards dead-lettered calls for the
	// console; nil: the gateway cannot.
	operator jetstream.JetStream
}

// startGateway starts a gateway that owns nc and serves HTTP on addr: the
// functions of m, or, when m is nil, those of the catalog, which it
// follows (it serves once the catalog is loaded).
func startGateway(ctx context.Context, nc *nats.Conn, m *manifest.Manifest, addr string, limits gatewayLimits, tr *trust, x gatewayExtras) (*servingGateway, error) {
	sg := &servingGateway{done: make(chan struct{})}
	entries := func() []catalog.Entry { return sg.watcher.Entries() }
	if m != nil {
		entries = func() []catalog.Entry { return entriesOf(m) }
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	g, err := gateway.New(gateway.Config{
		Calls: calls.NewQueue(js), Callbacks: x.callbacks, Operator: x.operator,
		NATS: nc, Manifest: m, MaxBody: int64(limits.maxBody), MaxInFlight: limits.maxInFlight,
		Verifier: tr.verifier, JWKS: tr.jwks,
		AckRunners: x.ackRunners, Workers: x.workers, Functions: functionsStatus(nc, entries),
		Ready: func() error {
			if sg.watcher != nil {
				return sg.watcher.Err()
			}
			return nil
		},
		SystemPermission: systemPermission,
		Metrics:          x.metrics,
		Logger:           logger.With("component", "gateway"),
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	sg.Gateway = g
	if m == nil {
		w, err := followCatalog(ctx, nc, "gateway", func(entries []catalog.Entry) error {
			g.SetFunctions(functionsOf(entries))
			return nil
		})
		if err != nil {
			nc.Close()
			return nil, err
		}
		sg.watcher = w
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		sg.stopWatch()
		nc.Close()
		return nil, fmt.Errorf("gateway: listen on %s: %w", addr, err)
	}
	go func() {
		sg.err = g.Serve(ln)
		close(sg.done)
	}()
	source := "catalog"
	if m != nil {
		source = m.File
	}
	logger.Info("gateway listening", "url", "http://"+ln.Addr().String(), "functions", len(entries()), "from", source)
	return sg, nil
}

// stopWatch stops following the catalog.
func (sg *servingGateway) stopWatch() {
	if sg.watcher == nil {
		return
	}
	if err := sg.watcher.Stop(); err != nil {
		logger.Warn("stop following the catalog", "component", "gateway", "error", err)
	}
}

// shutdown drains the gateway; it also reports a serving failure that
// waitForStop has not reported.
func (sg *servingGateway) shutdown(ctx context.Context) error {
	err := sg.Shutdown(ctx)
	sg.stopWatch()
	<-sg.done
	if sg.reported {
		return err
	}
	return errors.Join(err, sg.err)
}

// authFlags configure the auth function of a runner.
type authFlags struct {
	ttl     time.Duration
	limits  auth.Limits
	keyFile string
}

func (a *authFlags) check() error {
	switch {
	case a.ttl < time.Second || a.ttl > token.MaxTTL:
		return fmt.Errorf("--token-ttl %s: want 1s to %s", a.ttl, token.MaxTTL)
	case a.limits.PerUser < 1 || a.limits.PerAddr < 1:
		return errors.New("--login-limit-user and --login-limit-addr: want at least 1")
	case a.limits.Window < time.Second:
		return fmt.Errorf("--login-window %s: want at least 1s", a.limits.Window)
	}
	return nil
}

func (a *authFlags) register(fs *pflag.FlagSet, withKeyFile bool) {
	fs.DurationVar(&a.ttl, "token-ttl", defaultTokenTTL, "lifetime of the tokens the auth function issues")
	fs.IntVar(&a.limits.PerUser, "login-limit-user", 5, "failed logins per username per --login-window before 429")
	fs.IntVar(&a.limits.PerAddr, "login-limit-addr", 20, "failed logins per client address per --login-window before 429")
	fs.DurationVar(&a.limits.Window, "login-window", 5*time.Minute, "window of the failed-login limits")
	if withKeyFile {
		fs.StringVar(&a.keyFile, "key", "", "signing key file (JWK set, newest key signs); with it this runner also serves the auth function and needs the auth role's credentials")
	}
}

// runnerEnv is what every runner of a process shares.
type runnerEnv struct {
	trust *trust
	// auth configures the auth function; nil when this process has no
	// signing key and does not serve it.
	auth *auth.Config
	// async configures asynchronous calls; nil turns them off.
	async *runner.AsyncConfig
	// processes starts functions run as processes; nil serves none.
	processes *launcher.Launcher
}

// startRunner starts a runner that owns nc, serving the functions of m
// (nil: none yet; the caller follows the catalog). nc must serve only
// this runner: its stop waits for the connection's subscriptions to
// drain.
func startRunner(nc *nats.Conn, m *manifest.Manifest, worker int, env runnerEnv) (*runner.Runner, error) {
	log := logger.With("component", "runner")
	meta := map[string]string{}
	if worker > 0 {
		log = log.With("worker", worker)
		meta["worker"] = strconv.Itoa(worker)
	}
	var deps functions.Deps
	if env.auth != nil {
		deps.Auth = *env.auth
	}
	cfg := runner.Config{
		Manifest: m, Builtins: builtins(deps), Verifier: env.trust.verifier, Metadata: meta, Logger: log, Async: env.async,
	}
	if env.processes != nil {
		cfg.Processes = env.processes
	}
	r, err := runner.Start(nc, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return r, nil
}

// authConfig opens the auth function's KV buckets on nc, creating them
// empty when they do not exist yet.
func authConfig(ctx context.Context, nc *nats.Conn, signer auth.Signer, af authFlags) (*auth.Config, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	// Replicas 0: open what shoal deploy or shoal up created, else create
	// with one replica.
	users, err := auth.CreateUsers(ctx, js, 0)
	if err != nil {
		return nil, err
	}
	limiter, err := auth.CreateLimiter(ctx, js, af.limits, 0)
	if err != nil {
		return nil, err
	}
	if ttl, err := limiter.BucketTTL(ctx); err == nil && ttl > 0 && ttl < af.limits.Window {
		logger.Warn("the failed-login bucket forgets counters sooner than --login-window; failures older than its max age are not counted",
			"bucket", auth.FailuresBucket, "max_age", ttl, "login_window", af.limits.Window)
	}
	return &auth.Config{Users: users, Limiter: limiter, Signer: signer, TTL: af.ttl,
		Logger: logger.With("component", "runner", "function", "auth")}, nil
}

// waitForStop blocks until the process is asked to stop (ctx, by signal)
// or the gateway stops serving on its own (a failure). Meanwhile each
// signal on hup (nil: none) runs onHUP.
func waitForStop(ctx context.Context, sg *servingGateway, onHUP func(), hup <-chan os.Signal) error {
	for {
		select {
		case <-ctx.Done():
			logger.Info("shutting down: draining in-flight requests")
			return nil
		case <-sg.done:
			sg.reported = true
			return fmt.Errorf("gateway stopped serving: %w", sg.err)
		case <-hup:
			onHUP()
		}
	}
}

func newGatewayCmd() *cobra.Command {
	var (
		nf     natsFlags
		tf     trustFlags
		file   string
		addr   string
		limits gatewayLimits
		drain  time.Duration
		cf     callbackFlags
	)
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the HTTP gateway against a NATS server or cluster",
		Long: `Run the HTTP gateway: it checks the caller's token and routes
/function/NAME/... onto NATS as one request per invocation. Run runners
(shoal runner) against the same NATS.

The gateway serves the functions deployed in the catalog (shoal deploy) and
follows it live; until something is deployed it waits. With -f it serves
the manifest's functions instead, fixed for its life.

GET /healthz answers 200 while the process serves HTTP; GET /readyz answers
200 while it is connected to NATS and 503 otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := errors.Join(limits.check(), tf.check()); err != nil {
				return err
			}
			policy, err := cf.policy()
			if err != nil {
				return err
			}
			nf.defaultInbox(broker.InboxPrefix(broker.RoleGateway))
			var m *manifest.Manifest
			if file != "" {
				if m, err = loadManifest(file); err != nil {
					return err
				}
			}
			nc, err := nf.connect("shoal-gateway", gatewayConnOpts...)
			if err != nil {
				return err
			}
			if m == nil {
				// The signing keys' bucket is created with the catalog.
				if err := waitForCatalog(cmd.Context(), nc, "gateway"); err != nil {
					nc.Close()
					return err
				}
			}
			tr, err := buildTrust(cmd.Context(), nc, &tf, nil, m != nil && needsTokens(m))
			if err != nil {
				nc.Close()
				return err
			}
			defer tr.stop()
			sg, err := startGateway(cmd.Context(), nc, m, addr, limits, tr, gatewayExtras{callbacks: policy})
			if err != nil {
				return err
			}
			runErr := waitForStop(cmd.Context(), sg, nil, nil)
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			defer cancel()
			return errors.Join(runErr, sg.shutdown(ctx))
		},
	}
	nf.register(cmd.Flags())
	tf.register(cmd.Flags())
	cmd.Flags().StringVarP(&file, "file", "f", "", "serve this manifest's functions instead of following the catalog")
	noEnv(cmd.Flags(), "file")
	cmd.Flags().StringVar(&addr, "http", defaultHTTPAddr, "HTTP listen address")
	limits.register(cmd.Flags())
	cf.register(cmd.Flags(), false)
	cmd.Flags().DurationVar(&drain, "drain-timeout", defaultDrainTimeout, "how long shutdown waits for in-flight requests")
	return cmd
}

// buildTrust builds the token verifier on nc, which follows the published
// keys.
func buildTrust(ctx context.Context, nc *nats.Conn, tf *trustFlags, local []jwkset.JWK, required bool) (*trust, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return tf.build(ctx, js, local, required)
}

func newRunnerCmd() *cobra.Command {
	var (
		nf         natsFlags
		tf         trustFlags
		af         authFlags
		file       string
		healthAddr string
		healthFD   int
		drain      time.Duration
		worker     int
		ra         runnerAsyncFlags
		pf         processFlags
	)
	cmd := &cobra.Command{
		Use:   "runner",
		Short: "Run a function runner against a NATS server or cluster",
		Long: `Run a runner: it serves functions from the NATS queue group
shoal-runners, so that any number of runners share the load. It verifies
the caller's token again on every invocation of a function that is not
public. Given the signing key file (--key), it also serves the auth
function.

The runner serves the functions deployed in the catalog (shoal deploy) that
it has a handler for, and follows the catalog live; until something is
deployed it waits. With -f it serves the manifest's functions instead,
fixed for its life.

With --health, GET /healthz answers 200 while the process runs, GET
/readyz 200 while it serves (connected to NATS, functions loaded), and
GET /metrics gives the runner's Prometheus metrics (docs/metrics.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := errors.Join(tf.check(), af.check(), ra.check()); err != nil {
				return err
			}
			asyncCfg, err := ra.config()
			if err != nil {
				return err
			}
			var health *healthServer
			switch {
			case healthAddr != "" && healthFD != 0:
				return errors.New("--health and --health-fd: give one")
			case healthAddr != "":
				health, err = startHealth(healthAddr)
			case healthFD != 0:
				health, err = startHealthFD(healthFD)
			}
			if err != nil {
				return err
			}
			defer health.stop()
			// A runner that serves auth connects as the auth role, which
			// may read users; others as the runner role.
			if af.keyFile != "" {
				nf.defaultInbox(broker.InboxPrefix(broker.RoleAuth))
			} else {
				nf.defaultInbox(broker.InboxPrefix(broker.RoleRunner))
			}
			var m *manifest.Manifest
			if file != "" {
				if m, err = loadManifest(file); err != nil {
					return err
				}
			}
			var signer auth.Signer
			if af.keyFile != "" {
				s, err := token.NewFileSigner(af.keyFile, tf.issuer, tf.audience)
				if err != nil {
					return fmt.Errorf("--key: %w", err)
				}
				signer = s
			}
			// The runner owns its connection alone; the catalog and key
			// watches and the auth function's KV work go on a second one.
			snc, err := nf.connect("shoal-runner-support")
			if err != nil {
				return err
			}
			defer snc.Close()
			if m == nil {
				// The signing keys' bucket is created with the catalog.
				if err := waitForCatalog(cmd.Context(), snc, "runner"); err != nil {
					return err
				}
			}
			// The key file's own shared secrets (HS256), if any, verify
			// too, as in shoal up.
			var local []jwkset.JWK
			if af.keyFile != "" {
				if local, err = token.ReadKeyFile(af.keyFile); err != nil {
					return fmt.Errorf("--key: %w", err)
				}
			}
			tr, err := buildTrust(cmd.Context(), snc, &tf, local, m != nil && needsTokens(m))
			if err != nil {
				return err
			}
			defer tr.stop()
			if asyncCfg != nil {
				asyncCfg.NATS = snc
			}
			env := runnerEnv{trust: tr, async: asyncCfg}
			if env.processes, err = pf.launcher(snc); err != nil {
				return err
			}
			if signer != nil {
				if env.auth, err = authConfig(cmd.Context(), snc, signer, af); err != nil {
					return err
				}
			}
			nc, err := nf.connect("shoal-runner")
			if err != nil {
				return err
			}
			r, err := startRunner(nc, m, worker, env)
			if err != nil {
				return err
			}
			if err := health.register(r.Collector()); err != nil {
				stopErr := r.Stop(context.Background())
				return errors.Join(err, stopErr)
			}
			var watcher *catalog.Watcher
			if m == nil {
				w, err := followCatalog(cmd.Context(), snc, "runner", func(entries []catalog.Entry) error {
					if err := r.SetFunctions(cmd.Context(), functionsOf(entries)); err != nil {
						return err
					}
					logger.Debug("runner functions", "functions", r.Functions())
					return nil
				})
				if err != nil {
					stopErr := r.Stop(context.Background())
					return errors.Join(err, stopErr)
				}
				watcher = w
			}
			var stopping atomic.Bool
			health.setReady(func() error {
				switch {
				case stopping.Load():
					return errors.New("shutting down")
				case !nc.IsConnected():
					return errors.New("not connected to NATS")
				case watcher != nil:
					return watcher.Err()
				}
				return nil
			})
			health.serve() // shoal up's worker: its slot's scrapes reach it from now on
			logger.Info("runner serving", "nats", nc.ConnectedUrlRedacted(), "id", r.ID(), "functions", r.Functions())
			if err := supervisor.NotifyReady(r.ID()); err != nil {
				logger.Error("cannot tell the supervisor this runner is ready", "error", err)
			}
			<-cmd.Context().Done()
			stopping.Store(true)
			if healthFD != 0 {
				// shoal up's worker: the listener is its slot's, which
				// the worker replacing this one shares; leave it to that
				// one, so that up's scrapes do not alternate between the
				// two workers' counts.
				health.stop()
			}
			if watcher != nil {
				if err := watcher.Stop(); err != nil {
					logger.Warn("stop following the catalog", "error", err)
				}
			}
			logger.Info("shutting down: draining in-flight invocations")
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			defer cancel()
			return r.Stop(ctx)
		},
	}
	nf.register(cmd.Flags())
	tf.register(cmd.Flags())
	af.register(cmd.Flags(), true)
	cmd.Flags().StringVarP(&file, "file", "f", "", "serve this manifest's functions instead of following the catalog")
	noEnv(cmd.Flags(), "file", "key")
	cmd.Flags().StringVar(&healthAddr, "health", "", "serve GET /healthz, /readyz and /metrics (Prometheus) on this address (e.g. 0.0.0.0:8081); off by default")
	cmd.Flags().IntVar(&healthFD, "health-fd", 0, "serve what --health serves on this inherited listening socket (shoal up's workers)")
	_ = cmd.Flags().MarkHidden("health-fd")
	cmd.Flags().DurationVar(&drain, "drain-timeout", defaultDrainTimeout, "how long shutdown waits for in-flight invocations")
	ra.register(cmd.Flags())
	pf.register(cmd.Flags(), "directory of the functions' unpacked code, shared by the runners of a machine (default: shoal/code in the user's cache directory)")
	cmd.Flags().IntVar(&worker, "worker", 0, "worker slot, when run by shoal up's supervisor (shown in the service metadata)")
	_ = cmd.Flags().MarkHidden("worker")
	return cmd
}
