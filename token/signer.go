package token

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// Signer mints tokens with one private key. It is safe for concurrent
// use.
type Signer struct {
	kid      string
	method   jwt.SigningMethod
	key      any
	issuer   string
	audience jwt.ClaimStrings
	now      func() time.Time // tests set it
}

// NewSigner returns a Signer that signs with key, a private JWK with kid
// and alg set, as issuer (the iss claim) for audience (the aud claim; ""
// leaves aud out).
func NewSigner(key jwkset.JWK, issuer, audience string) (*Signer, error) {
	if issuer == "" {
		return nil, errors.New("token: a signer needs an issuer (iss)")
	}
	alg, sk, err := signingKey(key)
	if err != nil {
		return nil, fmt.Errorf("token: signing key %q: %w", key.Marshal().KID, err)
	}
	if k, ok := sk.(*rsa.PrivateKey); ok {
		// A key read from JSON lacks the precomputation that makes RSA
		// signing fast; do it once, on a copy: the caller's key may be in
		// use elsewhere.
		c := *k
		c.Precompute()
		sk = &c
	}
	s := &Signer{kid: key.Marshal().KID, method: methods[alg], key: sk, issuer: issuer, now: time.Now}
	if audience != "" {
		s.audience = jwt.ClaimStrings{audience}
	}
	return s, nil
}

// KeyID returns the kid of the signing key.
func (s *Signer) KeyID() string { return s.kid }

// Sign returns a token for subject holding permissions, valid from now
// for ttl, and the time it expires. ttl is at least a second (the claims
// count whole seconds) and at most MaxTTL.
//
// The token's header has the key's kid and alg; its claims are iss, aud
// (when the signer has an audience), sub, iat, nbf (equal to iat), exp,
// a random 128-bit jti, and permissions.
func (s *Signer) Sign(subject string, permissions []string, ttl time.Duration) (string, time.Time, error) {
	switch {
	case subject == "":
		return "", time.Time{}, errors.New("token: a token needs a subject (sub)")
	case ttl < time.Second:
		return "", time.Time{}, fmt.Errorf("token: lifetime %v is shorter than a second", ttl)
	case ttl > MaxTTL:
		return "", time.Time{}, fmt.Errorf("token: lifetime %v is longer than the %v a token may live", ttl, MaxTTL)
	}
	perms := make([]string, len(permissions))
	for i, p := range permissions {
		if p == "" {
			return "", time.Time{}, errors.New("token: a permission is empty")
		}
		perms[i] = p
	}
	now := s.now().Truncate(time.Second)
	exp := now.Add(ttl).Truncate(time.Second)
	var jti [16]byte
	rand.Read(jti[:]) // never fails
	c := &Claims{
		Permissions: perms,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    s.issuer,
			Subject:   subject,
			Audience:  s.audience,
			ExpiresAt: jwt.NewNumericDate(exp),
			NotBefore: jwt.NewNumericDate(now),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        base64.RawURLEncoding.EncodeToString(jti[:]),
		},
	}
	t := jwt.NewWithClaims(s.method, c)
	t.Header["kid"] = s.kid
	raw, err := t.SignedString(s.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("token: sign with key %q: %w", s.kid, err)
	}
	return raw, exp, nil
}

// FileSigner signs with the newest (last) key of a key file, and follows
// the file: before each token it checks, with one os.Stat, whether the
// file was replaced or changed (its identity, modification time or size),
// and if so reads it again. A key rotation (WriteKeyFile with a new key
// appended) thus needs no restart. It is safe for concurrent use.
//
// If reading the changed file fails (it is missing, malformed, or its
// newest key cannot sign), the FileSigner keeps signing with the last
// good key, so that a botched edit does not stop logins, and Err reports
// the failure until a read succeeds again. A file that failed to read is
// read again only once it changes.
type FileSigner struct {
	path, issuer, audience string

	state atomic.Pointer[fileState]

	mu  sync.Mutex // serialises reloads; guards err
	err error
}

type fileState struct {
	signer *Signer
	info   os.FileInfo // the file when it was read; nil to read it again
}

// NewFileSigner reads the key file at path and returns a FileSigner that
// signs with its newest key, as issuer for audience (see NewSigner).
func NewFileSigner(path, issuer, audience string) (*FileSigner, error) {
	s := &FileSigner{path: path, issuer: issuer, audience: audience}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("token: key file: %w", err)
	}
	st, err := s.load(info)
	if err != nil {
		return nil, err
	}
	s.state.Store(st)
	return s, nil
}

func (s *FileSigner) load(info os.FileInfo) (*fileState, error) {
	keys, err := ReadKeyFile(s.path)
	if err != nil {
		return nil, err
	}
	signer, err := NewSigner(keys[len(keys)-1], s.issuer, s.audience)
	if err != nil {
		return nil, fmt.Errorf("token: key file %s: %w", s.path, err)
	}
	return &fileState{signer: signer, info: info}, nil
}

// unchanged reports whether the file now is the one read before.
func unchanged(before, now os.FileInfo) bool {
	return before != nil && os.SameFile(before, now) &&
		before.ModTime().Equal(now.ModTime()) && before.Size() == now.Size()
}

// signer returns the Signer of the newest key, reading the file again
// when it changed.
func (s *FileSigner) signer() *Signer {
	st := s.state.Load()
	info, err := os.Stat(s.path)
	if err == nil && unchanged(st.info, info) {
		return st.signer
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st = s.state.Load()
	if err != nil {
		// Read the file again once it is back, whatever it then looks like.
		s.err = fmt.Errorf("token: key file: %w", err)
		s.state.Store(&fileState{signer: st.signer})
		return st.signer
	}
	if unchanged(st.info, info) { // another Sign read it meanwhile
		return st.signer
	}
	next, err := s.load(info)
	if err != nil {
		s.err = err
		s.state.Store(&fileState{signer: st.signer, info: info})
		return st.signer
	}
	s.err = nil
	s.state.Store(next)
	return next.signer
}

// Sign signs a token with the newest key of the file; see Signer.Sign.
func (s *FileSigner) Sign(subject string, permissions []string, ttl time.Duration) (string, time.Time, error) {
	return s.signer().Sign(subject, permissions, ttl)
}

// KeyID returns the kid of the key that signs now.
func (s *FileSigner) KeyID() string { return s.signer().KeyID() }

// Err returns why the key file could not be read the last time it
// changed, or nil when the key that signs is the file's newest.
func (s *FileSigner) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}
