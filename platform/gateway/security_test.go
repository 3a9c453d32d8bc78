package gateway_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/shoal-dev/shoal/functions"
	"github.com/shoal-dev/shoal/functions/auth"
	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/keyring"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/token"
	"github.com/shoal-dev/shoal/token/tokentest"
)

const securedManifest = `version: 1
functions:
  ping: {handler: {builtin: ping}, public: true}
  echo: {handler: {builtin: echo}, permissions: [echo]}
  guarded: {handler: {builtin: ping}, permissions: [echo], concurrency: 10000}
  auth: {handler: {builtin: auth}, public: true}
`

// secured is a platform as `shoal up` runs it: a NATS server that admits
// only the role identities, signing keys published in KV, a runner and a
// gateway each verifying tokens with the keys they follow there, the auth
// function with a user store, and a client-role NATS connection that goes
// around the gateway.
type secured struct {
	url    string
	client *nats.Conn
	admin  jetstream.JetStream
	keys   jetstream.KeyValue
	key    jwkset.JWK // the signing key, private
}

// securedOptions vary the verifiers and the gateway of a secured platform.
type securedOptions struct {
	// cacheSize is the verifiers' cache size: 0 for the default,
	// negative for none.
	cacheSize int
	// hs256, when set, is a shared secret the verifiers accept besides
	// the published keys, with HS256 allowed.
	hs256 *jwkset.JWK
	// acks turns on the gateway's runner acks, as shoal up does: the
	// runners' acks must pass the roles' permissions.
	acks bool
}

