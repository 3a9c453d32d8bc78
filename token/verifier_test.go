package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// sameClaims reports whether two claims say the same (times compared as
// instants, whatever their location).
func sameClaims(a, b *Claims) bool {
	sameTime := func(x, y *jwt.NumericDate) bool {
		return x == nil && y == nil || x != nil && y != nil && x.Equal(y.Time)
	}
	return slices.Equal(a.Permissions, b.Permissions) && (a.Permissions == nil) == (b.Permissions == nil) &&
		a.Issuer == b.Issuer && a.Subject == b.Subject && a.ID == b.ID &&
		slices.Equal(a.Audience, b.Audience) &&
		sameTime(a.ExpiresAt, b.ExpiresAt) && sameTime(a.NotBefore, b.NotBefore) && sameTime(a.IssuedAt, b.IssuedAt)
}

// newJWK wraps a raw key in a JWK with the given metadata.
func newJWK(t testing.TB, key any, md jwkset.JWKMetadataOptions) jwkset.JWK {
	t.Helper()
	k, err := jwkset.NewJWKFromKey(key, jwkset.JWKOptions{Marshal: jwkset.JWKMarshalOptions{Private: true}, Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSecurity is the verifier's security table: every way a token can
// be wrong, and that each is refused for the right reason, with an error
// that wraps ErrInvalidToken and does not quote the token.
func TestSecurity(t *testing.T) {
	ed, es, rs, hs := testKey(EdDSA), testKey(ES256), testKey(RS256), testKey(HS256)
	edPriv := ed.Key().(ed25519.PrivateKey)
	edPub := edPriv.Public().(ed25519.PublicKey)
	rsaDER, err := x509.MarshalPKIXPublicKey(&rs.Key().(*rsa.PrivateKey).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaDER})
	edPublicJWK, err := Public(ed)
	if err != nil {
		t.Fatal(err)
	}
	edPubJSON, err := json.Marshal(edPublicJWK.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	_, otherEd, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	// A second issuer whose key source is a bare jwkset.Storage, which
	// does no checking of its own: unfit keys reach the verifier.
	idpKey := newJWK(t, mustEd25519(t), jwkset.JWKMetadataOptions{KID: "idp-1", ALG: EdDSA})
	p256 := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	encKey := newJWK(t, p256(), jwkset.JWKMetadataOptions{KID: "enc", USE: jwkset.UseEnc})
	mislabelled := newJWK(t, p256(), jwkset.JWKMetadataOptions{KID: "mislabelled", ALG: RS256})
	weakRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weak := newJWK(t, weakRSA, jwkset.JWKMetadataOptions{KID: "weak"})
	// Keys without alg, as identity providers publish them: only their
	// type stands between them and a token of another algorithm.
	rsaNoAlg := newJWK(t, &rs.Key().(*rsa.PrivateKey).PublicKey, jwkset.JWKMetadataOptions{KID: "rsa-no-alg"})
	ecNoAlg := newJWK(t, &es.Key().(*ecdsa.PrivateKey).PublicKey, jwkset.JWKMetadataOptions{KID: "ec-no-alg"})
	idpStore := jwkset.NewMemoryStorage()
	for _, k := range []jwkset.JWK{idpKey, encKey, mislabelled, weak, rsaNoAlg, ecNoAlg} {
		if err := idpStore.KeyWrite(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}

	clk := newClock(t0)
	issuers := []Issuer{
		{Issuer: "idp", Audience: "app", Keys: idpStore},
		{Issuer: "open", Keys: mustStatic(t, idpKey)}, // no audience required
	}
	shoalKeys := mustStatic(t, ed, es, rs, hs)
	// def accepts the default algorithms; withHS also HS256.
	def := mustVerifier(t, shoalKeys, VerifierConfig{Issuers: issuers, Now: clk.now, CacheSize: -1})
	withHS := mustVerifier(t, shoalKeys, VerifierConfig{Issuers: issuers, Now: clk.now, CacheSize: -1,
		Algorithms: []string{EdDSA, ES256, RS256, HS256}})
	// noSecret accepts HS256 but holds no secret.
	noSecret := mustVerifier(t, mustStatic(t, ed, es, rs), VerifierConfig{Now: clk.now, CacheSize: -1,
		Algorithms: []string{EdDSA, ES256, RS256, HS256}})

	valid := claimsAt(t0)
	edValid := signWith(t, ed, valid)
	idpClaims := with(func(c *Claims) { c.Issuer, c.Audience = "idp", jwt.ClaimStrings{"app"} })

	tampered := func() string {
		h, _, s := segments(signWith(t, ed, with(func(c *Claims) { c.Permissions = []string{"ping"} })))
		return h + "." + b64(t, valid) + "." + s
	}()
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, valid).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	noneWithKID := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodNone, valid)
		tok.Header["kid"] = kidOf(ed)
		s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	crit := func() string {
		tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, valid)
		tok.Header["kid"] = kidOf(ed)
		tok.Header["crit"] = []string{"exp"}
		s, err := tok.SignedString(edPriv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	singleAud := signWith(t, ed, jwt.MapClaims{
		"iss": "shoal", "sub": "alice", "aud": "shoal", "permissions": []string{"echo"}, "jti": "t1",
		"iat": t0.Unix(), "nbf": t0.Unix(), "exp": t0.Add(time.Hour).Unix(),
	})
	_, validPayload, _ := segments(edValid)
	unknownAlg := b64(t, map[string]string{"alg": "HS999", "kid": kidOf(ed)}) + "." + validPayload + ".c2ln"
	h, p, s := segments(edValid)

	tests := []struct {
		name string
		v    *Verifier
		tok  string
		want error   // nil: the token verifies
		c    *Claims // the claims it verifies with; nil means valid
	}{
		// What verifies.
		{"EdDSA", def, edValid, nil, nil},
		{"ES256", def, signWith(t, es, valid), nil, nil},
		{"RS256", def, signWith(t, rs, valid), nil, nil},
		{"HS256 when allowed", withHS, signWith(t, hs, valid), nil, nil},
		{"expired within the leeway", def, signWith(t, ed, with(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-20 * time.Second)) })), nil,
			with(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-20 * time.Second)) })},
		{"nbf within the leeway", def, signWith(t, ed, with(func(c *Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(20 * time.Second)) })), nil,
			with(func(c *Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(20 * time.Second)) })},
		{"aud among others", def, signWith(t, ed, with(func(c *Claims) { c.Audience = jwt.ClaimStrings{"other", "shoal"} })), nil,
			with(func(c *Claims) { c.Audience = jwt.ClaimStrings{"other", "shoal"} })},
		{"aud as a single string", def, singleAud, nil, nil},
		{"no nbf nor iat", def, signWith(t, ed, with(func(c *Claims) { c.NotBefore, c.IssuedAt = nil, nil })), nil,
			with(func(c *Claims) { c.NotBefore, c.IssuedAt = nil, nil })},
		{"second issuer", def, signWith(t, idpKey, idpClaims), nil, idpClaims},
		{"RS256 with a key without alg", def, signRaw(t, jwt.SigningMethodRS256, "rsa-no-alg", rs.Key(), idpClaims), nil, idpClaims},
		{"ES256 with a key without alg", def, signRaw(t, jwt.SigningMethodES256, "ec-no-alg", es.Key(), idpClaims), nil, idpClaims},
		{"issuer without audience, any aud", def, signWith(t, idpKey, with(func(c *Claims) { c.Issuer, c.Audience = "open", nil })), nil,
			with(func(c *Claims) { c.Issuer, c.Audience = "open", nil })},

		// Not a token.
		{"empty", def, "", errNoToken, nil},
		{"garbage", def, "garbage", errMalformed, nil},
		{"three garbage segments", def, "a.b.c", errMalformed, nil},
		{"four segments", def, edValid + ".", errMalformed, nil},
		{"two segments", def, h + "." + p, errMalformed, nil},
		{"leading space", def, " " + edValid, errMalformed, nil},
		{"padded base64", def, h + "." + p + "==." + s, errMalformed, nil},
		{"over MaxTokenSize", def, strings.Repeat("A", DefaultMaxTokenSize+1), def.tooLarge, nil},
		{"valid but over MaxTokenSize", def, signWith(t, ed, with(func(c *Claims) { c.Permissions = []string{strings.Repeat("p", DefaultMaxTokenSize)} })), def.tooLarge, nil},

		// Algorithms.
		{"alg none", def, none, errAlgRefused, nil},
		{"alg none with a kid, HS256 allowed", withHS, noneWithKID, errAlgRefused, nil},
		{"unknown alg", def, unknownAlg, errAlgUnknown, nil},
		{"HS256 not allowed", def, signWith(t, hs, valid), errAlgRefused, nil},
		{"HS256 allowed, no secret configured", noSecret, signWith(t, hs, valid), errUnknownKID, nil},
		{"HS256 keyed with the Ed25519 public key", def, signRaw(t, jwt.SigningMethodHS256, kidOf(ed), []byte(edPub), valid), errAlgRefused, nil},
		{"HS256 keyed with the Ed25519 public key, HS256 allowed", withHS, signRaw(t, jwt.SigningMethodHS256, kidOf(ed), []byte(edPub), valid),
			errUnfitKey[errKeyOtherAlg], nil},
		{"HS256 keyed with the RSA public PEM, HS256 allowed", withHS, signRaw(t, jwt.SigningMethodHS256, kidOf(rs), rsaPEM, valid),
			errUnfitKey[errKeyOtherAlg], nil},
		{"HS256 keyed with the public JWK, HS256 allowed", withHS, signRaw(t, jwt.SigningMethodHS256, kidOf(ed), edPubJSON, valid),
			errUnfitKey[errKeyOtherAlg], nil},
		{"HS256 keyed with the RSA public PEM, key without alg", withHS, signRaw(t, jwt.SigningMethodHS256, "rsa-no-alg", rsaPEM, idpClaims),
			errUnfitKey[errKeyType[HS256]], nil},
		{"ES256 under the Ed25519 key's kid", def, signRaw(t, jwt.SigningMethodES256, kidOf(ed), es.Key(), valid),
			errUnfitKey[errKeyOtherAlg], nil},
		{"ES256 under an RSA key without alg", def, signRaw(t, jwt.SigningMethodES256, "rsa-no-alg", es.Key(), idpClaims),
			errUnfitKey[errKeyType[ES256]], nil},
		{"RS256 under a P-256 key without alg", def, signRaw(t, jwt.SigningMethodRS256, "ec-no-alg", rs.Key(), idpClaims),
			errUnfitKey[errKeyType[RS256]], nil},
		{"key's alg is another", def, signRaw(t, jwt.SigningMethodES256, "mislabelled", mislabelled.Key(), idpClaims),
			errUnfitKey[errKeyOtherAlg], nil},
		{"encryption key", def, signRaw(t, jwt.SigningMethodES256, "enc", encKey.Key(), idpClaims),
			errUnfitKey[errKeyForEncryption], nil},
		{"RSA key under 2048 bits", def, signRaw(t, jwt.SigningMethodRS256, "weak", weakRSA, idpClaims),
			errUnfitKey[errKeyType[RS256]], nil},
		{"crit header", def, crit, errCrit, nil},

		// Keys.
		{"unknown kid", def, signRaw(t, jwt.SigningMethodEdDSA, "nope", edPriv, valid), errUnknownKID, nil},
		{"no kid", def, signRaw(t, jwt.SigningMethodEdDSA, "", edPriv, valid), errNoKID, nil},
		{"right kid, other key", def, signRaw(t, jwt.SigningMethodEdDSA, kidOf(ed), otherEd, valid), errBadSignature, nil},
		{"kid of another issuer's key", def, signWith(t, ed, idpClaims), errUnknownKID, nil},
		{"tampered payload", def, tampered, errBadSignature, nil},
		{"signature removed", def, h + "." + p + ".", errBadSignature, nil},
		{"signature of another token", def, h + "." + p + "." + func() string { _, _, s := segments(signWith(t, ed, with(func(c *Claims) { c.ID = "t2" }))); return s }(), errBadSignature, nil},

		// Claims.
		{"expired", def, signWith(t, ed, with(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-time.Hour)) })), errExpired, nil},
		{"expired past the leeway", def, signWith(t, ed, with(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-31 * time.Second)) })), errExpired, nil},
		{"no exp", def, signWith(t, ed, with(func(c *Claims) { c.ExpiresAt = nil })), errNoExpiry, nil},
		{"future nbf", def, signWith(t, ed, with(func(c *Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(time.Hour)) })), errNotYetValid, nil},
		{"future iat", def, signWith(t, ed, with(func(c *Claims) { c.IssuedAt = jwt.NewNumericDate(t0.Add(time.Hour)) })), errIssuedInFuture, nil},
		{"wrong iss", def, signWith(t, ed, with(func(c *Claims) { c.Issuer = "evil" })), errUntrustedIssuer, nil},
		{"iss differs in case", def, signWith(t, ed, with(func(c *Claims) { c.Issuer = "Shoal" })), errUntrustedIssuer, nil},
		{"no iss", def, signWith(t, ed, with(func(c *Claims) { c.Issuer = "" })), errNoIssuer, nil},
		{"wrong aud", def, signWith(t, ed, with(func(c *Claims) { c.Audience = jwt.ClaimStrings{"other-app"} })), errWrongAudience, nil},
		{"no aud", def, signWith(t, ed, with(func(c *Claims) { c.Audience = nil })), errWrongAudience, nil},
		{"other issuer's audience", def, signWith(t, idpKey, with(func(c *Claims) { c.Issuer = "idp" })), errWrongAudience, nil},
		{"exp not a number", def, signWith(t, ed, jwt.MapClaims{"iss": "shoal", "aud": "shoal", "exp": "tomorrow"}), errMalformed, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.v.Verify(context.Background(), tt.tok)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				want := tt.c
				if want == nil {
					want = valid
				}
				if !sameClaims(c, want) {
					t.Errorf("claims %+v, want %+v", c, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify accepted the token: %+v", c)
			}
			if c != nil {
				t.Errorf("Verify returned claims with its error")
			}
			if err != tt.want {
				t.Errorf("error %q, want %q", err, tt.want)
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Errorf("error %q does not wrap ErrInvalidToken", err)
			}
			if len(tt.tok) > 10 && strings.Contains(err.Error(), tt.tok) {
				t.Errorf("the error quotes the token")
			}
		})
	}
}

