package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/loadgen"
)

// benchConfig is one configuration shoal bench measures.
type benchConfig struct {
	name  string
	title string
	// transport is http or nats: what the load generator speaks.
	transport string
}

// The configurations, in the order they run and are printed.
const (
	cfgGateway     = "gateway"
	cfgGatewayAuth = "gateway-auth"
	cfgShoalNATS   = "shoal-nats"
	cfgGoHTTP      = "go-http"
	cfgNATS        = "nats"
	cfgNode        = "node"
)

var benchConfigs = []benchConfig{
	{cfgGateway, "Shoal gateway, public function (auth off)", "http"},
	{cfgGatewayAuth, "Shoal gateway, bearer token (auth on)", "http"},
	{cfgShoalNATS, "Shoal runner over NATS, Shoal's client", "nats"},
	{cfgGoHTTP, "plain Go net/http (HTTP ceiling)", "http"},
	{cfgNATS, "raw NATS request/reply", "nats"},
	{cfgNode, "Node.js cluster + Express", "http"},
}

// benchConfigNames lists the configurations' names, for flags and errors.
func benchConfigNames() []string {
	var names []string
	for _, c := range benchConfigs {
		names = append(names, c.name)
	}
	return names
}

// benchManifest declares the functions the benchmark calls.
const benchManifest = `version: 1
functions:
  ping:
    description: The benchmark's public function.
    handler: {builtin: ping}
    public: true
    timeout: 5s
    concurrency: 1000
  ping-auth:
    description: The benchmark's function that needs a token.
    handler: {builtin: ping}
    permissions: [ping]
    timeout: 5s
    concurrency: 1000
`

// benchOptions are shoal bench's flags.
type benchOptions struct {
	duration    time.Duration
	warmup      time.Duration
	connections int
	only, skip  []string
	jsonFile    string
	chartFile   string
	idleConns   int
	verbose     bool
	// nodeWarmup is the least warm-up of the node configuration.
	nodeWarmup time.Duration
	// profileDir, when set, receives the CPU profiles of shoal up and its
	// workers over the Shoal configurations.
	profileDir string
}

func newBenchCmd() *cobra.Command {
	var o benchOptions
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure Shoal against plain Go HTTP, raw NATS and Node.js, side by side, on this machine",
		Long: `Start, on loopback, shoal up (a bench manifest, a temporary data directory),
the reference servers, and Node.js cluster + Express if node and npm are on
PATH; load each configuration in turn with a closed-loop generator (a warm-up,
then --duration), and print req/s, latency percentiles, errors, the ratios the
targets are set in, and memory: runner RSS idle and under load, and gateway
RSS holding --idle-conns idle keep-alive connections. Configurations:
  gateway       GET /function/ping through shoal up's gateway (public function)
  gateway-auth  GET /function/ping-auth with a bearer token (auth on)
  shoal-nats    requests on fn.ping over NATS, as shoal invoke --nats does
  go-http       a plain net/http server answering pong! (the HTTP ceiling)
  nats          a plain NATS server and responder processes (raw request/reply)
  node          Node.js cluster module + Express app.get('/ping')
Progress goes to standard error, the table to standard output. See
docs/benchmarks.md.`,
		Example: `  go run ./cmd/shoal bench
  shoal bench --duration 5s --only gateway-auth,go-http
  shoal bench --json bench.json --chart bench.svg`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 10*time.Second, "measured load per configuration")
	f.DurationVar(&o.warmup, "warmup", 2*time.Second, "warm-up before each measured load")
	f.IntVar(&o.connections, "connections", 64, "keep-alive connections (HTTP) or concurrent requesters (NATS)")
	f.StringSliceVar(&o.only, "only", nil, "run only these configurations, comma-separated: "+strings.Join(benchConfigNames(), ", "))
	f.StringSliceVar(&o.skip, "skip", nil, "skip these configurations, comma-separated")
	f.StringVar(&o.jsonFile, "json", "", "write all results and the machine's description to this JSON file")
	f.StringVar(&o.chartFile, "chart", "", "write an SVG chart of throughput and latency to this file")
	f.IntVar(&o.idleConns, "idle-conns", 10000, "idle keep-alive connections opened to measure gateway memory (0 skips)")
	f.DurationVar(&o.nodeWarmup, "node-warmup", 5*time.Second, "least warm-up of the node configuration (V8 compiles Express's hot path over the first seconds)")
	f.BoolVar(&o.verbose, "verbose", false, "pass the output of the processes started to standard error")
	f.StringVar(&o.profileDir, "profile", "", "write CPU and allocation profiles of shoal up (up.pprof, up.allocs.pprof) and its workers (the same .worker-N), over the Shoal configurations, into this directory")
	cmd.AddCommand(newBenchServeHTTPCmd(), newBenchServeNATSCmd(), newBenchRespondCmd())
	return cmd
}

