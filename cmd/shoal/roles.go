package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shoal-dev/shoal/functions"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/runner"
)

const (
	defaultHTTPAddr     = "127.0.0.1:8080"
	defaultManifest     = "fn.yaml"
	defaultDrainTimeout = 30 * time.Second
)

// servingGateway is a gateway serving HTTP in the background.
type servingGateway struct {
	*gateway.Gateway
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

// startGateway starts a gateway that owns nc and serves HTTP on addr.
func startGateway(nc *nats.Conn, m *manifest.Manifest, addr string, limits gatewayLimits) (*servingGateway, error) {
	g, err := gateway.New(gateway.Config{
		NATS: nc, Manifest: m, MaxBody: int64(limits.maxBody), MaxInFlight: limits.maxInFlight,
		Logger: logger.With("component", "gateway"),
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("gateway: listen on %s: %w", addr, err)
	}
	sg := &servingGateway{Gateway: g, done: make(chan struct{})}
	go func() {
		sg.err = g.Serve(ln)
		close(sg.done)
	}()
	logger.Info("gateway listening", "url", "http://"+ln.Addr().String(), "functions", len(m.Functions))
	return sg, nil
}

// shutdown drains the gateway; it also reports a serving failure that
// waitForStop has not reported.
func (sg *servingGateway) shutdown(ctx context.Context) error {
	err := sg.Shutdown(ctx)
	<-sg.done
	if sg.reported {
		return err
	}
	return errors.Join(err, sg.err)
}

// startRunner starts a runner that owns nc.
func startRunner(nc *nats.Conn, m *manifest.Manifest, worker int) (*runner.Runner, error) {
	log := logger.With("component", "runner")
	meta := map[string]string{}
	if worker > 0 {
		log = log.With("worker", worker)
		meta["worker"] = strconv.Itoa(worker)
	}
	r, err := runner.Start(nc, runner.Config{Manifest: m, Builtins: functions.Builtins(), Metadata: meta, Logger: log})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return r, nil
}

// waitForStop blocks until the process is asked to stop (ctx, by signal)
// or the gateway stops serving on its own (a failure).
func waitForStop(ctx context.Context, sg *servingGateway) error {
	select {
	case <-ctx.Done():
		logger.Info("shutting down: draining in-flight requests")
		return nil
	case <-sg.done:
		sg.reported = true
		return fmt.Errorf("gateway stopped serving: %w", sg.err)
	}
}

func newGatewayCmd() *cobra.Command {
	var (
		nf     natsFlags
		file   string
		addr   string
		limits gatewayLimits
		drain  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the HTTP gateway against a NATS server or cluster",
		Long: `Run the HTTP gateway: it routes /function/NAME/... onto NATS as one
request per invocation. Run runners (shoal runner) against the same NATS.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := limits.check(); err != nil {
				return err
			}
			m, err := loadManifest(file)
			if err != nil {
				return err
			}
			nc, err := nf.connect("shoal-gateway", gatewayConnOpts...)
			if err != nil {
				return err
			}
			sg, err := startGateway(nc, m, addr, limits)
			if err != nil {
				return err
			}
			runErr := waitForStop(cmd.Context(), sg)
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			defer cancel()
			return errors.Join(runErr, sg.shutdown(ctx))
		},
	}
	nf.register(cmd.Flags())
	cmd.Flags().StringVarP(&file, "file", "f", defaultManifest, "function manifest")
	cmd.Flags().StringVar(&addr, "http", defaultHTTPAddr, "HTTP listen address")
	limits.register(cmd.Flags())
	cmd.Flags().DurationVar(&drain, "drain-timeout", defaultDrainTimeout, "how long shutdown waits for in-flight requests")
	return cmd
}

func newRunnerCmd() *cobra.Command {
	var (
		nf    natsFlags
		file  string
		drain time.Duration
	)
	cmd := &cobra.Command{
		Use:   "runner",
		Short: "Run a function runner against a NATS server or cluster",
		Long: `Run a runner: it serves the manifest's functions from the NATS queue
group shoal-runners, so that any number of runners share the load.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := loadManifest(file)
			if err != nil {
				return err
			}
			nc, err := nf.connect("shoal-runner")
			if err != nil {
				return err
			}
			r, err := startRunner(nc, m, 0)
			if err != nil {
				return err
			}
			logger.Info("runner serving", "nats", nc.ConnectedUrlRedacted(), "id", r.ID(), "functions", r.Functions())
			<-cmd.Context().Done()
			logger.Info("shutting down: draining in-flight invocations")
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			defer cancel()
			return r.Stop(ctx)
		},
	}
	nf.register(cmd.Flags())
	cmd.Flags().StringVarP(&file, "file", "f", defaultManifest, "function manifest")
	cmd.Flags().DurationVar(&drain, "drain-timeout", defaultDrainTimeout, "how long shutdown waits for in-flight invocations")
	return cmd
}
