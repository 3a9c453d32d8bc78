package keyring_test

import (
	"context"
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/keyring"
	"github.com/shoal-dev/shoal/token"
)

// The signer publishes its public key; every verifier watches the bucket
// and checks tokens with the keys it finds there.
func ExampleWatch() {
	_, js, stop, err := brokertest.ForExample()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
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
