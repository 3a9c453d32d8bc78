package token

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
)

// jwksServer serves the public halves of a changeable set of keys, as an
// identity provider's jwks_uri does, on loopback.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []jwkset.JWK
	delay   time.Duration
	fetches atomic.Int64
}

func newJWKSServer(t *testing.T, keys ...jwkset.JWK) *jwksServer {
	s := &jwksServer{keys: keys}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		keys, delay := s.keys, s.delay
		s.mu.Unlock()
		time.Sleep(delay)
		b, err := PublicJWKS(keys)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(b)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(keys ...jwkset.JWK) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = keys
}

// TestRemoteKeys: tokens of the served keys verify; a key added to the
// served set is found as soon as a token names it, with one fetch; made-up
// kids do not make it fetch again and again.
func TestRemoteKeys(t *testing.T) {
	k1, k2 := testKey(EdDSA), testKey(ES256)
	srv := newJWKSServer(t, k1)
	ks, err := RemoteKeys(t.Context(), srv.URL+"/jwks.json", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches on start, want 1", n)
	}
	v := mustVerifier(t, ks, VerifierConfig{Now: newClock(t0).now, CacheSize: -1})
	ctx := t.Context()
	if _, err := v.Verify(ctx, signWith(t, k1, claimsAt(t0))); err != nil {
		t.Fatalf("Verify: %v", err)
	}

	srv.set(k1, k2)
	if _, err := v.Verify(ctx, signWith(t, k2, claimsAt(t0))); err != nil {
		t.Fatalf("new key: %v", err)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Errorf("%d fetches after a new kid, want 2", n)
	}

	// Another unknown kid right after: refused at once, without a fetch.
	start := time.Now()
	unknown := signRaw(t, methods[EdDSA], "made-up", k1.Key(), claimsAt(t0))
	if _, err := v.Verify(ctx, unknown); err != errUnknownKID {
		t.Errorf("made-up kid: error %v, want %v", err, errUnknownKID)
	}
	if d := time.Since(start); d > unknownKIDWait {
		t.Errorf("a made-up kid took %v", d)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Errorf("%d fetches after a made-up kid, want still 2", n)
	}
}

// TestRemoteKeysRefresh: the set is fetched every refresh interval, so a
// key withdrawn by the issuer stops verifying.
func TestRemoteKeysRefresh(t *testing.T) {
	k1, k2 := testKey(EdDSA), testKey(ES256)
	srv := newJWKSServer(t, k1, k2)
	ks, err := RemoteKeys(t.Context(), srv.URL, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := ks.KeyRead(ctx, kidOf(k1)); err != nil {
		t.Fatal(err)
	}
	srv.set(k2)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := ks.KeyRead(ctx, kidOf(k1))
		if errors.Is(err, jwkset.ErrKeyNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the withdrawn key is still there after 5s (%d fetches): %v", srv.fetches.Load(), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := ks.KeyRead(ctx, kidOf(k2)); err != nil {
		t.Errorf("remaining key: %v", err)
	}
}

// TestRemoteKeysBurst: a burst of tokens with an issuer's new kid costs one
// fetch, and every one of them verifies.
func TestRemoteKeysBurst(t *testing.T) {
	k1, k2 := testKey(EdDSA), testKey(ES256)
	srv := newJWKSServer(t, k1)
	ks, err := RemoteKeys(t.Context(), srv.URL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	v := mustVerifier(t, ks, VerifierConfig{Now: newClock(t0).now, CacheSize: -1})
	srv.mu.Lock()
	srv.keys, srv.delay = []jwkset.JWK{k1, k2}, 50*time.Millisecond
	srv.mu.Unlock()
	tok := signWith(t, k2, claimsAt(t0))
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, err := v.Verify(t.Context(), tok); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
	wg.Wait()
	if n := srv.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want 2: one on start, one for the burst", n)
	}
}

func TestRemoteKeysErrors(t *testing.T) {
	notFound := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notFound.Close)
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"keys": [], "padding": "`))
		_, _ = w.Write([]byte(strings.Repeat("x", maxRemoteJWKS)))
		_, _ = w.Write([]byte(`"}`))
	}))
	t.Cleanup(huge.Close)
	tests := []struct{ name, url, want string }{
		{"plain http to another host", "http://idp.example.com/jwks", "must be https"},
		{"other scheme", "ftp://127.0.0.1/jwks", "must be https"},
		{"no host", "https:///jwks", "no host"},
		{"not a URL", "https://[::1/jwks", "URL"},
		{"not found", notFound.URL, "404"},
		{"too large", huge.URL, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := RemoteKeys(t.Context(), tt.url, time.Hour); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}

// TestRemoteKeysWaitEndsWithContext: a verification waiting for another's
// fetch gives up when its context ends.
func TestRemoteKeysWaitEndsWithContext(t *testing.T) {
	srv := newJWKSServer(t, testKey(EdDSA))
	ks, err := RemoteKeys(t.Context(), srv.URL, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	srv.delay = 300 * time.Millisecond
	srv.mu.Unlock()
	var leader sync.WaitGroup
	defer leader.Wait()
	leader.Go(func() { _, _ = ks.KeyRead(t.Context(), "leader") })
	time.Sleep(50 * time.Millisecond) // the leader's fetch is under way
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := ks.KeyRead(ctx, "follower"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v, want the context's", err)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("the follower waited %v for the leader", d)
	}
}