// startSecured starts the platform.
func startSecured(t testing.TB, o securedOptions) *secured {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, creds := brokertest.StartSecured(t)
	p := &secured{}
	var err error
	p.admin, err = jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleAdmin))
	if err != nil {
		t.Fatal(err)
	}
	if p.keys, err = keyring.Create(ctx, p.admin, 1); err != nil {
		t.Fatal(err)
	}
	if p.key, err = token.GenerateKey(token.EdDSA); err != nil {
		t.Fatal(err)
	}
	if err := keyring.Publish(ctx, p.keys, p.key); err != nil {
		t.Fatal(err)
	}
	users, err := auth.CreateUsers(ctx, p.admin, 1)
	if err != nil {
		t.Fatal(err)
	}
	users.Cost = bcrypt.MinCost
	if err := users.Add(ctx, "alice", "correct horse", []string{"echo"}); err != nil {
		t.Fatal(err)
	}
	limits := auth.Limits{PerUser: 3, PerAddr: 10, Window: time.Minute}
	if _, err := auth.CreateLimiter(ctx, p.admin, limits, 1); err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse("fn.yaml", []byte(securedManifest), manifest.Options{Builtins: functions.Names()})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.NewSigner(p.key, "shoal", "shoal")
	if err != nil {
		t.Fatal(err)
	}

	// The runner, on its own runner-role connection; its key watch and
	// the auth function's KV work on a second one, as the auth role, as
	// shoal up does.
	rnc := brokertest.ConnectAs(t, s, creds, broker.RoleRunner)
	rjs, err := jetstream.New(brokertest.ConnectAs(t, s, creds, broker.RoleAuth))
	if err != nil {
		t.Fatal(err)
	}
	rusers, err := auth.OpenUsers(ctx, rjs)
	if err != nil {
		t.Fatal(err)
	}
	rlimiter, err := auth.OpenLimiter(ctx, rjs, limits)
	if err != nil {
		t.Fatal(err)
	}
	r, err := runner.Start(rnc, runner.Config{
		Manifest: m,
		Builtins: functions.Builtins(functions.Deps{Auth: auth.Config{Users: rusers, Limiter: rlimiter, Signer: signer}}),
		Verifier: verifierOn(t, watchKeys(t, ctx, rjs), o),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Stop(ctx)
	})

	// The gateway, on its own gateway-role connection.
	gnc := brokertest.ConnectAs(t, s, creds, broker.RoleGateway, nats.ReconnectBufSize(-1))
	gjs, err := jetstream.New(gnc)
	if err != nil {
		t.Fatal(err)
	}
	kr := watchKeys(t, ctx, gjs)
	g, err := gateway.New(gateway.Config{NATS: gnc, Manifest: m, Verifier: verifierOn(t, kr, o), JWKS: kr.JWKS, AckRunners: o.acks,
		Workers: func(context.Context) (any, error) { return []map[string]int{{"worker": 1, "pid": 42}}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	p.url = serve(t, g)
	p.client = brokertest.ConnectAs(t, s, creds, broker.RoleClient)
	return p
}

func watchKeys(t testing.TB, ctx context.Context, js jetstream.JetStream) *keyring.Keyring {
	t.Helper()
	kr, err := keyring.Watch(ctx, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kr.Stop() })
	return kr
}

// verifierOn builds a verifier of the published keys kr, as o says.
func verifierOn(t testing.TB, kr *keyring.Keyring, o securedOptions) *token.Verifier {
	t.Helper()
	cfg := token.VerifierConfig{CacheSize: o.cacheSize}
	var keys token.KeySource = kr
	if o.hs256 != nil {
		secret, err := token.StaticKeys(*o.hs256)
		if err != nil {
			t.Fatal(err)
		}
		keys = token.Sources{kr, secret}
		cfg.Algorithms = []string{token.EdDSA, token.ES256, token.RS256, token.HS256}
	}
	cfg.Issuers = []token.Issuer{{Issuer: "shoal", Audience: "shoal", Keys: keys}}
	v, err := token.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// claims are valid claims for alice with the echo permission.
func claims() *token.Claims {
	now := time.Now()
	return &token.Claims{
		Permissions: []string{"echo"},
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: "shoal", Audience: jwt.ClaimStrings{"shoal"}, Subject: "alice", ID: "t1",
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
		},
	}
}

// call is one invocation's outcome, however it travelled.
type call struct {
	status    int
	code      string
	challenge string
	body      string
}

func (p *secured) viaGateway(t *testing.T, fn, authorization, body string) call {
	t.Helper()
	req := newRequest(t, "POST", p.url+"/function/"+fn, strings.NewReader(body))
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp := do(t, req)
	c := call{status: resp.status, challenge: resp.header.Get("WWW-Authenticate"), body: resp.body}
	if e, ok := invocation.ParseError(resp.status, []byte(resp.body)); ok {
		c.code = string(e.Code)
	}
	return c
}

func (p *secured) viaNATS(t *testing.T, fn, authorization, body string) call {
	t.Helper()
	name, path, _ := strings.Cut(fn, "/")
	msg := nats.NewMsg(invocation.Subject(name))
	if path != "" {
		msg.Header.Set(invocation.HeaderPath, "/"+path)
	}
	msg.Data = []byte(body)
	if authorization != "" {
		msg.Header.Set("Authorization", authorization)
	}
	reply, err := p.client.RequestMsg(msg, 10*time.Second)
	if err != nil {
		t.Fatalf("nats request: %v", err)
	}
	h := http.Header{}
	status, err := invocation.ReadReply(h, reply.Header)
	if err != nil {
		t.Fatal(err)
	}
	c := call{status: status, challenge: h.Get("WWW-Authenticate"), body: string(reply.Data)}
	if e, ok := invocation.ParseError(status, reply.Data); ok {
		c.code = string(e.Code)
	}
	return c
}

// TestSecurityTable sends each kind of bad token through the gateway and
// straight over NATS; both must refuse it the same way.
func TestSecurityTable(t *testing.T) {
	p := startSecured(t, securedOptions{acks: true})
	kid := p.key.Marshal().KID
	priv := p.key.Key().(ed25519.PrivateKey)
	pub := priv.Public().(ed25519.PublicKey)
	pubJWK, err := json.Marshal(p.key.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	with := func(edit func(c *token.Claims)) string {
		c := claims()
		edit(c)
		return "Bearer " + tokentest.SignRaw(t, jwt.SigningMethodEdDSA, kid, priv, c)
	}
	valid := with(func(*token.Claims) {})

	// A token whose payload was swapped for one granting echo, keeping the
	// signature of a token that did not.
	weak := tokentest.SignRaw(t, jwt.SigningMethodEdDSA, kid, priv, func() *token.Claims { c := claims(); c.Permissions = []string{"ping"}; return c }())
	strong, err := json.Marshal(claims())
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(weak, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(strong) + "." + parts[2]

	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims()).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}

	const invalid, forbidden = "invalid_token", "insufficient_scope"
	tests := []struct {
		name          string
		authorization string
		status        int
		code          string
		// gatewayStatus, when set, is the gateway's different answer.
		gatewayStatus int
	}{
		{"valid", valid, 200, "", 0},
		{"no token", "", 401, invalid, 0},
		{"not bearer", "Basic YWxpY2U6cHc=", 401, invalid, 0},
		{"empty bearer", "Bearer ", 401, invalid, 0},
		{"garbage", "Bearer garbage", 401, invalid, 0},
		{"three garbage segments", "Bearer a.b.c", 401, invalid, 0},
		{"alg none", "Bearer " + none, 401, invalid, 0},
		{"HS256 signed with the public key", "Bearer " + tokentest.SignRaw(t, jwt.SigningMethodHS256, kid, []byte(pub), claims()), 401, invalid, 0},
		{"HS256 signed with the public JWK", "Bearer " + tokentest.SignRaw(t, jwt.SigningMethodHS256, kid, pubJWK, claims()), 401, invalid, 0},
		{"expired", with(func(c *token.Claims) { c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Hour)) }), 401, invalid, 0},
		{"no exp", with(func(c *token.Claims) { c.ExpiresAt = nil }), 401, invalid, 0},
		{"future nbf", with(func(c *token.Claims) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Hour)) }), 401, invalid, 0},
		{"wrong iss", with(func(c *token.Claims) { c.Issuer = "evil" }), 401, invalid, 0},
		{"wrong aud", with(func(c *token.Claims) { c.Audience = jwt.ClaimStrings{"other-app"} }), 401, invalid, 0},
		{"unknown kid", "Bearer " + tokentest.SignRaw(t, jwt.SigningMethodEdDSA, "nope", otherKey, claims()), 401, invalid, 0},
		{"right kid, other key", "Bearer " + tokentest.SignRaw(t, jwt.SigningMethodEdDSA, kid, otherKey, claims()), 401, invalid, 0},
		{"no kid", "Bearer " + tokentest.SignRaw(t, jwt.SigningMethodEdDSA, "", priv, claims()), 401, invalid, 0},
		{"tampered payload", "Bearer " + tampered, 401, invalid, 0},
		{"lacks the permission", with(func(c *token.Claims) { c.Permissions = []string{"ping", "other"} }), 403, forbidden, 0},
		{"no permissions", with(func(c *token.Claims) { c.Permissions = nil }), 403, forbidden, 0},
		// Past the gateway's header limit net/http refuses the request
		// itself; over NATS the token's own size limit answers.
		{"far over the header size limit", "Bearer " + strings.Repeat("A", 2*gateway.MaxHeaderBytes), 401, invalid, http.StatusRequestHeaderFieldsTooLarge},
		{"over the token size limit", "Bearer " + strings.Repeat("A", 16<<10), 401, invalid, 0},
	}
	for _, tt := range tests {
		for _, via := range []string{"gateway", "nats"} {
			t.Run(tt.name+"/"+via, func(t *testing.T) {
				var c call
				want := tt.status
				if via == "gateway" {
					c = p.viaGateway(t, "echo", tt.authorization, "hello")
					if tt.gatewayStatus != 0 {
						want = tt.gatewayStatus
					}
				} else {
					c = p.viaNATS(t, "echo", tt.authorization, "hello")
				}
				if c.status != want {
					t.Fatalf("status %d, want %d; body %s", c.status, want, c.body)
				}
				if want != tt.status {
					return // net/http's own answer
				}
				if c.code != tt.code {
					t.Errorf("code %q, want %q", c.code, tt.code)
				}
				if tt.code != "" && !strings.Contains(c.challenge, `error="`+tt.code+`"`) {
					t.Errorf("WWW-Authenticate %q, want error=%q", c.challenge, tt.code)
				}
				if tt.status == 200 && !strings.Contains(c.body, `"body": "hello"`) {
					t.Errorf("body %s, want the echo of hello", c.body)
				}
				// Nothing echoes the token back.
				if len(tt.authorization) > 20 && tt.status != 200 && strings.Contains(c.body+c.challenge, strings.TrimPrefix(tt.authorization, "Bearer ")) {
					t.Errorf("the answer contains the token")
				}
			})
		}
	}
	// A public function needs no token, and a bad one does not matter.
	for _, via := range []func(*testing.T, string, string, string) call{p.viaGateway, p.viaNATS} {
		if c := via(t, "ping", "", ""); c.status != 200 || c.body != "pong!" {
			t.Errorf("public ping: %d %s", c.status, c.body)
		}
	}
}

