package token

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"golang.org/x/time/rate"
)

// KeySource finds a verification key by kid. It answers an error matching
// jwkset.ErrKeyNotFound when it has no such key. jwkset.Storage satisfies
// it. A Verifier calls KeyRead for every token it has not cached, from
// many goroutines at once: it should be fast and safe for concurrent use.
type KeySource interface {
	KeyRead(ctx context.Context, kid string) (jwkset.JWK, error)
}

type staticKeys map[string]jwkset.JWK

func (s staticKeys) KeyRead(_ context.Context, kid string) (jwkset.JWK, error) {
	if k, ok := s[kid]; ok {
		return k, nil
	}
	return jwkset.JWK{}, jwkset.ErrKeyNotFound
}

// StaticKeys returns a KeySource over a fixed set of keys, public or
// private: of a private key only the public half is kept. Every key needs
// a kid, unique in the set, and must be able to verify a signature of
// some algorithm Shoal accepts.
func StaticKeys(keys ...jwkset.JWK) (KeySource, error) {
	if len(keys) == 0 {
		return nil, errors.New("token: no keys")
	}
	s := make(staticKeys, len(keys))
	for i, k := range keys {
		if err := s.add(k); err != nil {
			return nil, fmt.Errorf("token: key %d: %w", i, err)
		}
	}
	return s, nil
}

func (s staticKeys) add(k jwkset.JWK) error {
	vk, err := verifyingJWK(k)
	if err != nil {
		return err
	}
	kid := vk.Marshal().KID
	if _, dup := s[kid]; dup {
		return fmt.Errorf("another key has the same kid %q", kid)
	}
	s[kid] = vk
	return nil
}

// verifyingJWK reduces k to what verifying needs: the public half of an
// asymmetric key, a secret as it is.
func verifyingJWK(k jwkset.JWK) (jwkset.JWK, error) {
	m := k.Marshal()
	switch {
	case m.KID == "":
		return jwkset.JWK{}, errors.New("the key has no kid; tokens name their key by kid")
	case m.USE == jwkset.UseEnc:
		return jwkset.JWK{}, fmt.Errorf("key %q: %w", m.KID, errKeyForEncryption)
	case m.ALG != "" && methods[string(m.ALG)] == nil:
		return jwkset.JWK{}, fmt.Errorf("key %q: alg %q is not one Shoal verifies (%s)", m.KID, m.ALG, knownAlgorithms)
	}
	if weakRSA(k) {
		return jwkset.JWK{}, fmt.Errorf("key %q: %w", m.KID, errKeyType[RS256])
	}
	if secret, ok := k.Key().([]byte); ok {
		if len(secret) < MinSecretBytes {
			return jwkset.JWK{}, fmt.Errorf("key %q: the HS256 secret has %d bytes; at least %d are needed", m.KID, len(secret), MinSecretBytes)
		}
		return k, nil
	}
	p, err := Public(k)
	if err != nil {
		return jwkset.JWK{}, fmt.Errorf("key %q: a %T cannot verify Shoal's tokens", m.KID, k.Key())
	}
	return p, nil
}

// weakRSA reports whether k is an RSA key under MinRSABits.
func weakRSA(k jwkset.JWK) bool {
	switch key := k.Key().(type) {
	case *rsa.PublicKey:
		return key.N.BitLen() < MinRSABits
	case *rsa.PrivateKey:
		return key.N.BitLen() < MinRSABits
	}
	return false
}

// FileKeys reads a JWK set file of verification keys once: an identity
// provider's public keys, or HS256 secrets as kty "oct" keys. Keys that
// cannot verify Shoal's tokens, such as encryption keys, keys of other
// algorithms and RSA keys under 2048 bits, are left out; it is an error if
// none is left.
func FileKeys(path string) (KeySource, error) {
	raws, err := readKeySet(path)
	if err != nil {
		return nil, err
	}
	s := make(staticKeys, len(raws))
	for i, raw := range raws {
		k, err := jwkset.NewJWKFromRawJSON(raw, jwkset.JWKMarshalOptions{Private: true}, jwkset.JWKValidateOptions{})
		if errors.Is(err, jwkset.ErrUnsupportedKey) {
			continue // a key type jwkset does not know, such as Ed448
		}
		if err != nil {
			return nil, fmt.Errorf("token: key file %s: key %d: %w", path, i, err)
		}
		if m := k.Marshal(); m.USE == jwkset.UseEnc || m.ALG != "" && methods[string(m.ALG)] == nil || weakRSA(k) {
			continue
		}
		if err := s.add(k); err != nil {
			return nil, fmt.Errorf("token: key file %s: key %d: %w", path, i, err)
		}
	}
	if len(s) == 0 {
		return nil, fmt.Errorf("token: key file %s has no signing key for %s", path, knownAlgorithms)
	}
	return s, nil
}

// Remote key set limits.
const (
	// DefaultRefresh is how often RemoteKeys fetches the key set when
	// given no interval.
	DefaultRefresh = 15 * time.Minute
	// remoteTimeout bounds one fetch of a remote key set.
	remoteTimeout = 10 * time.Second
	// maxRemoteJWKS bounds the size of a remote key set.
	maxRemoteJWKS = 1 << 20
	// unknownKIDInterval is the most often a token with a kid the key
	// set lacks makes RemoteKeys fetch it again: a new key of the issuer
	// is found at once, and made-up kids cost the issuer one request in
	// that long at most.
	unknownKIDInterval = 30 * time.Second
	// unknownKIDWait bounds how long a verification waits for such a
	// fetch.
	unknownKIDWait = 3 * time.Second
)