// selected returns the configurations to run.
func (o *benchOptions) selected() ([]benchConfig, error) {
	known := benchConfigNames()
	for _, n := range slices.Concat(o.only, o.skip) {
		if !slices.Contains(known, n) {
			return nil, fmt.Errorf("unknown configuration %q: want one of %s", n, strings.Join(known, ", "))
		}
	}
	var out []benchConfig
	for _, c := range benchConfigs {
		if (len(o.only) == 0 || slices.Contains(o.only, c.name)) && !slices.Contains(o.skip, c.name) {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("--only and --skip leave no configuration to run")
	}
	return out, nil
}

func (o *benchOptions) check() error {
	switch {
	case o.duration <= 0:
		return fmt.Errorf("--duration %s: want more than 0", o.duration)
	case o.warmup < 0:
		return fmt.Errorf("--warmup %s: want 0 or more", o.warmup)
	case o.nodeWarmup < 0:
		return fmt.Errorf("--node-warmup %s: want 0 or more", o.nodeWarmup)
	case o.connections < 1 || o.connections > 10000:
		return fmt.Errorf("--connections %d: want 1 to 10000", o.connections)
	case o.idleConns < 0:
		return fmt.Errorf("--idle-conns %d: want 0 or more", o.idleConns)
	}
	return nil
}

// bench is one run of shoal bench.
type bench struct {
	o        benchOptions
	progress io.Writer
	exe      string
	tmp      string
	procs    children
	report   *BenchReport
	// step and steps number the loads in the progress lines.
	step, steps int
}

// Timeouts of the benchmark's own steps.
const (
	benchStartTimeout = 60 * time.Second // a server process announcing itself
	benchReadyTimeout = 30 * time.Second // shoal up answering its functions
	benchStopGrace    = 20 * time.Second // SIGTERM to SIGKILL
	benchRequestLimit = 5 * time.Second  // one request
)

func runBench(ctx context.Context, out, progress io.Writer, o benchOptions) (err error) {
	if err := o.check(); err != nil {
		return err
	}
	configs, err := o.selected()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this program to start the servers: %w", err)
	}
	tmp, err := os.MkdirTemp("", "shoal-bench-")
	if err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	b := &bench{o: o, progress: progress, exe: exe, tmp: tmp, report: newBenchReport(o)}
	defer func() {
		err = errors.Join(err, b.procs.stopAll(benchStopGrace))
		if rmErr := os.RemoveAll(tmp); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", tmp, rmErr))
		}
	}()
	if o.idleConns > 0 {
		b.checkFileLimit()
	}
	if la := b.report.Machine.LoadAverage; la != "" {
		if one, err := strconv.ParseFloat(strings.Fields(la)[0], 64); err == nil && one > float64(runtime.NumCPU())/2 {
			logger.Warn("the machine is busy before the benchmark starts: its figures will be noisy", "load_average", la, "cores", runtime.NumCPU())
		}
	}
	for _, c := range configs {
		if c.name != cfgNode {
			b.steps++
		}
	}
	run := func(name string) bool {
		return slices.ContainsFunc(configs, func(c benchConfig) bool { return c.name == name })
	}
	var node *nodeSetup
	if run(cfgNode) {
		// Install before any load, so a first npm install does not sit
		// between two measurements.
		n, err := prepareNode(ctx, b.say)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.skip(cfgNode, err.Error())
		} else {
			node = n
			b.steps++
			b.report.Machine.Node = n.version
			b.report.Machine.Express = n.express
		}
	}
	if run(cfgGateway) || run(cfgGatewayAuth) || run(cfgShoalNATS) || b.o.idleConns > 0 {
		if err := b.shoal(ctx, run); err != nil {
			return err
		}
	}
	if run(cfgGoHTTP) {
		if err := b.goHTTP(ctx); err != nil {
			return err
		}
	}
	if run(cfgNATS) {
		if err := b.rawNATS(ctx); err != nil {
			return err
		}
	}
	if node != nil {
		if err := b.node(ctx, node); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.skip(cfgNode, err.Error())
		}
	}
	b.report.finish(configs)
	if err := b.report.writeText(out); err != nil {
		return err
	}
	if o.jsonFile != "" {
		if err := b.report.writeJSON(o.jsonFile); err != nil {
			return err
		}
	}
	if o.chartFile != "" {
		if err := writeFileAtomic(o.chartFile, b.report.chartSVG()); err != nil {
			return fmt.Errorf("write the chart: %w", err)
		}
	}
	return nil
}