// TestAlgorithmConfusionWithHS256Allowed: with HS256 enabled (a shared
// secret configured), an HS256 token "signed" with an Ed25519 public key
// under that key's kid is still refused, while one signed with the
// secret passes; both through the gateway and over NATS.
func TestAlgorithmConfusionWithHS256Allowed(t *testing.T) {
	secret, err := token.GenerateKey(token.HS256)
	if err != nil {
		t.Fatal(err)
	}
	p := startSecured(t, securedOptions{hs256: &secret})
	kid := p.key.Marshal().KID
	pub := p.key.Key().(ed25519.PrivateKey).Public().(ed25519.PublicKey)
	pubJWK, err := json.Marshal(p.key.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		kid    string
		key    any
		status int
	}{
		{"HS256 with the shared secret", secret.Marshal().KID, secret.Key(), 200},
		{"HS256 with the Ed25519 public key bytes", kid, []byte(pub), 401},
		{"HS256 with the public JWK", kid, pubJWK, 401},
		{"HS256 with the public key under the secret's kid", secret.Marshal().KID, []byte(pub), 401},
	}
	for _, tt := range tests {
		bearer := "Bearer " + tokentest.SignRaw(t, jwt.SigningMethodHS256, tt.kid, tt.key, claims())
		for name, via := range map[string]func(*testing.T, string, string, string) call{"gateway": p.viaGateway, "nats": p.viaNATS} {
			if c := via(t, "echo", bearer, "hello"); c.status != tt.status {
				t.Errorf("%s via %s: %d %s, want %d", tt.name, name, c.status, c.body, tt.status)
			}
		}
	}
}

