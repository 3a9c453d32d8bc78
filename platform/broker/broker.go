// Package broker runs Shoal's NATS servers: the one embedded in `shoal up`,
// the single-machine default (JetStream on, its store under the data
// directory, listening on loopback), and the nodes of a multi-machine
// cluster run by `shoal nats`. Both log through log/slog.
//
// # Durability
//
// Unlike nats-server's default, JetStream here writes every message to
// disk (fsync) before acknowledging it; see [Config.LazySync].
package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// DefaultAddr is where the embedded server listens unless told otherwise.
const DefaultAddr = "127.0.0.1:4222"

// DefaultName is the server and cluster name unless told otherwise.
const DefaultName = "shoal"

// Config configures a NATS server.
type Config struct {
	// Addr is host:port to listen on for clients; port 0 picks a free
	// port.
	Addr string
	// DataDir holds the server's state; JetStream stores under
	// DataDir/jetstream (nats-server adds the last element).
	DataDir string
	// MaxPayload is the largest message the server accepts, headers
	// included; 0 keeps the NATS default (1 MiB).
	MaxPayload int
	// Users are the identities allowed to connect, with their
	// permissions (see [Credentials.Users]); none leaves the server open
	// to anyone, which only tests do.
	Users []*server.NkeyUser
	// Logger receives the server's log; nil discards it.
	Logger *slog.Logger

	// Name is the server name, DefaultName if empty; it must be unique
	// within a cluster.
	Name string
	// Cluster makes the server a node of a NATS cluster; its zero value
	// runs a single server.
	Cluster ClusterConfig
	// MonitorAddr is host:port of nats-server's HTTP monitoring endpoint
	// (/healthz, /varz, /jsz ...); empty turns it off, port 0 picks a
	// free port.
	MonitorAddr string

	// LazySync is how often JetStream fsyncs its files in the background.
	// Zero, the default, fsyncs every write before acknowledging it
	// (nats-server's sync: always), so that an acknowledged message
	// survives an OS crash or a power failure. Jepsen's analysis of NATS
	// 2.12.1 (https://jepsen.io/analyses/nats-2.12.1, nats-server issue
	// #7564) showed that nats-server's own default, a lazy fsync every
	// two minutes, loses acknowledged writes on such failures, even in an
	// R3 cluster. A positive value trades that guarantee for throughput.
	LazySync time.Duration
	// LameDuck is the time [Server.LameDuckShutdown] spreads client
	// disconnections over; 0 keeps the NATS default (2 minutes).
	LameDuck time.Duration
}

// ClusterConfig makes a server a node of a NATS cluster: the nodes connect
// to each other over routes and replicate JetStream through Raft.
type ClusterConfig struct {
	// Name is the cluster's name, DefaultName if empty; every node of a
	// cluster has the same.
	Name string
	// Addr is host:port the node listens on for routes from its peers;
	// empty runs no cluster, port 0 picks a free port.
	Addr string
	// Routes are the seed route URLs, nats-route://host:port or
	// nats://host:port. Clustered JetStream needs at least one, and sizes
	// its first meta group from their count, so give every node the same
	// list of all nodes: a node ignores its own URL.
	Routes []string
	// Advertise is host:port the node tells its peers to route to, when
	// Addr is not reachable from them (NAT, containers); optional.
	Advertise string
}

// Server is a running NATS server.
type Server struct {
	ns         *server.Server
	maxPayload int
}

// readyTimeout bounds how long Start waits for the server to accept
// connections.
const readyTimeout = 10 * time.Second