// say prints a progress line.
func (b *bench) say(msg string) { fmt.Fprintln(b.progress, "shoal bench: "+msg) }

// skip records a configuration that did not run, and says why.
func (b *bench) skip(name, why string) {
	b.say(name + " skipped: " + why)
	b.report.skip(name, why)
}

// checkFileLimit lowers --idle-conns to what the open-file limit allows.
func (b *bench) checkFileLimit() {
	limit, err := fileLimit()
	if err != nil {
		logger.Warn("cannot read the open-file limit", "error", err)
		return
	}
	if room := int(limit) - b.o.connections - 256; b.o.idleConns > room {
		logger.Warn("the open-file limit is too low for --idle-conns; opening fewer", "limit", limit, "idle_conns", max(room, 0))
		b.o.idleConns = max(room, 0)
		b.report.Settings.IdleConns = b.o.idleConns
	}
}

// start starts this program with args as a benchmark child process.
func (b *bench) start(name string, env []string, args ...string) (*child, error) {
	cmd := exec.Command(b.exe, args...)
	cmd.Dir = b.tmp
	cmd.Env = append(childEnv(), env...)
	c, err := startChild(name, cmd, b.o.verbose)
	if err != nil {
		return nil, err
	}
	b.procs.add(c)
	return c, nil
}

// childEnv is the benchmark's environment less the SHOAL_* variables
// (but the tests' SHOAL_TEST_*), which would set the servers' flags.
func childEnv() []string {
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) || strings.HasPrefix(kv, "SHOAL_TEST_") {
			env = append(env, kv)
		}
	}
	return env
}

// stopChild stops c and forgets it.
func (b *bench) stopChild(c *child) error {
	err := c.stop(benchStopGrace)
	b.procs.mu.Lock()
	b.procs.list = slices.DeleteFunc(b.procs.list, func(x *child) bool { return x == c })
	b.procs.mu.Unlock()
	return err
}

var (
	reNATSListening    = regexp.MustCompile(`msg="nats listening" url=(nats://\S+)`)
	reGatewayListening = regexp.MustCompile(`msg="gateway listening" url=http://(\S+)`)
	reListening        = regexp.MustCompile(`^listening (\S+)`)
	reResponding       = regexp.MustCompile(`^responding `)
)

