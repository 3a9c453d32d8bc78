package token

import (
	"sync"
	"time"
)

// cache remembers verified tokens by the SHA-256 of the raw token. It is
// split in shards, each a map under its own mutex, so that concurrent
// requests seldom wait for one another; the hash spreads tokens evenly.
// It never holds more than its size: a shard that is full first drops its
// expired entries, if the earliest expiry it knows of has passed, and
// otherwise an arbitrary entry.
type cache struct {
	shards []cacheShard
	mask   int
}

type cacheShard struct {
	mu         sync.Mutex
	entries    map[[32]byte]cacheEntry
	max        int
	nextExpiry int64 // no entry expires before (UnixNano); 0 when none known

	_ [64]byte // keeps neighbouring shards' locks off one cache line
}

type cacheEntry struct {
	claims *Claims // never changed once cached
	until  int64   // UnixNano; the entry is void from then on
}

// minShardSize keeps shards large enough that splitting the cache does
// not make eviction noticeably less fair.
const (
	maxShards    = 16
	minShardSize = 64
)

func newCache(size int) *cache {
	n := 1
	for n < maxShards && size/(n*2) >= minShardSize {
		n *= 2
	}
	c := &cache{shards: make([]cacheShard, n), mask: n - 1}
	for i := range c.shards {
		// Floor division: the shards together never hold more than size.
		c.shards[i] = cacheShard{entries: make(map[[32]byte]cacheEntry), max: size / n}
	}
	return c
}

func (c *cache) shard(key *[32]byte) *cacheShard {
	return &c.shards[int(key[0])&c.mask]
}

// get returns the claims cached under key, if they are still good at now.
func (c *cache) get(key *[32]byte, now time.Time) *Claims {
	s := c.shard(key)
	s.mu.Lock()
	e, ok := s.entries[*key]
	s.mu.Unlock()
	if !ok || now.UnixNano() >= e.until {
		return nil
	}
	return e.claims
}

// put caches claims under key until the time until.
func (c *cache) put(key *[32]byte, claims *Claims, until, now time.Time) {
	u, n := until.UnixNano(), now.UnixNano()
	if u <= n {
		return
	}
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[*key]; !ok && len(s.entries) >= s.max {
		if n >= s.nextExpiry {
			s.sweep(n)
		}
		if len(s.entries) >= s.max {
			for k := range s.entries { // Go's map order is arbitrary
				delete(s.entries, k)
				break
			}
		}
	}
	s.entries[*key] = cacheEntry{claims: claims, until: u}
	if s.nextExpiry == 0 || u < s.nextExpiry {
		s.nextExpiry = u
	}
}

// sweep drops the entries void at now and notes the next expiry.
func (s *cacheShard) sweep(now int64) {
	var next int64
	for k, e := range s.entries {
		switch {
		case now >= e.until:
			delete(s.entries, k)
		case next == 0 || e.until < next:
			next = e.until
		}
	}
	s.nextExpiry = next
}
