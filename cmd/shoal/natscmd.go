package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoal-dev/shoal/platform/broker"
)

// natsOptions are the flags of `shoal nats`.
type natsOptions struct {
	listen      string
	dataDir     string
	name        string
	cluster     broker.ClusterConfig
	monitor     string
	credentials string
	maxPayload  byteSize
	sync        syncPolicy
	drain       time.Duration
}

// maxPayloadLimit is the largest max_payload nats-server accepts.
const maxPayloadLimit = 64 << 20

func newNATSCmd() *cobra.Command {
	o := natsOptions{maxPayload: 9 << 20}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = broker.DefaultName
	}
	cmd := &cobra.Command{
		Use:   "nats",
		Short: "Run a NATS server node, alone or in a cluster across machines",
		Long: `Run one NATS server with JetStream, for a deployment across machines
(a Kubernetes StatefulSet, docker compose): the same server shoal up embeds,
as a node of a NATS cluster when --cluster-listen is given. It admits the
role identities of --credentials only (ROLE.nk seeds or ROLE.pub public
keys for admin, gateway, runner, auth and client; the server needs only the
public keys). SIGINT or SIGTERM puts it in lame-duck mode: it stops taking
clients, hands its JetStream leaderships to peers and moves its clients to
the other nodes over --drain-timeout, then exits 0.

Cluster: give every node the same --routes, listing every node's route URL
(its own included, which it ignores), e.g. for a 3-replica StatefulSet
nats named nats with a headless service nats:
  --routes nats-route://nats-0.nats:6222,nats-route://nats-1.nats:6222,nats-route://nats-2.nats:6222
Clustered JetStream sizes its first meta group from that list. Start the nodes in
parallel (podManagementPolicy: Parallel): JetStream serves once a quorum is
up. The route port admits any peer that reaches it; keep it on a private
network.

Durability: JetStream fsyncs every write before acknowledging it (--sync
always). NATS's own default is a lazy fsync every 2 minutes, which
Jepsen's analysis of NATS 2.12.1 showed loses acknowledged writes on a
power failure or OS crash (nats-server issue #7564); --sync 2m restores it
for throughput.

Health: --monitor serves nats-server's monitoring endpoint. GET /healthz
answers 200 only when the server accepts connections, JetStream is enabled
and, in a cluster, a meta leader is known, this node is current with it,
and every stream and consumer placed on this node is current; else 503.
That is the startup probe. /healthz?js-enabled-only=true checks only the
listeners and that JetStream is enabled: use it as the liveness probe, so
that a node waiting for quorum or catching up is not restarted. The NATS
Helm chart uses /healthz?js-server-only=true (the listeners only) for
readiness.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runNATS(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", broker.DefaultAddr, "client listen address host:port")
	f.StringVar(&o.dataDir, "data", ".shoal", "data directory; JetStream stores under DATA/jetstream")
	f.StringVar(&o.name, "name", host, "server name, unique in the cluster; the hostname unless given")
	f.StringVar(&o.cluster.Name, "cluster-name", broker.DefaultName, "cluster name, the same on every node")
	f.StringVar(&o.cluster.Addr, "cluster-listen", "", "route listen address host:port for the other nodes (empty: no cluster)")
	f.StringSliceVar(&o.cluster.Routes, "routes", nil, "comma-separated route URLs of every node, nats-route://host:port")
	f.StringVar(&o.cluster.Advertise, "cluster-advertise", "", "host:port the other nodes route to, when --cluster-listen is not reachable from them")
	f.StringVar(&o.monitor, "monitor", "", "HTTP monitoring listen address host:port, with /healthz for probes (empty: off)")
	f.StringVar(&o.credentials, "credentials", "", "directory with the roles' ROLE.nk seeds or ROLE.pub public keys (required)")
	f.Var(&o.maxPayload, "max-payload", "largest message accepted, headers included (at most 64MiB)")
	o.sync = syncPolicy(0)
	f.Var(&o.sync, "sync", "JetStream fsync: always (every write, before its acknowledgement) or an interval like 2m (lazy: a power failure can lose acknowledged writes)")
	f.DurationVar(&o.drain, "drain-timeout", defaultDrainTimeout, "how long lame-duck mode may take to move clients away before the server stops")
	_ = cmd.MarkFlagRequired("credentials")
	return cmd
}

func runNATS(ctx context.Context, o natsOptions) error {
	if o.maxPayload > maxPayloadLimit {
		return fmt.Errorf("--max-payload %s: at most 64MiB", o.maxPayload.String())
	}
	if o.drain <= 0 {
		return fmt.Errorf("--drain-timeout %s: want a positive duration", o.drain)
	}
	creds, err := broker.LoadCredentials(o.credentials)
	if err != nil {
		return fmt.Errorf("--credentials: %w", err)
	}
	warnLazySync(time.Duration(o.sync))
	srv, err := broker.Start(broker.Config{
		Addr:        o.listen,
		DataDir:     o.dataDir,
		MaxPayload:  int(o.maxPayload),
		Users:       creds.Users(),
		Logger:      logger,
		Name:        o.name,
		Cluster:     o.cluster,
		MonitorAddr: o.monitor,
		LazySync:    time.Duration(o.sync),
		LameDuck:    o.drain,
	})
	if err != nil {
		return err
	}
	cluster := ""
	if a := srv.ClusterAddr(); a != nil {
		cluster = a.String()
	}
	logger.Info("nats listening", "url", srv.ClientURL(), "cluster", cluster, "monitor", srv.MonitorURL(),
		"name", srv.Name(), "jetstream", srv.StoreDir(), "sync", o.sync.String())

	<-ctx.Done()
	logger.Info("nats entering lame-duck mode", "drain_timeout", o.drain)
	drain, cancel := context.WithTimeout(context.Background(), o.drain)
	defer cancel()
	srv.LameDuckShutdown(drain)
	logger.Info("nats stopped")
	return nil
}

// syncPolicy is the --sync and --nats-sync flag: "always" or a lazy fsync
// interval, as broker.ParseSyncPolicy reads it; 0 is always.
type syncPolicy time.Duration

func (p *syncPolicy) Set(s string) error {
	d, err := broker.ParseSyncPolicy(s)
	if err != nil {
		return err
	}
	*p = syncPolicy(d)
	return nil
}

func (p *syncPolicy) String() string {
	if *p == 0 {
		return "always"
	}
	return time.Duration(*p).String()
}

func (p *syncPolicy) Type() string { return "policy" }

// warnLazySync says, at start, that a lazy sync policy can lose
// acknowledged writes.
func warnLazySync(lazy time.Duration) {
	if lazy > 0 {
		logger.Warn("JetStream syncs to disk lazily: acknowledged writes can be lost on a power failure or OS crash", "sync", lazy)
	}
}
