package keyring_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/keyring"
	"github.com/shoal-dev/shoal/token"
)

// The signer publishes its public key; every verifier watches the bucket
// and checks tokens with the keys it finds there.
func ExampleWatch() {
	dir, err := os.MkdirTemp("", "shoal-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	s, err := broker.Start(broker.Config{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Shutdown()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The signer's side.
	key, err := token.GenerateKey(token.EdDSA)
	if err != nil {
		fmt.Println(err)
		return
	}
	kv, err := keyring.Create(ctx, js, 1)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := keyring.Publish(ctx, kv, key); err != nil {
		fmt.Println(err)
		return
	}
	signer, err := token.NewSigner(key, "shoal", "shoal")
	if err != nil {
		fmt.Println(err)
		return
	}
	tok, _, err := signer.Sign("alice", []string{"echo"}, time.Minute)
	if err != nil {
		fmt.Println(err)
		return
	}

	// A verifier's side.
	kr, err := keyring.Watch(ctx, js, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer kr.Stop()
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: []token.Issuer{{Issuer: "shoal", Audience: "shoal", Keys: kr}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := v.Verify(ctx, tok)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.Subject, c.Permissions)
	// Output: alice [echo]
}
