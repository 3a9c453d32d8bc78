// Package brokertest starts real embedded NATS servers for tests, on
// ephemeral loopback ports with their store in the test's temp directory,
// as net/http/httptest does for HTTP servers.
package brokertest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/shoal-dev/shoal/platform/broker"
)

// MaxPayload is the max_payload of test servers: room for an 8 MiB body.
const MaxPayload = 9 << 20

// Start starts an embedded NATS server with JetStream that stops when the
// test ends.
func Start(tb testing.TB) *broker.Server {
	tb.Helper()
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: tb.TempDir(), MaxPayload: MaxPayload})
	if err != nil {
		tb.Fatalf("start embedded nats: %v", err)
	}
	tb.Cleanup(s.Shutdown)
	return s
}

// ForExample starts an embedded NATS server with JetStream in a new
// temporary directory and connects a JetStream client to it, for
// examples, which have no testing.TB. stop closes the connection, shuts
// the server down and removes the directory.
func ForExample() (s *broker.Server, js jetstream.JetStream, stop func(), err error) {
	dir, err := os.MkdirTemp("", "shoal-example")
	if err != nil {
		return nil, nil, nil, err
	}
	s, err = broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, nil, err
	}
	nc, err := nats.Connect(s.ClientURL())
	if err == nil {
		js, err = jetstream.New(nc)
	}
	stop = func() {
		if nc != nil {
			nc.Close()
		}
		s.Shutdown()
		os.RemoveAll(dir)
	}
	if err != nil {
		stop()
		return nil, nil, nil, err
	}
	return s, js, stop, nil
}

// Connect opens a client connection to s that closes when the test ends.
func Connect(tb testing.TB, s *broker.Server, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		tb.Fatalf("connect to nats: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// StartSecured starts an embedded NATS server that, like `shoal up`'s,
// admits only the role identities of the returned credentials.
func StartSecured(tb testing.TB) (*broker.Server, *broker.Credentials) {
	tb.Helper()
	creds, err := broker.EnsureCredentials(filepath.Join(tb.TempDir(), "credentials"))
	if err != nil {
		tb.Fatalf("nats credentials: %v", err)
	}
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: tb.TempDir(), MaxPayload: MaxPayload, Users: creds.Users()})
	if err != nil {
		tb.Fatalf("start embedded nats: %v", err)
	}
	tb.Cleanup(s.Shutdown)
	return s, creds
}

// ConnectAs opens a connection to s with a role's identity and the role's
// inbox prefix.
func ConnectAs(tb testing.TB, s *broker.Server, creds *broker.Credentials, role broker.Role, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	auth, err := nats.NkeyOptionFromSeed(creds.SeedFile(role))
	if err != nil {
		tb.Fatalf("nkey seed: %v", err)
	}
	opts = append([]nats.Option{auth}, opts...)
	if prefix := broker.InboxPrefix(role); prefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(prefix))
	}
	return Connect(tb, s, opts...)
}

// ClusterTimeout bounds how long StartCluster waits for the cluster to
// form.
const ClusterTimeout = 30 * time.Second

// StartCluster starts a NATS cluster of n nodes with JetStream, node i
// (from 0) on loopback address 127.0.0.(i+2) with ephemeral ports, admitting
// users (nil: anyone). It returns once every node has routes to all others
// and agrees on a JetStream meta leader of an n-node meta group; the nodes
// stop when the test ends, and a test may stop one earlier. It skips the
// test where those addresses cannot be bound (127.0.0.1 is the only
// loopback address on macOS without aliases).
// Each option, if any, adjusts every node's configuration before it starts
// (e.g. its sync policy).
func StartCluster(tb testing.TB, n int, users []*server.NkeyUser, options ...func(*broker.Config)) []*broker.Server {
	tb.Helper()
	if n < 2 || n > 250 {
		tb.Fatalf("StartCluster: %d nodes; want 2 to 250", n)
	}
	// Clustered JetStream wants every node to know the route URLs of all
	// nodes when it starts: it sizes its first meta group from their
	// count. So the route ports are chosen before the nodes start, each
	// by listening on port 0 of the node's own address; a port taken
	// meanwhile makes the start retry with a fresh one.
	hosts := make([]string, n)
	routes := make([]string, n)
	for i := range n {
		hosts[i] = fmt.Sprintf("127.0.0.%d", i+2)
		addr, err := freeAddr(hosts[i])
		if err != nil {
			tb.Skipf("StartCluster: cannot bind loopback address %s (%v); on macOS add it with: sudo ifconfig lo0 alias %s", hosts[i], err, hosts[i])
		}
		routes[i] = "nats-route://" + addr
	}
	name := "test-" + nuid.Next()
	nodes := make([]*broker.Server, n)
	for i := range n {
		var err error
		for attempt := 0; ; attempt++ {
			cfg := broker.Config{
				Name:       fmt.Sprintf("node%d", i+1),
				Addr:       net.JoinHostPort(hosts[i], "0"),
				DataDir:    tb.TempDir(),
				MaxPayload: MaxPayload,
				Users:      users,
				Cluster: broker.ClusterConfig{
					// A name of its own: tests run clusters at once on the
					// same addresses, and a route port one freed may be
					// taken by another; nodes refuse routes from a cluster
					// of another name instead of merging with it.
					Name:   name,
					Addr:   strings.TrimPrefix(routes[i], "nats-route://"),
					Routes: routes,
				},
			}
			for _, o := range options {
				o(&cfg)
			}
			nodes[i], err = broker.Start(cfg)
			if err == nil || attempt == 2 || !isAddrInUse(err) {
				break
			}
			addr, ferr := freeAddr(hosts[i])
			if ferr != nil {
				tb.Fatalf("StartCluster: %v", ferr)
			}
			routes[i] = "nats-route://" + addr
		}
		if err != nil {
			tb.Fatalf("StartCluster: start node %d: %v", i+1, err)
		}
		tb.Cleanup(nodes[i].Shutdown)
	}
	if err := WaitForCluster(nodes, ClusterTimeout); err != nil {
		tb.Fatalf("StartCluster: %v", err)
	}
	return nodes
}

// WaitForCluster waits until each of nodes has routes to all the others
// and they agree on a JetStream meta leader of a group of len(nodes).
func WaitForCluster(nodes []*broker.Server, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := clusterFormed(nodes)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not formed after %s: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func clusterFormed(nodes []*broker.Server) error {
	var leader string
	for _, s := range nodes {
		if r := s.NumRoutes(); r < len(nodes)-1 {
			return fmt.Errorf("%s has %d routes, want %d", s.Name(), r, len(nodes)-1)
		}
		m := s.MetaGroup()
		switch {
		case m.Leader == "":
			return fmt.Errorf("%s knows no JetStream meta leader", s.Name())
		case leader != "" && m.Leader != leader:
			return fmt.Errorf("%s sees meta leader %s, another node %s", s.Name(), m.Leader, leader)
		case m.Size < len(nodes):
			return fmt.Errorf("%s sees a meta group of %d, want %d", s.Name(), m.Size, len(nodes))
		}
		leader = m.Leader
	}
	return nil
}

// freeAddr returns host:port with a port free on host at the time.
func freeAddr(host string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}
