package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/token"
	"github.com/shoal-dev/shoal/token/tokentest"
)

// TestExternalIssuer runs a gateway and a runner that accept only the
// tokens of an external OpenID Connect issuer, whose JWKS a loopback HTTP
// server publishes: no Shoal key exists. Its tokens pass with the right
// audience and permission, fail otherwise, and a key the issuer adds
// later is picked up without a restart.
func TestExternalIssuer(t *testing.T) {
	const issuer = "https://login.example.test/realms/acme"
	k1, err := token.GenerateKey(token.ES256)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := token.GenerateKey(token.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	var published atomic.Value // []byte
	setJWKS := func(keys ...jwkset.JWK) {
		b, err := token.PublicJWKS(keys)
		if err != nil {
			t.Fatal(err)
		}
		published.Store(b)
	}
	setJWKS(k1)
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(published.Load().([]byte))
	}))
	defer idp.Close()

	s, creds := brokertest.StartSecured(t)
	fn := repoManifest(t)
	oidc := []string{"--oidc-issuer", issuer, "--oidc-audience", "shoal-api", "--oidc-jwks", idp.URL + "/certs"}
	as := func(role broker.Role) []string {
		return append([]string{"--nats", s.ClientURL(), "--nats-nkey", creds.SeedFile(role)}, oidc...)
	}
	r := startShoal(t, append([]string{"runner", "-f", fn}, as(broker.RoleRunner)...)...)
	r.waitLog(`msg="runner serving"`)
	g := startShoal(t, append([]string{"gateway", "-f", fn, "--http", "127.0.0.1:0"}, as(broker.RoleGateway)...)...)
	gw := g.waitLog(`msg="gateway listening" url=(\S+)`)[1]

	sign := func(k jwkset.JWK, aud string, perms ...string) string {
		t.Helper()
		now := time.Now()
		return tokentest.SignRaw(t, jwt.GetSigningMethod(k.Marshal().ALG.String()), k.Marshal().KID, k.Key(), &token.Claims{
			Permissions: perms,
			RegisteredClaims: jwt.RegisteredClaims{
				Issuer: issuer, Audience: jwt.ClaimStrings{aud}, Subject: "carol",
				IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
			},
		})
	}
	tests := []struct {
		name   string
		token  string
		status int
	}{
		{"issuer's token", sign(k1, "shoal-api", "echo"), 200},
		{"another audience of the same issuer", sign(k1, "payroll", "echo"), 401},
		{"without the permission", sign(k1, "shoal-api", "other"), 403},
	}
	for _, tt := range tests {
		if status, body := post(t, gw+"/function/echo", "hi", tt.token); status != tt.status {
			t.Errorf("%s: %d %s, want %d", tt.name, status, body, tt.status)
		}
	}
	// The issuer rotates: the new kid triggers a refresh of its JWKS (at
	// most one such refresh per 30 s, so nothing above used one).
	setJWKS(k1, k2)
	if status, body := post(t, gw+"/function/echo", "hi", sign(k2, "shoal-api", "echo")); status != 200 || !strings.Contains(body, `"body": "hi"`) {
		t.Errorf("token of the issuer's new key: %d %s", status, body)
	}
	k3, err := token.GenerateKey(token.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	if status, body := post(t, gw+"/function/echo", "hi", sign(k3, "shoal-api", "echo")); status != 401 {
		t.Errorf("token of a key the issuer never published: %d %s", status, body)
	}
}
