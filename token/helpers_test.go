package token

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// testKeys are one private key per algorithm, generated once per test
// binary: an RSA key takes a good part of a second.
var testKeys = sync.OnceValue(func() map[string]jwkset.JWK {
	keys := map[string]jwkset.JWK{}
	for _, alg := range []string{EdDSA, ES256, RS256, HS256} {
		k, err := GenerateKey(alg)
		if err != nil {
			panic(err)
		}
		keys[alg] = k
	}
	return keys
})

func testKey(alg string) jwkset.JWK { return testKeys()[alg] }

func kidOf(k jwkset.JWK) string { return k.Marshal().KID }

// t0 is the tests' now.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is a settable Now for verifiers.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.set(t)
	return c
}

func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) set(t time.Time)     { c.ns.Store(t.UnixNano()) }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }

// claimsAt are valid claims issued at now for alice, with the echo
// permission, from issuer shoal for audience shoal, good for an hour.
func claimsAt(now time.Time) *Claims {
	return &Claims{
		Permissions: []string{"echo"},
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    "shoal",
			Subject:   "alice",
			Audience:  jwt.ClaimStrings{"shoal"},
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
			NotBefore: jwt.NewNumericDate(now),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        "t1",
		},
	}
}

// with returns claimsAt(t0) changed by edit.
func with(edit func(c *Claims)) *Claims {
	c := claimsAt(t0)
	edit(c)
	return c
}

// signRaw signs claims with method and a raw key, under kid ("" for no
// kid header), bypassing Signer's checks: how an attacker would.
func signRaw(t testing.TB, method jwt.SigningMethod, kid string, key any, claims jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// signWith signs claims with the private JWK k, under its kid and alg.
func signWith(t testing.TB, k jwkset.JWK, claims jwt.Claims) string {
	t.Helper()
	return signRaw(t, methods[string(k.Marshal().ALG)], kidOf(k), k.Key(), claims)
}

// b64 encodes a JSON segment.
func b64(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// segments splits a token.
func segments(tok string) (header, payload, sig string) {
	p := strings.SplitN(tok, ".", 3)
	return p[0], p[1], p[2]
}

// mustStatic returns StaticKeys(keys...).
func mustStatic(t testing.TB, keys ...jwkset.JWK) KeySource {
	t.Helper()
	ks, err := StaticKeys(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// mustVerifier returns a verifier of issuer shoal, audience shoal, with
// keys, configured further by cfg.
func mustVerifier(t testing.TB, keys KeySource, cfg VerifierConfig) *Verifier {
	t.Helper()
	cfg.Issuers = append([]Issuer{{Issuer: "shoal", Audience: "shoal", Keys: keys}}, cfg.Issuers...)
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// countingKeys counts the lookups of a KeySource.
type countingKeys struct {
	KeySource
	n atomic.Int64
}

func (c *countingKeys) KeyRead(ctx context.Context, kid string) (jwkset.JWK, error) {
	c.n.Add(1)
	return c.KeySource.KeyRead(ctx, kid)
}

// len returns the number of entries, void ones included.
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.entries)
		s.mu.Unlock()
	}
	return n
}
