package token

import (
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestCacheHit: a token verified once is answered from the cache, without
// a key lookup, and the claims handed out are copies the caller may change.
func TestCacheHit(t *testing.T) {
	keys := &countingKeys{KeySource: mustStatic(t, testKey(EdDSA))}
	v := mustVerifier(t, keys, VerifierConfig{Now: newClock(t0).now})
	tok := signWith(t, testKey(EdDSA), claimsAt(t0))
	first, err := v.Verify(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	second, err := v.Verify(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if n := keys.n.Load(); n != 1 {
		t.Errorf("%d key lookups for two verifications of one token, want 1", n)
	}
	if !sameClaims(first, second) || !sameClaims(second, claimsAt(t0)) {
		t.Errorf("cached claims %+v", second)
	}

	// Change everything the caller can reach.
	second.Permissions[0] = "admin"
	second.Permissions = append(second.Permissions, "root")
	second.Audience[0] = "evil"
	second.ExpiresAt.Time = second.ExpiresAt.Add(24 * time.Hour)
	second.Subject = "mallory"
	third, err := v.Verify(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if !sameClaims(third, claimsAt(t0)) {
		t.Errorf("the cache gave out claims another caller changed: %+v", third)
	}
	if keys.n.Load() != 1 {
		t.Error("the third verification looked the key up")
	}
}

// TestCacheExpiry: a cached verification lapses at the token's exp, or
// CacheTTL after it was made, whichever comes first.
func TestCacheExpiry(t *testing.T) {
	clk := newClock(t0)
	keys := &countingKeys{KeySource: mustStatic(t, testKey(EdDSA))}
	v := mustVerifier(t, keys, VerifierConfig{Now: clk.now, CacheTTL: time.Minute})
	short := signWith(t, testKey(EdDSA), with(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(30 * time.Second)) }))
	long := signWith(t, testKey(EdDSA), claimsAt(t0))
	steps := []struct {
		at      time.Duration
		tok     string
		lookups int64 // total so far
		err     error
	}{
		{0, short, 1, nil},
		{29 * time.Second, short, 1, nil},
		// At exp the cached verification is void; the token still passes,
		// within the leeway, on a fresh verification that is not cached.
		{30 * time.Second, short, 2, nil},
		{31 * time.Second, short, 3, nil},
		{61 * time.Second, short, 4, errExpired},

		{61 * time.Second, long, 5, nil},
		{120 * time.Second, long, 5, nil},
		{121 * time.Second, long, 6, nil}, // CacheTTL after the first
		{122 * time.Second, long, 6, nil},
	}
	for _, s := range steps {
		clk.set(t0.Add(s.at))
		_, err := v.Verify(t.Context(), s.tok)
		if err != s.err {
			t.Errorf("at +%v: error %v, want %v", s.at, err, s.err)
		}
		if n := keys.n.Load(); n != s.lookups {
			t.Errorf("at +%v: %d key lookups, want %d", s.at, n, s.lookups)
		}
	}
}

// TestCacheOnlySuccess: a refused token is checked again every time.
func TestCacheOnlySuccess(t *testing.T) {
	keys := &countingKeys{KeySource: mustStatic(t, testKey(EdDSA))}
	v := mustVerifier(t, keys, VerifierConfig{Now: newClock(t0).now})
	h, p, _ := segments(signWith(t, testKey(EdDSA), claimsAt(t0)))
	_, _, s := segments(signWith(t, testKey(EdDSA), with(func(c *Claims) { c.ID = "other" })))
	bad := h + "." + p + "." + s
	for range 2 {
		if _, err := v.Verify(t.Context(), bad); err != errBadSignature {
			t.Fatalf("error %v", err)
		}
	}
	if n := keys.n.Load(); n != 2 {
		t.Errorf("%d key lookups, want 2", n)
	}
}

func TestCacheDisabled(t *testing.T) {
	keys := &countingKeys{KeySource: mustStatic(t, testKey(EdDSA))}
	v := mustVerifier(t, keys, VerifierConfig{Now: newClock(t0).now, CacheSize: -1})
	tok := signWith(t, testKey(EdDSA), claimsAt(t0))
	for range 2 {
		if _, err := v.Verify(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := keys.n.Load(); n != 2 || v.cache != nil {
		t.Errorf("%d key lookups, want 2", n)
	}
}

func randomKey() *[32]byte {
	var k [32]byte
	rand.Read(k[:])
	return &k
}

func TestCacheShards(t *testing.T) {
	for _, tt := range []struct{ size, shards, perShard int }{
		{1, 1, 1}, {100, 1, 100}, {128, 2, 64}, {1000, 8, 125}, {4096, 16, 256}, {1 << 20, 16, 1 << 16},
	} {
		c := newCache(tt.size)
		if len(c.shards) != tt.shards || c.shards[0].max != tt.perShard {
			t.Errorf("size %d: %d shards of %d, want %d of %d", tt.size, len(c.shards), c.shards[0].max, tt.shards, tt.perShard)
		}
	}
}

// TestCacheBounded: however many tokens are verified, the cache never
// holds more than its size.
func TestCacheBounded(t *testing.T) {
	now := t0
	claims := claimsAt(t0)
	for _, size := range []int{1, 100, 1000, 4096} {
		c := newCache(size)
		for range 5 * size {
			c.put(randomKey(), claims, now.Add(time.Hour), now)
			if n := c.len(); n > size {
				t.Fatalf("size %d: %d entries", size, n)
			}
		}
		if n := c.len(); n < size*3/4 {
			t.Errorf("size %d: only %d entries after %d puts", size, n, 5*size)
		}
	}

	// Through the verifier too.
	v := mustVerifier(t, mustStatic(t, testKey(EdDSA)), VerifierConfig{Now: newClock(t0).now, CacheSize: 8})
	for i := range 20 {
		tok := signWith(t, testKey(EdDSA), with(func(c *Claims) { c.ID = fmt.Sprint(i) }))
		if _, err := v.Verify(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.cache.len(); n > 8 {
		t.Errorf("verifier cache of size 8 holds %d", n)
	}
}

// TestCacheEviction: a full shard drops its expired entries before any
// live one; with none expired, it drops one entry for the new one.
func TestCacheEviction(t *testing.T) {
	c := newCache(64)
	claims := claimsAt(t0)
	var first []*[32]byte
	for range 64 {
		k := randomKey()
		first = append(first, k)
		c.put(k, claims, t0.Add(time.Second), t0)
	}
	// Full of live entries: one goes.
	live := randomKey()
	c.put(live, claims, t0.Add(time.Hour), t0)
	if c.len() != 64 || c.get(live, t0) == nil {
		t.Fatalf("%d entries; new entry cached: %v", c.len(), c.get(live, t0) != nil)
	}
	// Later the first ones have expired: they all go, the live one stays.
	later := t0.Add(2 * time.Second)
	c.put(randomKey(), claims, later.Add(time.Hour), later)
	if c.len() != 2 || c.get(live, later) == nil {
		t.Errorf("%d entries after the expired ones were swept, want 2", c.len())
	}
	for _, k := range first {
		if c.get(k, later) != nil {
			t.Fatal("an expired entry was served")
		}
	}
	// Re-putting an entry that is already there evicts nothing.
	c2 := newCache(1)
	k := randomKey()
	c2.put(k, claims, t0.Add(time.Hour), t0)
	c2.put(k, claims, t0.Add(time.Hour), t0)
	if c2.len() != 1 || c2.get(k, t0) == nil {
		t.Error("re-putting an entry lost it")
	}
	// An entry void from the start is not cached.
	c2.put(randomKey(), claims, t0, t0)
	if c2.get(k, t0) == nil {
		t.Error("a void entry evicted a live one")
	}
}

// TestCacheConcurrent verifies a few tokens from many goroutines; run with
// -race.
func TestCacheConcurrent(t *testing.T) {
	v := mustVerifier(t, mustStatic(t, testKey(EdDSA)), VerifierConfig{Now: newClock(t0).now, CacheSize: 16})
	var toks []string
	for i := range 32 {
		toks = append(toks, signWith(t, testKey(EdDSA), with(func(c *Claims) { c.ID = fmt.Sprint(i) })))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				c, err := v.Verify(t.Context(), toks[(g+i)%len(toks)])
				if err != nil {
					t.Error(err)
					return
				}
				c.Permissions[0] = "changed" // must not race with anyone
			}
		})
	}
	wg.Wait()
}