// shoal runs the Shoal configurations and the memory measurements
// against one shoal up.
func (b *bench) shoal(ctx context.Context, run func(string) bool) error {
	data := filepath.Join(b.tmp, "data")
	fn := filepath.Join(b.tmp, "fn.yaml")
	if err := os.WriteFile(fn, []byte(benchManifest), 0o644); err != nil {
		return fmt.Errorf("write the bench manifest: %w", err)
	}
	b.say(fmt.Sprintf("starting shoal up (%d workers) with a temporary data directory", runtime.NumCPU()))
	args := []string{"up", "-f", fn, "--data", data,
		"--nats", "127.0.0.1:0", "--http", "127.0.0.1:0", "--nats-context", "",
		"--log-format", "text", "--log-level", "info"}
	if b.o.profileDir != "" {
		if err := os.MkdirAll(b.o.profileDir, 0o755); err != nil {
			return fmt.Errorf("--profile: %w", err)
		}
		prof, err := filepath.Abs(filepath.Join(b.o.profileDir, "up.pprof"))
		if err != nil {
			return fmt.Errorf("--profile: %w", err)
		}
		args = append(args, "--cpu-profile", prof, "--mem-profile", strings.TrimSuffix(prof, ".pprof")+".allocs.pprof")
	}
	up, err := b.start("shoal up", nil, args...)
	if err != nil {
		return err
	}
	m, err := up.waitLine(ctx, reNATSListening, benchStartTimeout)
	if err != nil {
		return err
	}
	natsURL := m[1]
	m, err = up.waitLine(ctx, reGatewayListening, benchStartTimeout)
	if err != nil {
		return err
	}
	gw := m[1]
	tok, err := mint("", data, defaultIssuer, defaultAudience, "shoal-bench", []string{"ping"}, 2*time.Hour)
	if err != nil {
		return err
	}
	sysTok, err := mint("", data, defaultIssuer, defaultAudience, "shoal-bench", []string{systemPermission}, 2*time.Hour)
	if err != nil {
		return err
	}
	auth := http.Header{"Authorization": {"Bearer " + tok}}
	for _, fn := range []struct {
		path string
		h    http.Header
	}{{"/function/ping", nil}, {"/function/ping-auth", auth}} {
		if err := waitPong(ctx, "http://"+gw+fn.path, fn.h, benchReadyTimeout); err != nil {
			return up.fail(err)
		}
	}
	workers, err := upWorkers(ctx, gw, sysTok)
	if err != nil {
		return up.fail(err)
	}
	mem := &b.report.Memory
	mem.UpPID = up.pid()
	if procAvailable() {
		mem.RunnersIdle = readRSS(workers)
		if kib, err := rssKiB(up.pid()); err == nil {
			mem.UpIdleKiB = kib
		}
	}

	if run(cfgGateway) {
		if err := b.load(ctx, cfgGateway, httpLoad(loadgen.Target{Addr: gw, Path: "/function/ping", Body: pongBody}), nil); err != nil {
			return err
		}
	}
	if run(cfgGatewayAuth) {
		sample := func(loadgen.Progress) {
			if procAvailable() {
				mem.RunnersLoad = readRSS(workers)
				if kib, err := rssKiB(up.pid()); err == nil {
					mem.UpLoadKiB = kib
				}
			}
		}
		if err := b.load(ctx, cfgGatewayAuth, httpLoad(loadgen.Target{Addr: gw, Path: "/function/ping-auth", Header: auth, Body: pongBody}), sample); err != nil {
			return err
		}
	}
	if run(cfgShoalNATS) {
		client := natsFlags{url: natsURL, nkey: (&broker.Credentials{Dir: credentialsPath(data)}).SeedFile(broker.RoleClient), inboxPrefix: broker.ClientInboxPrefix}
		nc, err := client.connect("shoal-bench")
		if err != nil {
			return err
		}
		err = b.load(ctx, cfgShoalNATS, shoalNATSLoad(nc), nil)
		nc.Close()
		if err != nil {
			return err
		}
	}
	// The idle connections come after the loads, so that the figures
	// under load are not inflated by the memory they leave behind.
	if b.o.idleConns > 0 && procAvailable() {
		b.say(fmt.Sprintf("opening %d idle keep-alive connections to shoal up's gateway", b.o.idleConns))
		rep, err := measureIdle(ctx, "shoal up (gateway + embedded NATS)", up.pid(), gw, b.o.idleConns)
		if err != nil {
			return fmt.Errorf("idle connections to shoal up: %w", err)
		}
		mem.UpIdleConns = rep
		b.say(rep.summary())
		if err := b.separateGateway(ctx, natsURL, data); err != nil {
			return err
		}
	}
	b.say("stopping shoal up")
	return b.stopChild(up)
}