func mustEd25519(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestKeySourceFailure: a key source that fails (not a missing key) is an
// invalid token too, and the error keeps the cause for logs.
func TestKeySourceFailure(t *testing.T) {
	cause := errors.New("the key service is down")
	v := mustVerifier(t, failingKeys{cause}, VerifierConfig{Now: newClock(t0).now})
	_, err := v.Verify(context.Background(), signWith(t, testKey(EdDSA), claimsAt(t0)))
	if !errors.Is(err, ErrInvalidToken) || !errors.Is(err, cause) {
		t.Fatalf("error %v, want one wrapping ErrInvalidToken and the cause", err)
	}
	kind, got := describe(err)
	if strings.Contains(got, cause.Error()) {
		t.Errorf("description %q tells the client about the key source", got)
	}
	if kind != ReasonKeyUnavailable {
		t.Errorf("reason %q, want %q", kind, ReasonKeyUnavailable)
	}
}

type failingKeys struct{ err error }

func (f failingKeys) KeyRead(context.Context, string) (jwkset.JWK, error) { return jwkset.JWK{}, f.err }

// TestWrongKIDFromSource: a key source answering with a key of another kid
// is not trusted.
func TestWrongKIDFromSource(t *testing.T) {
	v := mustVerifier(t, anyKey{testKey(EdDSA)}, VerifierConfig{Now: newClock(t0).now})
	tok := signRaw(t, jwt.SigningMethodEdDSA, "other", testKey(EdDSA).Key(), claimsAt(t0))
	if _, err := v.Verify(context.Background(), tok); err != errUnknownKID {
		t.Fatalf("error %v, want %v", err, errUnknownKID)
	}
}

type anyKey struct{ k jwkset.JWK }

func (a anyKey) KeyRead(context.Context, string) (jwkset.JWK, error) { return a.k, nil }

func TestNewVerifierConfig(t *testing.T) {
	keys := mustStatic(t, testKey(EdDSA))
	shoal := Issuer{Issuer: "shoal", Keys: keys}
	tests := []struct {
		name string
		cfg  VerifierConfig
		want string // in the error; "" for none
	}{
		{"minimal", VerifierConfig{Issuers: []Issuer{shoal}}, ""},
		{"no issuer", VerifierConfig{}, "at least one issuer"},
		{"issuer without iss", VerifierConfig{Issuers: []Issuer{{Keys: keys}}}, "has no Issuer"},
		{"issuer without keys", VerifierConfig{Issuers: []Issuer{{Issuer: "shoal"}}}, "has no Keys"},
		{"duplicate issuer", VerifierConfig{Issuers: []Issuer{shoal, shoal}}, "listed twice"},
		{"alg none", VerifierConfig{Issuers: []Issuer{shoal}, Algorithms: []string{"none"}}, `unknown algorithm "none"`},
		{"unsupported alg", VerifierConfig{Issuers: []Issuer{shoal}, Algorithms: []string{EdDSA, "RS512"}}, `unknown algorithm "RS512"`},
		{"alg in the wrong case", VerifierConfig{Issuers: []Issuer{shoal}, Algorithms: []string{"eddsa"}}, `unknown algorithm "eddsa"`},
		{"negative leeway", VerifierConfig{Issuers: []Issuer{shoal}, Leeway: -time.Second}, "negative"},
		{"leeway at the limit", VerifierConfig{Issuers: []Issuer{shoal}, Leeway: MaxLeeway}, ""},
		{"leeway over the limit", VerifierConfig{Issuers: []Issuer{shoal}, Leeway: MaxLeeway + time.Second}, "more than"},
		{"negative MaxTokenSize", VerifierConfig{Issuers: []Issuer{shoal}, MaxTokenSize: -1}, "negative"},
		{"negative CacheTTL", VerifierConfig{Issuers: []Issuer{shoal}, CacheTTL: -time.Second}, "negative"},
		{"cache disabled", VerifierConfig{Issuers: []Issuer{shoal}, CacheSize: -1}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewVerifier(tt.cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("NewVerifier: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}

// TestLeeway: the configured leeway, not the default, bounds exp.
func TestLeeway(t *testing.T) {
	clk := newClock(t0)
	v := mustVerifier(t, mustStatic(t, testKey(EdDSA)), VerifierConfig{Now: clk.now, Leeway: 2 * time.Minute, CacheSize: -1})
	tok := signWith(t, testKey(EdDSA), claimsAt(t0))
	clk.set(t0.Add(time.Hour + 119*time.Second))
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Errorf("within a 2m leeway: %v", err)
	}
	clk.set(t0.Add(time.Hour + 121*time.Second))
	if _, err := v.Verify(context.Background(), tok); err != errExpired {
		t.Errorf("past a 2m leeway: %v", err)
	}
}

// TestAsOf: under AsOf, time claims are checked as of the given time
// (an asynchronous call's submission), and the cache, which answers for
// the present, is neither used nor filled.
func TestAsOf(t *testing.T) {
	clk := newClock(t0)
	v := mustVerifier(t, mustStatic(t, testKey(EdDSA)), VerifierConfig{Now: clk.now, Leeway: time.Second})
	tok := signWith(t, testKey(EdDSA), claimsAt(t0)) // valid for an hour from t0
	ctx := context.Background()
	clk.set(t0.Add(3 * time.Hour)) // expired now
	tests := []struct {
		name string
		at   time.Time
		want error
	}{
		{"submitted while valid", t0.Add(30 * time.Minute), nil},
		{"submitted after it expired", t0.Add(2 * time.Hour), errExpired},
		{"submitted before it was issued", t0.Add(-time.Hour), ErrInvalidToken},
	}
	for _, tt := range tests {
		_, err := v.Verify(AsOf(ctx, tt.at), tok)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: error %v, want %v", tt.name, err, tt.want)
		}
	}
	// The verification as of the past did not make the token pass now.
	if _, err := v.Verify(ctx, tok); err != errExpired {
		t.Errorf("now, after verifications as of the past: error %v, want %v", err, errExpired)
	}
}

// TestKeyRotation: with both keys in the key source, tokens of the old and
// the new key verify; once the old key is gone, its tokens do not.
func TestKeyRotation(t *testing.T) {
	clk := newClock(t0)
	oldKey, newKey := testKey(EdDSA), testKey(ES256)
	oldTok, newTok := signWith(t, oldKey, claimsAt(t0)), signWith(t, newKey, claimsAt(t0))

	both := mustVerifier(t, mustStatic(t, oldKey, newKey), VerifierConfig{Now: clk.now})
	for name, tok := range map[string]string{"old": oldTok, "new": newTok} {
		if _, err := both.Verify(context.Background(), tok); err != nil {
			t.Errorf("%s key, both published: %v", name, err)
		}
	}
	newOnly := mustVerifier(t, mustStatic(t, newKey), VerifierConfig{Now: clk.now})
	if _, err := newOnly.Verify(context.Background(), oldTok); err != errUnknownKID {
		t.Errorf("old key withdrawn: error %v, want %v", err, errUnknownKID)
	}
	if _, err := newOnly.Verify(context.Background(), newTok); err != nil {
		t.Errorf("new key after the old one was withdrawn: %v", err)
	}
}

// TestKeyWithdrawnWhileCached pins down the cost of the cache: a token
// of a key withdrawn from a live key source keeps passing until its
// cached verification lapses, CacheTTL later, and not after.
func TestKeyWithdrawnWhileCached(t *testing.T) {
	clk := newClock(t0)
	store := jwkset.NewMemoryStorage()
	ctx := context.Background()
	old := testKey(EdDSA)
	if err := store.KeyWrite(ctx, old); err != nil {
		t.Fatal(err)
	}
	v := mustVerifier(t, store, VerifierConfig{Now: clk.now, CacheTTL: time.Minute})
	tok := signWith(t, old, claimsAt(t0))
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := store.KeyDelete(ctx, kidOf(old)); err != nil {
		t.Fatal(err)
	}
	clk.add(59 * time.Second)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Errorf("within CacheTTL: %v", err)
	}
	clk.add(time.Second)
	if _, err := v.Verify(ctx, tok); err != errUnknownKID {
		t.Errorf("after CacheTTL: error %v, want %v", err, errUnknownKID)
	}
}

func TestAllows(t *testing.T) {
	c := &Claims{Permissions: []string{"echo", "ping"}}
	tests := []struct {
		required []string
		want     bool
	}{
		{nil, true},
		{[]string{}, true},
		{[]string{"echo"}, true},
		{[]string{"ping", "echo"}, true},
		{[]string{"echo", "admin"}, false},
		{[]string{"Echo"}, false},
		{[]string{""}, false},
	}
	for _, tt := range tests {
		if got := c.Allows(tt.required); got != tt.want {
			t.Errorf("Allows(%q) = %v, want %v", tt.required, got, tt.want)
		}
	}
	if (&Claims{}).Allows([]string{"echo"}) {
		t.Error("claims without permissions allow echo")
	}
	var none *Claims
	if none.Allows([]string{"echo"}) || !none.Allows(nil) {
		t.Error("nil claims: want nothing allowed but the empty list")
	}
}

func TestContext(t *testing.T) {
	ctx := context.Background()
	if _, ok := FromContext(ctx); ok {
		t.Fatal("claims in an empty context")
	}
	c := claimsAt(t0)
	got, ok := FromContext(NewContext(ctx, c))
	if !ok || got != c {
		t.Fatalf("FromContext = %v, %v", got, ok)
	}
}