// RemoteKeys returns a KeySource over the JWK set at jwksURL, such as an
// OpenID Connect issuer's jwks_uri. It fetches the set before returning,
// and an error then is RemoteKeys' error; after that it fetches the set
// every refresh (0 means DefaultRefresh) until ctx ends. A failed refresh
// keeps the keys it had and is logged on slog.Default.
//
// A token whose kid the set lacks makes it fetch the set at once, at most
// once every 30 seconds (or every refresh, if shorter), so that an
// issuer's new key is found before the next refresh. Concurrent
// verifications wait for that one fetch; none waits more than 3 s for the
// rate limit and the fetch together, and a kid still unknown then is
// refused as such.
//
// The URL must be https, or http to a loopback address (for tests and
// sidecars). Each fetch times out after 10 s and reads at most 1 MiB.
func RemoteKeys(ctx context.Context, jwksURL string, refresh time.Duration) (KeySource, error) {
	if err := checkJWKSURL(jwksURL); err != nil {
		return nil, err
	}
	if refresh <= 0 {
		refresh = DefaultRefresh
	}
	// A child context, to stop the refresh goroutine when the first
	// fetch fails; otherwise it ends with the caller's context.
	ctx, stop := context.WithCancel(ctx)
	started := false
	defer func() {
		if !started {
			stop()
		}
	}()
	log := slog.Default().With("url", jwksURL)
	store, err := jwkset.NewStorageFromHTTP(jwksURL, jwkset.HTTPClientStorageOptions{
		Client:          &http.Client{Timeout: remoteTimeout, Transport: limitedTransport{http.DefaultTransport}},
		Ctx:             ctx,
		HTTPTimeout:     remoteTimeout,
		RefreshInterval: refresh,
		RefreshErrorHandler: func(ctx context.Context, err error) {
			log.WarnContext(ctx, "cannot refresh the remote JWK set of token keys; keeping the keys it had", "error", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("token: fetch the JWK set at %s: %w", jwksURL, err)
	}
	client, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs:          map[string]jwkset.Storage{jwksURL: store},
		RateLimitWaitMax:  unknownKIDWait,
		RefreshUnknownKID: rate.NewLimiter(rate.Every(min(refresh, unknownKIDInterval)), 1),
	})
	if err != nil {
		return nil, fmt.Errorf("token: JWK set at %s: %w", jwksURL, err)
	}
	started = true
	return &remoteKeys{store: store, client: client}, nil
}

func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("token: JWK set URL: %w", err)
	}
	switch {
	case u.Host == "":
		return fmt.Errorf("token: JWK set URL %q has no host", raw)
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return nil
	}
	return fmt.Errorf("token: JWK set URL %q must be https (plain http only to a loopback address): keys fetched in the clear can be swapped", raw)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// limitedTransport caps the size of a response body.
type limitedTransport struct{ rt http.RoundTripper }

func (t limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = http.MaxBytesReader(nil, resp.Body, maxRemoteJWKS)
	return resp, nil
}

// remoteKeys reads keys from store, the fetched set, and on a miss asks
// client, which fetches the set again (rate limited) and reads once more.
// Only one miss at a time goes to client; the others wait for it and read
// the store after it: a burst of tokens with an issuer's new kid costs
// one fetch, and every one of them sees its result.
type remoteKeys struct {
	store  jwkset.Storage
	client jwkset.Storage

	mu       sync.Mutex
	fetching chan struct{} // closed when the fetch in flight ends; nil if none
}

func (r *remoteKeys) KeyRead(ctx context.Context, kid string) (jwkset.JWK, error) {
	k, err := r.store.KeyRead(ctx, kid)
	if !errors.Is(err, jwkset.ErrKeyNotFound) {
		return k, err
	}
	r.mu.Lock()
	if wait := r.fetching; wait != nil {
		r.mu.Unlock()
		select {
		case <-wait:
			return r.store.KeyRead(ctx, kid)
		case <-ctx.Done():
			return jwkset.JWK{}, ctx.Err()
		}
	}
	done := make(chan struct{})
	r.fetching = done
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.fetching = nil
		r.mu.Unlock()
		close(done)
	}()
	k, err = r.client.KeyRead(ctx, kid)
	if err != nil && ctx.Err() == nil {
		// The set was not fetched (rate limited, or the fetch failed,
		// which the refresh handler logs): the key is unknown.
		return jwkset.JWK{}, fmt.Errorf("%w: kid %q: %v", jwkset.ErrKeyNotFound, kid, err)
	}
	return k, err
}

// Sources is a KeySource made of several: a kid is looked up in each in
// turn, e.g. the published keys, then HS256 secrets held locally. A
// source's fault other than an unknown kid is reported, so that a failing
// lookup is not taken for a missing key.
type Sources []KeySource

// KeyRead returns the first key with this kid.
func (s Sources) KeyRead(ctx context.Context, kid string) (jwkset.JWK, error) {
	var fault error
	for _, src := range s {
		k, err := src.KeyRead(ctx, kid)
		switch {
		case err == nil:
			return k, nil
		case !errors.Is(err, jwkset.ErrKeyNotFound):
			fault = errors.Join(fault, err)
		}
	}
	if fault != nil {
		return jwkset.JWK{}, fault
	}
	return jwkset.JWK{}, fmt.Errorf("%w: %q", jwkset.ErrKeyNotFound, kid)
}
