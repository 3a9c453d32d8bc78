package token_test

import (
	"context"
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/token"
)

func ExampleSigner_Sign() {
	key, err := token.GenerateKey(token.EdDSA)
	if err != nil {
		fmt.Println(err)
		return
	}
	signer, err := token.NewSigner(key, "shoal", "shoal")
	if err != nil {
		fmt.Println(err)
		return
	}
	raw, exp, err := signer.Sign("alice", []string{"echo"}, time.Hour)
	if err != nil {
		fmt.Println(err)
		return
	}

	// A verifier needs only the public half of the key.
	public, err := token.Public(key)
	if err != nil {
		fmt.Println(err)
		return
	}
	keys, err := token.StaticKeys(public)
	if err != nil {
		fmt.Println(err)
		return
	}
	v, err := token.NewVerifier(token.VerifierConfig{
		Issuers: []token.Issuer{{Issuer: "shoal", Audience: "shoal", Keys: keys}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := v.Verify(context.Background(), raw)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.Subject, c.Permissions, c.Audience, c.ExpiresAt.Equal(exp), c.ExpiresAt.Sub(c.IssuedAt.Time))
	// Output: alice [echo] [shoal] true 1h0m0s
}

func ExampleVerifier_Authorize() {
	key, _ := token.GenerateKey(token.ES256)
	signer, _ := token.NewSigner(key, "shoal", "shoal")
	keys, _ := token.StaticKeys(key)
	v, _ := token.NewVerifier(token.VerifierConfig{
		Issuers: []token.Issuer{{Issuer: "shoal", Audience: "shoal", Keys: keys}},
	})
	raw, _, _ := signer.Sign("alice", []string{"echo"}, time.Hour)
	ctx := context.Background()

	// A function that requires echo.
	c, aerr := v.Authorize(ctx, "Bearer "+raw, []string{"echo"})
	fmt.Println(c.Subject, aerr == nil)

	// No token: 401, and the challenge to send as WWW-Authenticate.
	_, aerr = v.Authorize(ctx, "", []string{"echo"})
	fmt.Println(aerr.Status, aerr.Challenge())

	// A token without a permission the function requires: 403.
	_, aerr = v.Authorize(ctx, "Bearer "+raw, []string{"echo", "admin"})
	fmt.Println(aerr.Status, aerr.Challenge())

	// Output:
	// alice true
	// 401 Bearer realm="shoal", error="invalid_token", error_description="no bearer token"
	// 403 Bearer realm="shoal", error="insufficient_scope", error_description="the token lacks a permission the function requires: admin", scope="echo admin"
}
