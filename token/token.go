// Package token signs and verifies Shoal's access tokens: JSON Web Tokens
// (RFC 7519) that name a subject and carry the permissions it holds.
//
// # Keys
//
// Keys are JSON Web Keys (RFC 7517). Every key has a key id (kid) and an
// algorithm (alg), one of:
//
//   - EdDSA: Ed25519, the default;
//   - ES256: ECDSA on P-256;
//   - RS256: RSA of at least 2048 bits (GenerateKey makes 3072);
//   - HS256: a shared secret of at least 32 bytes, for set-ups that cannot
//     distribute public keys. Verifiers accept it only when told to.
//
// A key file is a JWK set of private keys, oldest first; the last key is
// the one that signs. Rotating is appending a new key (WriteKeyFile):
// FileSigner signs with it from its next token on, without a restart, and
// verifiers keep accepting the older keys until those leave their
// KeySource.
//
// # Verifying
//
// A Verifier accepts a token only when all of these hold:
//
//   - it is at most MaxTokenSize bytes of compact JWS: three strictly
//     encoded base64url segments;
//   - its alg is on the allow-list (never none; HS256 only when listed)
//     and it has no crit header;
//   - its iss is exactly the Issuer of one configured Issuer, and its aud
//     contains that issuer's Audience when one is set;
//   - its kid names a key of that issuer whose type fits alg (an Ed25519
//     key for EdDSA, P-256 for ES256, RSA of 2048 bits or more for RS256,
//     a secret of 32 bytes or more for HS256), whose own alg, when set, is
//     the token's, and that is not an encryption key (use "enc"). This is
//     what makes algorithm confusion impossible: a token "signed" with
//     HMAC over a public key finds no HS256 key;
//   - the signature verifies;
//   - it has an exp that has not passed, and its nbf and iat, when
//     present, are not in the future, give or take the leeway.
//
// Every refusal wraps ErrInvalidToken and says why in words that never
// quote the token.
//
// # Caching
//
// Verifying an EdDSA token costs about 100 µs, an RS256 one about four
// times more.
// A Verifier remembers the tokens it accepted, by the SHA-256 of the raw
// token, for at most CacheTTL and never past the token's exp, so that a
// client that sends the same token on every request pays once. The cost
// is that a withdrawn key stops mattering for a token only once its cached
// verification lapses: at most CacheTTL (one minute by default) later.
//
// # HTTP
//
// Authorize and AuthorizeHeader check an Authorization header against the
// permissions a function requires and answer what to send back: the
// status (401 or 403), the RFC 6750 error code and a WWW-Authenticate
// challenge.
package token

import (
	"context"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Algorithms, as they appear in a token's alg header and a JWK's alg.
const (
	EdDSA = "EdDSA"
	ES256 = "ES256"
	RS256 = "RS256"
	HS256 = "HS256"
)

// MaxTTL is the longest a token Shoal signs may live. Tokens cannot be
// revoked one by one, only by withdrawing their key, so their lifetime is
// the window a leaked token is good for.
const MaxTTL = 24 * time.Hour

// Claims are a Shoal access token's claims: the registered ones plus
// permissions.
type Claims struct {
	// Permissions are what the subject may do; a function lists the
	// permissions it requires.
	Permissions []string `json:"permissions"`
	jwt.RegisteredClaims
}

// Allows reports whether the claims hold every permission in required.
// No permission required allows any claims.
func (c *Claims) Allows(required []string) bool {
	for _, p := range required {
		if c == nil || !slices.Contains(c.Permissions, p) {
			return false
		}
	}
	return true
}

// missing returns the permissions of required the claims do not hold.
func (c *Claims) missing(required []string) []string {
	var m []string
	for _, p := range required {
		if !slices.Contains(c.Permissions, p) {
			m = append(m, p)
		}
	}
	return m
}

// clone returns a copy of c that shares nothing mutable with it, in two
// allocations: one for the claims and their times, one for the strings.
func (c *Claims) clone() *Claims {
	b := &struct {
		c             Claims
		exp, nbf, iat jwt.NumericDate
	}{c: *c}
	if c.ExpiresAt != nil {
		b.exp = *c.ExpiresAt
		b.c.ExpiresAt = &b.exp
	}
	if c.NotBefore != nil {
		b.nbf = *c.NotBefore
		b.c.NotBefore = &b.nbf
	}
	if c.IssuedAt != nil {
		b.iat = *c.IssuedAt
		b.c.IssuedAt = &b.iat
	}
	if c.Permissions != nil || c.Audience != nil {
		s := make([]string, 0, len(c.Permissions)+len(c.Audience))
		s = append(s, c.Permissions...)
		p := len(s)
		s = append(s, c.Audience...)
		// Full slice expressions: an append to one never writes into the
		// other.
		if c.Permissions != nil {
			b.c.Permissions = s[:p:p]
		}
		if c.Audience != nil {
			b.c.Audience = s[p:len(s):len(s)]
		}
	}
	return &b.c
}

type contextKey struct{}

// NewContext returns a copy of ctx that carries the claims of the verified
// token of a request.
func NewContext(ctx context.Context, c *Claims) context.Context {
	return context.WithValue(ctx, contextKey{}, c)
}

// FromContext returns the claims NewContext stored in ctx, if any.
func FromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(contextKey{}).(*Claims)
	return c, ok && c != nil
}
