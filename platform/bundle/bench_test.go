package bundle_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/platform/bundle"
)

// benchTree writes 2,000 files of 10 KiB of random bytes (20 MiB, which
// the bucket's compression cannot shrink) in 40 directories.
func benchTree(b *testing.B) string {
	b.Helper()
	src := b.TempDir()
	rng := rand.NewChaCha8([32]byte{1})
	data := make([]byte, 10<<10)
	for i := range 2000 {
		p := filepath.Join(src, fmt.Sprintf("d%02d", i%40), fmt.Sprintf("f%04d.js", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		_, _ = rng.Read(data)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	return src
}

// BenchmarkCode measures each step of a deployment's code on its way to
// a runner, for a tree of 2,000 files and 20 MiB, against a single
// embedded NATS server.
func BenchmarkCode(b *testing.B) {
	src := benchTree(b)
	s, js, _ := create(b)
	// The helpers' context lasts 20 s: too short for many iterations of
	// 20 MiB uploads and fetches on a slow disk.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bun := pack(b, src)
	if _, err := s.Put(ctx, bun, "bench"); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d entries, archive %d bytes", bun.Files, bun.Size)

	b.Run("Pack", func(b *testing.B) {
		b.SetBytes(bun.Size)
		tmp := b.TempDir()
		for b.Loop() {
			p, err := bundle.Pack(src, bundle.PackOptions{TempDir: tmp})
			if err != nil {
				b.Fatal(err)
			}
			p.Close()
		}
	})
	b.Run("Put", func(b *testing.B) {
		b.SetBytes(bun.Size)
		for b.Loop() {
			b.StopTimer()
			if err := objects(b, ctx, js).Delete(ctx, bun.Digest.Name()); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if uploaded, err := s.Put(ctx, bun, "bench"); !uploaded || err != nil {
				b.Fatal(uploaded, err)
			}
		}
	})
	b.Run("PutUnchanged", func(b *testing.B) {
		for b.Loop() {
			if uploaded, err := s.Put(ctx, bun, "bench"); uploaded || err != nil {
				b.Fatal(uploaded, err)
			}
		}
	})
	b.Run("Fetch", func(b *testing.B) {
		b.SetBytes(bun.Size)
		for b.Loop() {
			b.StopTimer()
			cache := b.TempDir()
			b.StartTimer()
			if _, err := s.Fetch(ctx, bun.Digest, cache); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("FetchCached", func(b *testing.B) {
		cache := b.TempDir()
		if _, err := s.Fetch(ctx, bun.Digest, cache); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := s.Fetch(ctx, bun.Digest, cache); err != nil {
				b.Fatal(err)
			}
		}
	})
}
