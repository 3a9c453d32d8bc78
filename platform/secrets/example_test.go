package secrets_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/secrets"
)

// A secret is set once by the operator; a runner resolves the secrets a
// function references into its environment.
func Example() {
	dir, err := os.MkdirTemp("", "secrets-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Shutdown()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()

	store, err := secrets.Create(ctx, js, 1)
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Set(ctx, "db-password", []byte("hunter2")); err != nil {
		log.Fatal(err)
	}
	env, err := store.Resolve(ctx, map[string]string{"DB_PASSWORD": "db-password"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(env["DB_PASSWORD"]), "bytes")
	// Output: 7 bytes
}