// Start starts a NATS server with JetStream and waits until it accepts
// clients. A cluster node does not wait for its peers: JetStream serves
// once a quorum of the cluster is up.
func Start(cfg Config) (*Server, error) {
	opts, err := options(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded nats: create store directory: %w", err)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	adapter := &slogAdapter{log: logger, fatal: make(chan string, 1)}
	ns.SetLogger(adapter, false, false)
	go ns.Start()
	// ReadyForConnections covers the client, route and monitoring
	// listeners; JetStream is enabled before they open. It does not wait
	// for routes or a JetStream meta leader, which a cluster's first node
	// would wait for in vain.
	for deadline := time.Now().Add(readyTimeout); !ns.ReadyForConnections(100 * time.Millisecond); {
		select {
		case msg := <-adapter.fatal: // e.g. the port is taken
			ns.Shutdown()
			return nil, fmt.Errorf("embedded nats: %s", msg)
		default:
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return nil, fmt.Errorf("embedded nats: not ready to accept connections on %s after %s", cfg.Addr, readyTimeout)
		}
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats: JetStream did not start (store under %s); see the log above", cfg.DataDir)
	}
	return &Server{ns: ns, maxPayload: int(opts.MaxPayload)}, nil
}

// options translates cfg into nats-server's options.
func options(cfg Config) (*server.Options, error) {
	host, port, err := splitAddr("listen", cfg.Addr)
	if err != nil {
		return nil, err
	}
	if cfg.DataDir == "" {
		return nil, errors.New("a data directory is required")
	}
	if cfg.LazySync < 0 {
		return nil, fmt.Errorf("lazy sync interval %s: want 0 (sync always) or a positive interval", cfg.LazySync)
	}
	opts := &server.Options{
		ServerName: cmp.Or(cfg.Name, DefaultName),
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		MaxPayload: int32(cfg.MaxPayload),
		Nkeys:      cfg.Users,
		// Every write reaches the disk before it is acknowledged, unless
		// the caller chose a lazy interval; see Config.LazySync.
		SyncAlways:   cfg.LazySync == 0,
		SyncInterval: cfg.LazySync,
		// The shoal process owns signals and shuts the server down itself.
		NoSigs: true,
	}
	if cfg.LameDuck > 0 {
		opts.LameDuckDuration = cfg.LameDuck
		// Wait before disconnecting clients, so that they do not move to
		// a peer entering lame-duck mode at the same time; the grace
		// period must be shorter than the duration.
		opts.LameDuckGracePeriod = min(10*time.Second, cfg.LameDuck/3)
	}
	if cfg.MonitorAddr != "" {
		if opts.HTTPHost, opts.HTTPPort, err = splitAddr("monitor", cfg.MonitorAddr); err != nil {
			return nil, err
		}
	}
	if c := cfg.Cluster; c.Addr != "" {
		opts.Cluster.Name = cmp.Or(c.Name, DefaultName)
		if opts.Cluster.Host, opts.Cluster.Port, err = splitAddr("cluster listen", c.Addr); err != nil {
			return nil, err
		}
		if len(c.Routes) == 0 {
			return nil, fmt.Errorf("cluster listen address %s: JetStream in a cluster needs routes; list every node's route URL, this one's included", c.Addr)
		}
		for _, r := range c.Routes {
			u, err := routeURL(r)
			if err != nil {
				return nil, err
			}
			opts.Routes = append(opts.Routes, u)
		}
		if c.Advertise != "" {
			if _, _, err := splitAddr("cluster advertise", c.Advertise); err != nil {
				return nil, err
			}
			opts.Cluster.Advertise = c.Advertise
		}
	} else if len(c.Routes) > 0 || c.Advertise != "" {
		return nil, errors.New("cluster routes or advertise address given without a cluster listen address")
	}
	return opts, nil
}

// splitAddr splits host:port; port 0 becomes nats-server's "any free
// port", since nats-server reads 0 as "the default port" or "off".
func splitAddr(what, addr string) (string, int, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%s address %q: %w", what, addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%s address %q: invalid port", what, addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// routeURL parses a seed route URL.
func routeURL(s string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("route %q: %w", s, err)
	}
	if u.Scheme != "nats-route" && u.Scheme != "nats" {
		return nil, fmt.Errorf("route %q: want nats-route://host:port or nats://host:port", s)
	}
	if _, _, err := splitAddr("route", u.Host); err != nil {
		return nil, fmt.Errorf("route %q: want nats-route://host:port: %w", s, err)
	}
	return u, nil
}

// ParseSyncPolicy parses a JetStream sync policy as given on the command
// line: "always" (fsync every write, [Config.LazySync] 0) or a duration of
// at least one second between lazy fsyncs.
func ParseSyncPolicy(s string) (time.Duration, error) {
	if strings.TrimSpace(s) == "always" {
		return 0, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < time.Second {
		return 0, fmt.Errorf("sync policy %q: want always (fsync every write) or an interval of at least 1s between lazy fsyncs, like 2m", s)
	}
	return d, nil
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:4222.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ns.Addr() }

// ClusterAddr is the address the server listens on for routes; nil when it
// is not clustered.
func (s *Server) ClusterAddr() net.Addr {
	if a := s.ns.ClusterAddr(); a != nil {
		return a
	}
	return nil
}

// MonitorURL is the base URL of the HTTP monitoring endpoint, e.g.
// http://127.0.0.1:8222; "" when it is off.
func (s *Server) MonitorURL() string {
	a := s.ns.MonitorAddr()
	if a == nil {
		return ""
	}
	ip := a.IP
	if ip.IsUnspecified() { // listening everywhere: loopback is one of them
		ip = net.IPv4(127, 0, 0, 1)
		if a.IP.To4() == nil {
			ip = net.IPv6loopback
		}
	}
	return "http://" + net.JoinHostPort(ip.String(), strconv.Itoa(a.Port))
}

// Name is the server's name.
func (s *Server) Name() string { return s.ns.Name() }

// NumRoutes is the number of route connections to other cluster nodes.
func (s *Server) NumRoutes() int { return s.ns.NumRoutes() }

// MetaGroup is the JetStream meta group, which places streams and
// consumers on a cluster's nodes, as one node sees it.
type MetaGroup struct {
	// Leader is the name of the server leading the group; "" while there
	// is none (no quorum yet, or an election under way).
	Leader string
	// Size is the number of nodes the group knows, this one included.
	Size int
}

// MetaGroup returns the JetStream meta group as this server sees it; the
// zero value when the server is not clustered.
func (s *Server) MetaGroup() MetaGroup {
	jsz, err := s.ns.Jsz(&server.JSzOptions{})
	if err != nil || jsz.Meta == nil {
		return MetaGroup{}
	}
	return MetaGroup{Leader: jsz.Meta.Leader, Size: jsz.Meta.Size}
}

// InProcessConn connects to the server through memory instead of a
// socket, for a client in the same process: pass the server to
// nats.InProcessServer. It spares the client and the server a system call
// per read and per write.
func (s *Server) InProcessConn() (net.Conn, error) { return s.ns.InProcessConn() }

// MaxPayload is the largest message the server accepts; 0 means the NATS
// default.
func (s *Server) MaxPayload() int { return s.maxPayload }

// StoreDir is where JetStream keeps its data.
func (s *Server) StoreDir() string { return s.ns.StoreDir() }

// Shutdown stops the server, closing every client connection, and waits
// until it has stopped. Calling it again does nothing.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// LameDuckShutdown stops the server gently, for a cluster node going down
// while its peers stay up: it stops accepting clients, hands its Raft
// leaderships to peers, stops JetStream, tells clients to move to the
// other nodes and closes their connections spread over [Config.LameDuck].
// When ctx ends first, it shuts down at once.
func (s *Server) LameDuckShutdown(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		s.ns.LameDuckShutdown()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	s.Shutdown() // also ends an unfinished lame-duck mode
}

// slogAdapter feeds nats-server's log into slog. The server's start-up
// banner is notice-level and would drown Shoal's one line per component, so
// notices go to debug; warnings and errors keep their level.
type slogAdapter struct {
	log *slog.Logger
	// fatal receives the first fatal error, which ends start-up.
	fatal chan string
}

func (a *slogAdapter) Noticef(format string, v ...any) {
	a.log.Debug(fmt.Sprintf(format, v...), "component", "nats")
}

func (a *slogAdapter) Warnf(format string, v ...any) {
	if strings.HasPrefix(format, "Maximum payloads over") {
		// Shoal raises max_payload on purpose to fit its body limit
		// (8 MiB by default); the warning would repeat on every start.
		a.log.Debug(fmt.Sprintf(format, v...), "component", "nats")
		return
	}
	a.log.Warn(fmt.Sprintf(format, v...), "component", "nats")
}

func (a *slogAdapter) Errorf(format string, v ...any) {
	a.log.Error(fmt.Sprintf(format, v...), "component", "nats")
}

func (a *slogAdapter) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	a.log.Error(msg, "component", "nats", "fatal", true)
	select {
	case a.fatal <- msg:
	default:
	}
}

func (a *slogAdapter) Debugf(format string, v ...any) {
	a.log.Debug(fmt.Sprintf(format, v...), "component", "nats")
}

func (a *slogAdapter) Tracef(format string, v ...any) {
	a.log.Debug(fmt.Sprintf(format, v...), "component", "nats", "trace", true)
}
