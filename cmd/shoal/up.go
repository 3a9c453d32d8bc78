package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/runner"
)

// payloadHeaderRoom is what the embedded server's max_payload adds to the
// body limit, for the invocation's headers.
const payloadHeaderRoom = 1 << 20

type upOptions struct {
	file     string
	httpAddr string
	natsAddr string
	dataDir  string
	workers  int
	limits   gatewayLimits
	drain    time.Duration
}

func newUpCmd() *cobra.Command {
	var o upOptions
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the whole platform on this machine: embedded NATS, gateway and runners",
		Long: `Start the whole platform in one process: an embedded NATS server with
JetStream (store under --data), the HTTP gateway, and runner workers
serving the functions of the manifest. Ctrl-C or SIGTERM drains in-flight
requests and exits 0.`,
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
	return cmd
}

func up(ctx context.Context, o upOptions) error {
	if o.workers < 1 {
		return fmt.Errorf("--workers %d: want at least 1", o.workers)
	}
	if err := o.limits.check(); err != nil {
		return err
	}
	m, err := loadManifest(o.file)
	if err != nil {
		return err
	}
	srv, err := broker.Start(broker.Config{
		Addr:       o.natsAddr,
		DataDir:    o.dataDir,
		MaxPayload: int(o.limits.maxBody) + payloadHeaderRoom,
		Logger:     logger,
	})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	logger.Info("nats listening", "url", srv.ClientURL(), "jetstream", srv.StoreDir())

	nf := natsFlags{url: srv.ClientURL()}
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
	for i := range o.workers {
		nc, err := nf.connect(fmt.Sprintf("shoal-runner-%d", i+1))
		if err != nil {
			return abort(err)
		}
		r, err := startRunner(nc, m, i+1)
		if err != nil {
			return abort(err)
		}
		runners = append(runners, r)
	}
	logger.Info("runners serving", "workers", len(runners), "functions", runners[0].Functions())

	nc, err := nf.connect("shoal-gateway", gatewayConnOpts...)
	if err != nil {
		return abort(err)
	}
	sg, err := startGateway(nc, m, o.httpAddr, o.limits)
	if err != nil {
		return abort(err)
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
	// 3. The deferred srv.Shutdown stops NATS last.
	if err := errors.Join(runErr, gwErr, rErr); err != nil {
		return err
	}
	logger.Info("stopped cleanly")
	return nil
}
