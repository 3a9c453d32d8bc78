package broker_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/platform/broker"
)

func TestStart(t *testing.T) {
	dir := t.TempDir()
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: dir, MaxPayload: 9 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if s.StoreDir() != filepath.Join(dir, "jetstream") {
		t.Errorf("StoreDir = %s, want %s/jetstream", s.StoreDir(), dir)
	}
	if _, err := os.Stat(s.StoreDir()); err != nil {
		t.Errorf("store directory: %v", err)
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if nc.MaxPayload() != 9<<20 {
		t.Errorf("max_payload = %d, want %d", nc.MaxPayload(), 9<<20)
	}
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(); err != nil {
		t.Errorf("JetStream is not available: %v", err)
	}
}

func TestStartErrors(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	tests := []struct {
		name string
		cfg  broker.Config
		want string
	}{
		{"port taken", broker.Config{Addr: taken.Addr().String(), DataDir: t.TempDir()}, "address already in use"},
		{"no port", broker.Config{Addr: "127.0.0.1", DataDir: t.TempDir()}, "listen address"},
		{"bad port", broker.Config{Addr: "127.0.0.1:http2", DataDir: t.TempDir()}, "invalid port"},
		{"no data directory", broker.Config{Addr: "127.0.0.1:0"}, "data directory is required"},
		{"monitor port taken", broker.Config{Addr: "127.0.0.1:0", MonitorAddr: taken.Addr().String(), DataDir: t.TempDir()}, "address already in use"},
		{"bad monitor address", broker.Config{Addr: "127.0.0.1:0", MonitorAddr: "8222", DataDir: t.TempDir()}, "monitor address"},
		{"route port taken", broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(),
			Cluster: broker.ClusterConfig{Addr: taken.Addr().String(), Routes: []string{"nats-route://" + taken.Addr().String()}}}, "address already in use"},
		{"cluster without routes", broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(),
			Cluster: broker.ClusterConfig{Addr: "127.0.0.1:0"}}, "needs routes"},
		{"route without port", broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(),
			Cluster: broker.ClusterConfig{Addr: "127.0.0.1:0", Routes: []string{"nats-route://nats-0"}}}, "want nats-route://host:port"},
		{"route with another scheme", broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(),
			Cluster: broker.ClusterConfig{Addr: "127.0.0.1:0", Routes: []string{"http://nats-0:6222"}}}, "want nats-route://host:port"},
		{"routes without cluster address", broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(),
			Cluster: broker.ClusterConfig{Routes: []string{"nats-route://nats-0:6222"}}}, "without a cluster listen address"},
		{"negative lazy sync", broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), LazySync: -time.Second}, "lazy sync interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			s, err := broker.Start(tt.cfg)
			if err == nil {
				s.Shutdown()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to say %q", err, tt.want)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("failed after %s; a start-up error should end start-up at once", took)
			}
		})
	}
}

// TestInProcessConn: a client connected through memory, with its role's
// credentials, talks to clients on sockets.
func TestInProcessConn(t *testing.T) {
	creds, err := broker.EnsureCredentials(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), Users: creds.Users()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	connect := func(role broker.Role, opts ...nats.Option) (*nats.Conn, error) {
		opt, err := nats.NkeyOptionFromSeed(creds.SeedFile(role))
		if err != nil {
			t.Fatal(err)
		}
		return nats.Connect(s.ClientURL(), append(opts, opt, nats.CustomInboxPrefix(broker.InboxPrefix(role)))...)
	}
	runner, err := connect(broker.RoleRunner)
	if err != nil {
		t.Fatal(err)
	}
	defer runner.Close()
	if _, err := runner.QueueSubscribe("fn.ping", "runners", func(m *nats.Msg) { _ = m.Respond([]byte("pong!")) }); err != nil {
		t.Fatal(err)
	}
	if err := runner.Flush(); err != nil {
		t.Fatal(err)
	}
	gw, err := connect(broker.RoleGateway, nats.InProcessServer(s))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	if addr := gw.ConnectedAddr(); addr != "pipe" {
		t.Errorf("the gateway's connection is to %q, want net.Pipe's \"pipe\": not through memory", addr)
	}
	reply, err := gw.Request("fn.ping", nil, 5*time.Second)
	if err != nil || string(reply.Data) != "pong!" {
		t.Fatalf("request through memory: %v %v", reply, err)
	}
}
