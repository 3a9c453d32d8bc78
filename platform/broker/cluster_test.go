package broker_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
)

// TestCluster runs three nodes on 127.0.0.2-4: an R3 KV bucket written
// through one node is read through another, a queue group on one node
// serves requests sent through another, and with one node down the
// bucket keeps its quorum and stays writable.
func TestCluster(t *testing.T) {
	nodes := brokertest.StartCluster(t, 3, nil)
	for i, s := range nodes {
		if s.ClusterAddr() == nil {
			t.Fatalf("node %d: ClusterAddr is nil", i+1)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	kv := make([]jetstream.KeyValue, len(nodes))
	js := make([]jetstream.JetStream, len(nodes))
	nc := make([]*nats.Conn, len(nodes))
	for i, s := range nodes {
		nc[i] = brokertest.Connect(t, s)
		var err error
		if js[i], err = jetstream.New(nc[i]); err != nil {
			t.Fatal(err)
		}
	}

	// A cluster just formed may still move its meta leader, and a request
	// sent meanwhile goes unanswered: short attempts, retried.
	var created jetstream.KeyValue
	err := broker.Retry(ctx, 5*time.Second, func(ctx context.Context) error {
		var err error
		created, err = js[0].CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "cluster", Replicas: 3, Storage: jetstream.FileStorage})
		return err
	})
	if err != nil {
		t.Fatalf("create R3 bucket through node 1: %v", err)
	}
	if got := created.Bucket(); got != "cluster" {
		t.Fatalf("bucket = %q", got)
	}
	info, err := js[2].Stream(ctx, "KV_cluster")
	if err != nil {
		t.Fatal(err)
	}
	if c := info.CachedInfo().Cluster; c == nil || len(c.Replicas) != 2 {
		t.Fatalf("bucket's stream cluster info = %+v; want a leader and 2 replicas", c)
	}
	for i := range nodes {
		if kv[i], err = js[i].KeyValue(ctx, "cluster"); err != nil {
			t.Fatalf("bucket through node %d: %v", i+1, err)
		}
	}
	if _, err := kv[0].Put(ctx, "k", []byte("v1")); err != nil {
		t.Fatalf("put through node 1: %v", err)
	}
	if e, err := kv[2].Get(ctx, "k"); err != nil || string(e.Value()) != "v1" {
		t.Fatalf("get through node 3 = %v, %v; want v1", e, err)
	}

	// Core NATS: a queue-group member on node 2 serves node 3's request.
	sub, err := nc[1].QueueSubscribe("svc.echo", "workers", func(m *nats.Msg) { _ = m.Respond(append([]byte("echo "), m.Data...)) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc[1].Flush(); err != nil {
		t.Fatal(err)
	}
	// Interest reaches the other nodes asynchronously, over the routes.
	reply := retry(t, ctx, func() ([]byte, error) {
		m, err := nc[2].Request("svc.echo", []byte("hi"), time.Second)
		if err != nil {
			return nil, err
		}
		return m.Data, nil
	})
	if string(reply) != "echo hi" {
		t.Errorf("reply through node 3 = %q, want %q", reply, "echo hi")
	}

	// Two of three nodes keep the quorum of the R3 bucket: with node 2
	// down, it is still writable and readable through nodes 1 and 3.
	nodes[1].Shutdown()
	retry(t, ctx, func() ([]byte, error) { _, err := kv[0].Put(ctx, "k", []byte("v2")); return nil, err })
	retry(t, ctx, func() ([]byte, error) { _, err := kv[2].Put(ctx, "k3", []byte("v3")); return nil, err })
	for _, tt := range []struct {
		node       int
		key, value string
	}{
		{1, "k", "v2"}, {3, "k", "v2"}, {1, "k3", "v3"}, {3, "k3", "v3"},
	} {
		got := retry(t, ctx, func() ([]byte, error) {
			e, err := kv[tt.node-1].Get(ctx, tt.key)
			if err != nil {
				return nil, err
			}
			return e.Value(), nil
		})
		if string(got) != tt.value {
			t.Errorf("node %d: %s = %q, want %q", tt.node, tt.key, got, tt.value)
		}
	}
}

// retry calls f until it succeeds or ctx ends: after a node stops, the
// Raft groups it led elect a new leader, and requests fail meanwhile.
func retry(t *testing.T, ctx context.Context, f func() ([]byte, error)) []byte {
	t.Helper()
	for {
		b, err := f()
		if err == nil {
			return b
		}
		select {
		case <-ctx.Done():
			t.Fatalf("still failing when the time was up: %v", errors.Join(err, ctx.Err()))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestClusterNodeStartsAlone starts one node of a three-node cluster whose
// peers are not up: Start returns, clients connect, and JetStream answers
// that it has no quorum instead of the start hanging.
func TestClusterNodeStartsAlone(t *testing.T) {
	s, err := broker.Start(broker.Config{
		Addr:    "127.0.0.1:0",
		DataDir: t.TempDir(),
		Cluster: broker.ClusterConfig{
			Addr:   "127.0.0.1:0",
			Routes: []string{"nats-route://" + closedAddr(t), "nats-route://" + closedAddr(t)},
		},
	})
	if err != nil {
		t.Fatalf("a cluster node must start before its peers: %v", err)
	}
	defer s.Shutdown()
	if s.ClusterAddr() == nil {
		t.Fatal("ClusterAddr is nil")
	}
	nc := brokertest.Connect(t, s)
	if !nc.IsConnected() {
		t.Fatal("not connected")
	}
	if m := s.MetaGroup(); m.Leader != "" {
		t.Errorf("meta leader %q without peers", m.Leader)
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestLameDuckShutdown(t *testing.T) {
	tests := []struct {
		name     string
		lameDuck time.Duration // Config.LameDuck
		timeout  time.Duration // of the context
		within   time.Duration
	}{
		// Grace period 1s, then the one client is closed.
		{"lame-duck mode runs its course", 3 * time.Second, 30 * time.Second, 10 * time.Second},
		// The NATS default of 2 minutes, cut short by the context.
		{"the context bounds it", 0, 500 * time.Millisecond, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), LameDuck: tt.lameDuck})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Shutdown()
			told := make(chan struct{}, 1)
			brokertest.Connect(t, s, nats.NoReconnect(), nats.LameDuckModeHandler(func(*nats.Conn) { told <- struct{}{} }))
			ctx, cancel := context.WithTimeout(t.Context(), tt.timeout)
			defer cancel()
			start := time.Now()
			s.LameDuckShutdown(ctx)
			if took := time.Since(start); took > tt.within {
				t.Errorf("took %s, want at most %s", took, tt.within)
			}
			select {
			case <-told:
			case <-time.After(5 * time.Second):
				t.Error("the client was not told that the server entered lame-duck mode")
			}
			if _, err := nats.Connect(s.ClientURL(), nats.Timeout(time.Second)); err == nil {
				t.Error("the server still accepts clients")
			}
		})
	}
}
