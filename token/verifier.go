package token

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"time"
	"unsafe"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// ErrInvalidToken is wrapped by every error Verify returns.
var ErrInvalidToken = errors.New("invalid token")

// invalidError is a refused token: reason says why, for the caller and
// the client alike, so it never quotes the token. cause, when set, is a
// fault of the key source, for logs.
type invalidError struct {
	reason string
	// kind is the refusal's class, as AuthError.Reason.
	kind  string
	cause error
}

func (e *invalidError) Error() string {
	if e.cause != nil {
		return "invalid token: " + e.reason + ": " + e.cause.Error()
	}
	return "invalid token: " + e.reason
}

func (e *invalidError) Is(target error) bool { return target == ErrInvalidToken }
func (e *invalidError) Unwrap() error        { return e.cause }

func invalid(reason string) *invalidError { return &invalidError{reason: reason, kind: ReasonInvalid} }

// invalidAs is invalid with a class other than ReasonInvalid.
func invalidAs(kind, reason string) *invalidError { return &invalidError{reason: reason, kind: kind} }

// The reasons a token is refused. They are values, so that refusing costs
// no allocation.
var (
	errNoToken         = invalidAs(ReasonMissing, "no token")
	errMalformed       = invalidAs(ReasonMalformed, "the token is malformed: it is not three base64url segments of JSON")
	errAlgUnknown      = invalid("the token's algorithm (alg) is missing or unknown")
	errAlgRefused      = invalid("the token's algorithm (alg) is not accepted")
	errCrit            = invalid("the token has a crit header, and no extension is supported")
	errNoKID           = invalid("the token has no key id (kid)")
	errNoIssuer        = invalid("the token has no issuer (iss)")
	errUntrustedIssuer = invalid("the token's issuer (iss) is not trusted")
	errUnknownKID      = invalid("no key of the token's issuer has the token's key id (kid)")
	errBadSignature    = invalid("the token's signature does not verify")
	errExpired         = invalidAs(ReasonExpired, "the token has expired")
	errNotYetValid     = invalid("the token is not valid yet (nbf)")
	errIssuedInFuture  = invalid("the token was issued in the future (iat)")
	errNoExpiry        = invalid("the token has no expiry (exp)")
	errWrongAudience   = invalid("the token is not meant for this audience (aud)")
	errDoesNotVerify   = invalid("the token does not verify")
)

// errUnfitKey maps why a key cannot verify a token (verificationKey's
// errors) to the refusal.
var errUnfitKey = func() map[error]*invalidError {
	m := map[error]*invalidError{}
	for _, err := range []error{
		errKeyForEncryption, errKeyOtherAlg, errKeyOps,
		errKeyType[EdDSA], errKeyType[ES256], errKeyType[RS256], errKeyType[HS256],
	} {
		m[err] = invalid("the key the token names (kid) cannot verify it: " + err.Error())
	}
	return m
}()

// Issuer is one trusted token issuer.
type Issuer struct {
	// Issuer is the value the token's iss must have, exactly.
	Issuer string
	// Audience, when set, is a value the token's aud must contain.
	Audience string
	// Keys holds the issuer's keys.
	Keys KeySource
}

// Verifier defaults and limits.
const (
	DefaultLeeway       = 30 * time.Second
	MaxLeeway           = 5 * time.Minute
	DefaultCacheSize    = 4096
	DefaultCacheTTL     = time.Minute
	DefaultMaxTokenSize = 8192
)

// VerifierConfig configures a Verifier. Only Issuers is required.
type VerifierConfig struct {
	// Issuers are the trusted issuers; a token's iss picks one.
	Issuers []Issuer
	// Algorithms is the allow-list of algorithms; empty means EdDSA,
	// ES256 and RS256. HS256 is accepted only when listed.
	Algorithms []string
	// Leeway is the clock skew allowed when checking exp, nbf and iat;
	// 0 means DefaultLeeway, and more than MaxLeeway is an error.
	Leeway time.Duration
	// CacheSize is how many verified tokens are remembered; 0 means
	// DefaultCacheSize, and a negative size disables the cache.
	CacheSize int
	// CacheTTL is the longest a verification is remembered, never past
	// the token's exp; 0 means DefaultCacheTTL. It is also how long a
	// token of a withdrawn key may still pass.
	CacheTTL time.Duration
	// MaxTokenSize is the size in bytes past which a token is refused
	// before any parsing; 0 means DefaultMaxTokenSize.
	MaxTokenSize int
	// Now tells the time; nil means time.Now.
	Now func() time.Time
}

