package bundle_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/bundle"
)

// `shoal deploy` packs a function's source and uploads it under its
// digest, once; a runner fetches the tree that digest names into its
// cache.
func ExampleStore_Fetch() {
	_, js, stop, err := brokertest.ForExample()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tmp, err := os.MkdirTemp("", "shoal-bundle-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		fmt.Println(err)
		return
	}
	if err := os.WriteFile(filepath.Join(src, "handler.sh"), []byte("#!/bin/sh\necho hello\n"), 0o755); err != nil {
		fmt.Println(err)
		return
	}

	// Deploy.
	s, err := bundle.Create(ctx, js, 1)
	if err != nil {
		fmt.Println(err)
		return
	}
	b, err := bundle.Pack(src, bundle.PackOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	for range 2 {
		uploaded, err := s.Put(ctx, b, "hello-bash")
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println("uploaded:", uploaded)
	}

	// Run.
	dir, err := s.Fetch(ctx, b.Digest, filepath.Join(tmp, "cache"))
	if err != nil {
		fmt.Println(err)
		return
	}
	fi, err := os.Stat(filepath.Join(dir, "handler.sh"))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(b.Digest)
	fmt.Println(filepath.Base(dir) == b.Digest.Hex(), fi.Mode())
	// Output:
	// uploaded: true
	// uploaded: false
	// sha256:eacecbb9b8b3fc56dddaf30672347c80b15c9121e4af29218a3d6fb51baf8378
	// true -rwxr-xr-x
}