// separateGateway measures a `shoal gateway` process of its own, against
// up's NATS, holding the idle connections.
func (b *bench) separateGateway(ctx context.Context, natsURL, data string) error {
	creds := &broker.Credentials{Dir: credentialsPath(data)}
	g, err := b.start("shoal gateway", nil, "gateway", "--nats", natsURL, "--nats-nkey", creds.SeedFile(broker.RoleGateway),
		"--http", "127.0.0.1:0", "--drain-timeout", "5s", "--log-format", "text", "--log-level", "info")
	if err != nil {
		return err
	}
	m, err := g.waitLine(ctx, reGatewayListening, benchStartTimeout)
	if err != nil {
		return err
	}
	addr := m[1]
	if err := waitPong(ctx, "http://"+addr+"/function/ping", nil, benchReadyTimeout); err != nil {
		return g.fail(err)
	}
	b.say(fmt.Sprintf("opening %d idle keep-alive connections to a shoal gateway process", b.o.idleConns))
	rep, err := measureIdle(ctx, "shoal gateway (its own process)", g.pid(), addr, b.o.idleConns)
	if err != nil {
		return fmt.Errorf("idle connections to shoal gateway: %w", err)
	}
	b.report.Memory.GatewayIdleConns = rep
	b.say(rep.summary())
	return b.stopChild(g)
}

// goHTTP measures the plain net/http server.
func (b *bench) goHTTP(ctx context.Context) error {
	c, err := b.start("go-http server", nil, "bench", "serve-http", "--listen", "127.0.0.1:0")
	if err != nil {
		return err
	}
	return b.loadListening(ctx, c, cfgGoHTTP, "/")
}

// loadListening waits until c prints the URL it listens on, loads the
// configuration name with GET path there, and stops c.
func (b *bench) loadListening(ctx context.Context, c *child, name, path string) error {
	m, err := c.waitLine(ctx, reListening, benchStartTimeout)
	if err != nil {
		return err
	}
	u, err := url.Parse(m[1])
	if err != nil {
		return c.fail(fmt.Errorf("bad URL %q: %w", m[1], err))
	}
	if err := b.load(ctx, name, httpLoad(loadgen.Target{Addr: u.Host, Path: path, Body: pongBody}), nil); err != nil {
		return err
	}
	return b.stopChild(c)
}

// rawNATS measures plain request/reply: a NATS server process, and as
// many responder processes as shoal up has workers, with the same
// GOMAXPROCS each.
func (b *bench) rawNATS(ctx context.Context) error {
	srv, err := b.start("nats server", nil, "bench", "serve-nats", "--listen", "127.0.0.1:0")
	if err != nil {
		return err
	}
	m, err := srv.waitLine(ctx, reListening, benchStartTimeout)
	if err != nil {
		return err
	}
	natsURL := m[1]
	workers, procs := upWorkerShape()
	var env []string
	if os.Getenv("GOMAXPROCS") == "" {
		env = []string{"GOMAXPROCS=" + strconv.Itoa(procs)}
	}
	var responders []*child
	for i := range workers {
		r, err := b.start(fmt.Sprintf("nats responder %d", i+1), env, "bench", "serve-nats-responder", "--nats", natsURL, "--subject", rawSubject)
		if err != nil {
			return err
		}
		if _, err := r.waitLine(ctx, reResponding, benchStartTimeout); err != nil {
			return err
		}
		responders = append(responders, r)
	}
	nc, err := nats.Connect(natsURL, nats.Name("shoal-bench"))
	if err != nil {
		return fmt.Errorf("connect to the raw NATS server: %w", err)
	}
	err = b.load(ctx, cfgNATS, rawNATSLoad(nc), nil)
	nc.Close()
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range responders {
		errs = append(errs, b.stopChild(r))
	}
	return errors.Join(append(errs, b.stopChild(srv))...)
}