// Verifier checks tokens (see the package documentation for the rules).
// It is safe for concurrent use.
type Verifier struct {
	issuers map[string]*Issuer
	parser  *jwt.Parser
	// opts are the parser's options but its clock, for parsers as of
	// another time (AsOf).
	opts     []jwt.ParserOption
	now      func() time.Time
	maxSize  int
	tooLarge *invalidError
	cacheTTL time.Duration
	cache    *cache // nil when disabled
}

// NewVerifier returns a Verifier for cfg, or says what is wrong with it.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if len(cfg.Issuers) == 0 {
		return nil, errors.New("token: a verifier needs at least one issuer")
	}
	v := &Verifier{issuers: make(map[string]*Issuer, len(cfg.Issuers))}
	for i, iss := range cfg.Issuers {
		switch {
		case iss.Issuer == "":
			return nil, fmt.Errorf("token: issuer %d has no Issuer, the iss its tokens must have", i)
		case iss.Keys == nil:
			return nil, fmt.Errorf("token: issuer %q has no Keys", iss.Issuer)
		case v.issuers[iss.Issuer] != nil:
			return nil, fmt.Errorf("token: issuer %q is listed twice", iss.Issuer)
		}
		v.issuers[iss.Issuer] = &iss
	}

	algs := cfg.Algorithms
	if len(algs) == 0 {
		algs = []string{EdDSA, ES256, RS256}
	}
	for _, alg := range algs {
		if methods[alg] == nil {
			return nil, fmt.Errorf("token: unknown algorithm %q; Shoal verifies %s", alg, knownAlgorithms)
		}
	}

	leeway := cfg.Leeway
	switch {
	case leeway == 0:
		leeway = DefaultLeeway
	case leeway < 0:
		return nil, fmt.Errorf("token: leeway %v is negative", leeway)
	case leeway > MaxLeeway:
		return nil, fmt.Errorf("token: leeway %v is more than the %v allowed", leeway, MaxLeeway)
	}

	v.now = cfg.Now
	if v.now == nil {
		v.now = time.Now
	}

	v.maxSize = cfg.MaxTokenSize
	switch {
	case v.maxSize == 0:
		v.maxSize = DefaultMaxTokenSize
	case v.maxSize < 0:
		return nil, fmt.Errorf("token: MaxTokenSize %d is negative", v.maxSize)
	}
	v.tooLarge = invalidAs(ReasonMalformed, fmt.Sprintf("the token is longer than %d bytes", v.maxSize))

	v.cacheTTL = cfg.CacheTTL
	switch {
	case v.cacheTTL == 0:
		v.cacheTTL = DefaultCacheTTL
	case v.cacheTTL < 0:
		return nil, fmt.Errorf("token: CacheTTL %v is negative", v.cacheTTL)
	}
	switch size := cfg.CacheSize; {
	case size == 0:
		v.cache = newCache(DefaultCacheSize)
	case size > 0:
		v.cache = newCache(size)
	}

	v.opts = []jwt.ParserOption{
		jwt.WithValidMethods(algs),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		// Canonical base64 only: one token, one spelling.
		jwt.WithStrictDecoding(),
	}
	v.parser = jwt.NewParser(slices.Concat(v.opts, []jwt.ParserOption{jwt.WithTimeFunc(v.now)})...)
	return v, nil
}

