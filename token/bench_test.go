package token

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

var benchAlgs = []string{EdDSA, ES256, RS256, HS256}

// BenchmarkVerify measures the hot path of every request to a function
// that needs a token: uncached (a token seen for the first time) and
// cached (the same token again), alone and from all CPUs at once.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range benchAlgs {
		key := testKey(alg)
		s, err := NewSigner(key, "shoal", "shoal")
		if err != nil {
			b.Fatal(err)
		}
		tok, _, err := s.Sign("alice", []string{"echo", "ping"}, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		keys := mustStatic(b, key)
		newVerifier := func(cacheSize int) *Verifier {
			return mustVerifier(b, keys, VerifierConfig{CacheSize: cacheSize, Algorithms: benchAlgs})
		}
		ctx := context.Background()
		b.Run(alg+"/uncached", func(b *testing.B) {
			v := newVerifier(-1)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(alg+"/cached", func(b *testing.B) {
			v := newVerifier(0)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
		// Many clients, each with its own token, from all CPUs.
		toks := make([]string, 64)
		for i := range toks {
			if toks[i], _, err = s.Sign("alice", []string{"echo", "ping"}, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(alg+"/cached-parallel", func(b *testing.B) {
			v := newVerifier(0)
			for _, tok := range toks {
				if _, err := v.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				tok := toks[next.Add(1)%int64(len(toks))]
				for pb.Next() {
					if _, err := v.Verify(ctx, tok); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkSign(b *testing.B) {
	for _, alg := range benchAlgs {
		b.Run(alg, func(b *testing.B) {
			s, err := NewSigner(testKey(alg), "shoal", "shoal")
			if err != nil {
				b.Fatal(err)
			}
			perms := []string{"echo", "ping"}
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := s.Sign("alice", perms, time.Hour); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