// node measures the Node.js cluster + Express reference.
func (b *bench) node(ctx context.Context, n *nodeSetup) error {
	cmd := exec.Command(n.node, "server.js")
	cmd.Dir = n.dir
	// Production mode, as Express is deployed.
	cmd.Env = append(childEnv(), "NODE_ENV=production")
	c, err := startChild("node", cmd, b.o.verbose)
	if err != nil {
		return err
	}
	b.procs.add(c)
	return b.loadListening(ctx, c, cfgNode, "/ping")
}

// upWorkerShape is how shoal up runs its workers by default: one per
// CPU, each with GOMAXPROCS the CPUs divided among them (workers.go), or
// the GOMAXPROCS of the environment when one is set.
func upWorkerShape() (workers, procs int) {
	workers = runtime.NumCPU()
	procs = max(runtime.NumCPU()/workers, 1)
	if v, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && v > 0 {
		procs = v
	}
	return workers, procs
}

// loadFunc runs the load generator for one configuration.
type loadFunc func(ctx context.Context, cfg loadgen.Config) (*loadgen.Result, error)

func httpLoad(t loadgen.Target) loadFunc {
	return func(ctx context.Context, cfg loadgen.Config) (*loadgen.Result, error) {
		return loadgen.HTTP(ctx, cfg, t)
	}
}

// shoalNATSLoad sends invocations of ping on nc as shoal invoke --nats
// does (the same request message), and checks each answer's status and
// body. The requesters share the connection, as the goroutines of one
// NATS client would.
func shoalNATSLoad(nc *nats.Conn) loadFunc {
	return func(ctx context.Context, cfg loadgen.Config) (*loadgen.Result, error) {
		return loadgen.Run(ctx, cfg, func(int) (loadgen.Requester, error) {
			msg := requestMsg(invocation.Subject("ping"), request{method: http.MethodGet, header: http.Header{}})
			h := http.Header{}
			return loadgen.RequesterFunc(func() error {
				reply, err := nc.RequestMsg(msg, benchRequestLimit)
				if err != nil {
					return &loadgen.Error{Kind: loadgen.NATS, Err: err}
				}
				clear(h)
				status, err := invocation.ReadReply(h, reply.Header)
				switch {
				case err != nil:
					return &loadgen.Error{Kind: loadgen.Status, Err: err}
				case status != http.StatusOK:
					return loadgen.Errorf(loadgen.Status, "status %d: %s", status, truncateBody(reply.Data))
				case string(reply.Data) != string(pongBody):
					return loadgen.Errorf(loadgen.Body, "body %q", truncateBody(reply.Data))
				}
				return nil
			}), nil
		})
	}
}

// rawNATSLoad sends plain requests on nc and checks each answer's body.
func rawNATSLoad(nc *nats.Conn) loadFunc {
	return func(ctx context.Context, cfg loadgen.Config) (*loadgen.Result, error) {
		return loadgen.Run(ctx, cfg, func(int) (loadgen.Requester, error) {
			return loadgen.RequesterFunc(func() error {
				reply, err := nc.Request(rawSubject, nil, benchRequestLimit)
				if err != nil {
					return &loadgen.Error{Kind: loadgen.NATS, Err: err}
				}
				if string(reply.Data) != string(pongBody) {
					return loadgen.Errorf(loadgen.Body, "body %q", truncateBody(reply.Data))
				}
				return nil
			}), nil
		})
	}
}