// TestSystemWorkers: GET /system/workers needs a token holding
// system:read.
func TestSystemWorkers(t *testing.T) {
	p := startSecured(t, securedOptions{})
	bearer := tokentest.Bearer(t, p.key, "ops")
	tests := []struct {
		name, authorization string
		status              int
		body                string
	}{
		{"no token", "", 401, "invalid_token"},
		{"other permission", bearer("echo"), 403, "insufficient_scope"},
		{"system:read", bearer("system:read"), 200, `[{"pid":42,"worker":1}]`},
	}
	for _, tt := range tests {
		req := newRequest(t, "GET", p.url+"/system/workers", nil)
		if tt.authorization != "" {
			req.Header.Set("Authorization", tt.authorization)
		}
		resp := do(t, req)
		if resp.status != tt.status || !strings.Contains(resp.body, tt.body) {
			t.Errorf("%s: %d %s, want %d %s", tt.name, resp.status, resp.body, tt.status, tt.body)
		}
	}
}

// TestKeyRotation adds a second signing key, signs with it, withdraws the
// first: tokens of both keys verify while both are published, and those of
// the withdrawn key stop verifying, with no restart.
func TestKeyRotation(t *testing.T) {
	p := startSecured(t, securedOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	newKey, err := token.GenerateKey(token.ES256)
	if err != nil {
		t.Fatal(err)
	}
	oldSigner, newSigner := tokentest.Bearer(t, p.key, "alice"), tokentest.Bearer(t, newKey, "alice")
	bearer := func(mint func(...string) string) string { return mint("echo") }
	// Before the new key is published, its tokens are refused.
	if c := p.viaGateway(t, "echo", bearer(newSigner), ""); c.status != 401 {
		t.Fatalf("unpublished key: %d", c.status)
	}
	if err := keyring.Publish(ctx, p.keys, newKey); err != nil {
		t.Fatal(err)
	}
	// Every verifier follows the bucket; wait, bounded, for the key to
	// reach the gateway and the runner.
	eventually(t, func() bool {
		return p.viaGateway(t, "echo", bearer(newSigner), "").status == 200 &&
			p.viaNATS(t, "echo", bearer(newSigner), "").status == 200
	})
	for _, via := range []func(*testing.T, string, string, string) call{p.viaGateway, p.viaNATS} {
		if c := via(t, "echo", bearer(oldSigner), ""); c.status != 200 {
			t.Errorf("old key while both are published: %d %s", c.status, c.body)
		}
	}
	if err := keyring.Remove(ctx, p.keys, p.key.Marshal().KID); err != nil {
		t.Fatal(err)
	}
	// A fresh token of the withdrawn key (none is cached) is refused.
	eventually(t, func() bool {
		return p.viaGateway(t, "echo", bearer(oldSigner), "").status == 401 &&
			p.viaNATS(t, "echo", bearer(oldSigner), "").status == 401
	})
	for _, via := range []func(*testing.T, string, string, string) call{p.viaGateway, p.viaNATS} {
		if c := via(t, "echo", bearer(newSigner), ""); c.status != 200 {
			t.Errorf("new key after the old one was withdrawn: %d %s", c.status, c.body)
		}
	}
	// The gateway serves the published keys, public halves only.
	resp := do(t, newRequest(t, "GET", p.url+"/.well-known/jwks.json", nil))
	if resp.status != 200 || !strings.Contains(resp.body, newKey.Marshal().KID) || strings.Contains(resp.body, p.key.Marshal().KID) || strings.Contains(resp.body, `"d"`) {
		t.Errorf("JWKS: %d %s", resp.status, resp.body)
	}
}

// eventually polls cond every 20 ms for at most 10 s.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLogin logs in through the gateway and over NATS, uses the token,
// and trips the failed-login limit.
func TestLogin(t *testing.T) {
	p := startSecured(t, securedOptions{})
	login := func(t *testing.T, via func(*testing.T, string, string, string) call, user, password string) call {
		b, err := json.Marshal(map[string]string{"username": user, "password": password})
		if err != nil {
			t.Fatal(err)
		}
		return via(t, "auth/token", "", string(b))
	}
	for name, via := range map[string]func(*testing.T, string, string, string) call{"gateway": p.viaGateway, "nats": p.viaNATS} {
		t.Run(name, func(t *testing.T) {
			c := login(t, via, "alice", "correct horse")
			if c.status != 200 {
				t.Fatalf("login: %d %s", c.status, c.body)
			}
			var tok struct {
				AccessToken string `json:"access_token"`
				TokenType   string `json:"token_type"`
				ExpiresIn   int    `json:"expires_in"`
			}
			if err := json.Unmarshal([]byte(c.body), &tok); err != nil || tok.TokenType != "Bearer" || tok.ExpiresIn <= 0 || tok.AccessToken == "" {
				t.Fatalf("token answer %s (%v)", c.body, err)
			}
			if c := via(t, "echo", "Bearer "+tok.AccessToken, "hi"); c.status != 200 {
				t.Errorf("echo with the issued token: %d %s", c.status, c.body)
			}
		})
	}
	// Wrong password and unknown user answer alike.
	wrong := login(t, p.viaGateway, "alice", "wrong")
	unknown := login(t, p.viaGateway, "mallory", "wrong")
	if wrong.status != 401 || unknown.status != 401 || wrong.body != unknown.body || wrong.code != "invalid_credentials" {
		t.Errorf("wrong password %d %s; unknown user %d %s", wrong.status, wrong.body, unknown.status, unknown.body)
	}
	if c := login(t, p.viaGateway, "", ""); c.status != 400 {
		t.Errorf("empty login: %d %s", c.status, c.body)
	}
	// alice has one failure; two more reach the limit of 3, then even the
	// right password is refused until the window ends.
	login(t, p.viaGateway, "alice", "wrong")
	login(t, p.viaNATS, "alice", "wrong")
	req := newRequest(t, "POST", p.url+"/function/auth/token", strings.NewReader(`{"username":"alice","password":"correct horse"}`))
	resp := do(t, req)
	if resp.status != 429 || resp.header.Get("Retry-After") == "" {
		t.Fatalf("after 3 failures: %d Retry-After %q %s", resp.status, resp.header.Get("Retry-After"), resp.body)
	}
	if c := login(t, p.viaNATS, "alice", "correct horse"); c.status != 429 {
		t.Errorf("over NATS after 3 failures: %d %s", c.status, c.body)
	}
}
