// Package brokertest starts real embedded NATS servers for tests, on
// ephemeral loopback ports with their store in the test's temp directory,
// as net/http/httptest does for HTTP servers.
package brokertest

import (
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go"

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