// Verify checks raw, a token, and returns its claims. Every failure wraps
// ErrInvalidToken and says why, without quoting the token.
//
// A token accepted before is answered from the cache, with no key lookup
// (see the package documentation). The claims returned are the caller's
// own either way: changing them changes no other caller's, nor the cache.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Claims, error) {
	switch {
	case raw == "":
		return nil, errNoToken
	case len(raw) > v.maxSize:
		return nil, v.tooLarge
	}
	if at, ok := ctx.Value(asOfKey{}).(time.Time); ok {
		// Not cached: the cache answers for the present.
		return v.verify(ctx, raw, jwt.NewParser(slices.Concat(v.opts, []jwt.ParserOption{jwt.WithTimeFunc(func() time.Time { return at })})...))
	}
	if v.cache == nil {
		return v.verify(ctx, raw, v.parser)
	}
	now := v.now()
	// Hash the string's bytes in place (SHA-256 neither keeps nor changes
	// them): converting would copy the whole token on every request, which
	// BenchmarkVerify/*/cached measured at a third of a cache hit's time.
	key := sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
	if c := v.cache.get(&key, now); c != nil {
		return c.clone(), nil
	}
	c, err := v.verify(ctx, raw, v.parser)
	if err != nil {
		return nil, err
	}
	until := now.Add(v.cacheTTL)
	if exp := c.ExpiresAt.Time; exp.Before(until) {
		until = exp
	}
	v.cache.put(&key, c, until, now)
	return c.clone(), nil
}

// asOfKey is the context key of AsOf's time.
type asOfKey struct{}

// AsOf returns a context under which Verify (and Authorize) check a
// token's time claims (exp, nbf, iat) as of t instead of now. An
// asynchronous call's token is checked as of the call's submission,
// which the NATS server recorded: a token valid then is not refused for
// the time the call waited in the queue. The signature, issuer, audience
// and permissions are checked as usual, against the keys known now.
func AsOf(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, asOfKey{}, t)
}

// verify parses and checks raw with parser.
func (v *Verifier) verify(ctx context.Context, raw string, parser *jwt.Parser) (*Claims, error) {
	var (
		c      Claims
		iss    *Issuer
		keyErr *invalidError
	)
	// The parser has checked alg against the allow-list when it calls
	// keyfunc; the claims are decoded, not yet trusted.
	keyfunc := func(t *jwt.Token) (any, error) {
		key, err := v.key(ctx, t, &c, &iss)
		if err != nil {
			keyErr = err
			return nil, err
		}
		return key, nil
	}
	if _, err := parser.ParseWithClaims(raw, &c, keyfunc); err != nil {
		return nil, explain(err, keyErr, iss != nil)
	}
	if iss.Audience != "" && !slices.Contains(c.Audience, iss.Audience) {
		return nil, errWrongAudience
	}
	return &c, nil
}

// key finds the key that checks t's signature: that of the issuer c.Issuer
// names, by t's kid, and fit for t's alg. It sets *iss to the issuer.
func (v *Verifier) key(ctx context.Context, t *jwt.Token, c *Claims, iss **Issuer) (any, *invalidError) {
	if _, ok := t.Header["crit"]; ok {
		return nil, errCrit
	}
	kid, _ := t.Header["kid"].(string)
	if kid == "" {
		return nil, errNoKID
	}
	if c.Issuer == "" {
		return nil, errNoIssuer
	}
	i := v.issuers[c.Issuer]
	if i == nil {
		return nil, errUntrustedIssuer
	}
	*iss = i
	jwk, err := i.Keys.KeyRead(ctx, kid)
	switch {
	case errors.Is(err, jwkset.ErrKeyNotFound):
		return nil, errUnknownKID
	case err != nil:
		return nil, &invalidError{reason: "the token's key could not be looked up", kind: ReasonKeyUnavailable, cause: err}
	case jwk.Marshal().KID != kid: // a KeySource that answers with another key
		return nil, errUnknownKID
	}
	key, err := verificationKey(jwk, t.Method.Alg())
	if err != nil {
		if e := errUnfitKey[err]; e != nil {
			return nil, e
		}
		return nil, errDoesNotVerify
	}
	return key, nil
}

// explain turns the parser's error into the reason the token is refused.
// keyErr is keyfunc's error; keyed reports whether keyfunc got as far as
// an issuer, hence past the allow-list.
func explain(err error, keyErr *invalidError, keyed bool) error {
	switch {
	case keyErr != nil:
		return keyErr
	case errors.Is(err, jwt.ErrTokenMalformed):
		return errMalformed
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return errAlgUnknown
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		if !keyed {
			return errAlgRefused // the parser checks the allow-list first
		}
		return errBadSignature
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return errNoExpiry
	case errors.Is(err, jwt.ErrTokenExpired):
		return errExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return errNotYetValid
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return errIssuedInFuture
	}
	return errDoesNotVerify
}
