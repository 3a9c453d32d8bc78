// Package tokentest mints tokens for tests of the packages that check
// them: well-formed ones with a Signer, and arbitrary ones, signed as an
// attacker would, to prove they are refused.
package tokentest

import (
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/shoal-dev/shoal/token"
)

// Bearer returns a function that mints "Bearer TOKEN" Authorization values
// for subject, with the given permissions, signed with key for issuer and
// audience "shoal", valid for a minute.
func Bearer(tb testing.TB, key jwkset.JWK, subject string) func(perms ...string) string {
	tb.Helper()
	s, err := token.NewSigner(key, "shoal", "shoal")
	if err != nil {
		tb.Fatalf("signer: %v", err)
	}
	return func(perms ...string) string {
		tb.Helper()
		tok, _, err := s.Sign(subject, perms, time.Minute)
		if err != nil {
			tb.Fatalf("sign: %v", err)
		}
		return "Bearer " + tok
	}
}

// Key returns a new EdDSA signing key and a verifier of the tokens it
// signs for issuer and audience "shoal" (as Bearer mints them).
func Key(tb testing.TB) (jwkset.JWK, *token.Verifier) {
	tb.Helper()
	key, err := token.GenerateKey(token.EdDSA)
	if err != nil {
		tb.Fatalf("key: %v", err)
	}
	keys, err := token.StaticKeys(key)
	if err != nil {
		tb.Fatalf("key: %v", err)
	}
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: []token.Issuer{{Issuer: "shoal", Audience: "shoal", Keys: keys}}})
	if err != nil {
		tb.Fatalf("verifier: %v", err)
	}
	return key, v
}

// SignRaw signs claims with method and a raw key, under kid ("" for no
// kid header), with none of a Signer's checks.
func SignRaw(tb testing.TB, method jwt.SigningMethod, kid string, key any, claims jwt.Claims) string {
	tb.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatalf("sign: %v", err)
	}
	return s
}