func truncateBody(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// load runs one configuration's load, reporting progress once a second
// (and calling sample, if set, at each report of the measured period),
// and records its result.
func (b *bench) load(ctx context.Context, name string, run loadFunc, sample func(loadgen.Progress)) error {
	b.step++
	prefix := fmt.Sprintf("[%d/%d] %s", b.step, b.steps, name)
	warmup := b.o.warmup
	if name == cfgNode {
		warmup = max(warmup, b.o.nodeWarmup)
	}
	fmt.Fprintf(b.progress, "%s: warm-up %s, then %s with %d connections\n", prefix, warmup, b.o.duration, b.o.connections)
	sampled := false
	cfg := loadgen.Config{
		Workers: b.o.connections, Warmup: warmup, Duration: b.o.duration, Timeout: benchRequestLimit + time.Second,
		Progress: func(p loadgen.Progress) {
			phase, total := "", b.o.duration
			if p.Warmup {
				phase, total = "warm-up ", warmup
			}
			fmt.Fprintf(b.progress, "%s: %s%ds/%s  %s req/s\n", prefix, phase, int(p.Elapsed.Round(time.Second)/time.Second), total, thousands(p.Rate))
			if sample != nil && !p.Warmup {
				sample(p)
				sampled = true
			}
		},
	}
	res, err := run(ctx, cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if sample != nil && !sampled { // a load shorter than a second
		sample(loadgen.Progress{Elapsed: res.Elapsed})
	}
	r := b.report.record(name, res)
	fmt.Fprintf(b.progress, "%s: %s req/s, p50 %s, p99 %s, %d errors\n", prefix, thousands(r.RPS), fmtMS(r.Latency.P50), fmtMS(r.Latency.P99), r.Errors.Total())
	for _, e := range res.FirstErrors {
		fmt.Fprintf(b.progress, "%s: error: %s\n", prefix, e)
	}
	return nil
}

// waitPong polls url until it answers 200 pong!, within limit.
func waitPong(ctx context.Context, u string, h http.Header, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last string
	for {
		status, body, err := httpGet(ctx, u, h)
		switch {
		case err == nil && status == 200 && string(body) == string(pongBody):
			return nil
		case err != nil:
			last = err.Error()
		default:
			last = fmt.Sprintf("%d %s", status, truncateBody(body))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("GET %s did not answer 200 pong! within %s (last: %s)", u, limit, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// httpGet makes one GET with net/http (not on a measured path).
func httpGet(ctx context.Context, u string, h http.Header) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, benchRequestLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	if h != nil {
		req.Header = h.Clone()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, body, err
}

// upWorkers lists shoal up's workers from GET /system/workers.
func upWorkers(ctx context.Context, gw, tok string) ([]ProcRSS, error) {
	status, body, err := httpGet(ctx, "http://"+gw+"/system/workers", http.Header{"Authorization": {"Bearer " + tok}})
	if err != nil {
		return nil, fmt.Errorf("GET /system/workers: %w", err)
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET /system/workers: %d %s", status, truncateBody(body))
	}
	var ws []WorkerStatus
	if err := json.Unmarshal(body, &ws); err != nil {
		return nil, fmt.Errorf("GET /system/workers: %w", err)
	}
	var out []ProcRSS
	for _, w := range ws {
		if w.PID > 0 {
			out = append(out, ProcRSS{Worker: w.Worker, PID: w.PID})
		}
	}
	if len(out) == 0 {
		return nil, errors.New("GET /system/workers: no worker is running")
	}
	return out, nil
}

// writeFileAtomic writes a file through a temporary one in its
// directory, so that a reader never sees half of it.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}
