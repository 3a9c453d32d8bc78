package bundle_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/bundle"
)

// node is a file (data and mode), a directory (dir) or a symbolic link
// (link) of a tree.
type node struct {
	data string
	mode fs.FileMode
	dir  bool
	link string
}

func file(data string, mode fs.FileMode) node { return node{data: data, mode: mode} }
func dir() node                               { return node{dir: true, mode: 0o755} }
func link(target string) node                 { return node{link: target} }

// writeTree writes tree under root, parents first (missing ones 0755),
// and sets every mode exactly, whatever the umask.
func writeTree(t testing.TB, root string, tree map[string]node) {
	t.Helper()
	for name, n := range tree {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case n.dir:
			if err = os.MkdirAll(p, 0o755); err == nil {
				err = os.Chmod(p, n.mode)
			}
		case n.link != "":
			err = os.Symlink(n.link, p)
		default:
			if err = os.WriteFile(p, []byte(n.data), 0o600); err == nil {
				err = os.Chmod(p, n.mode)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// readTree reads the tree under root back.
func readTree(t testing.TB, root string) map[string]node {
	t.Helper()
	tree := map[string]node{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var n node
		switch info.Mode().Type() {
		case fs.ModeDir:
			n = node{dir: true, mode: info.Mode().Perm()}
		case fs.ModeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			n = link(target)
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n = file(string(data), info.Mode())
		}
		tree[filepath.ToSlash(rel)] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// sample is a small tree with an executable, a nested directory, an empty
// one and links inside it.
func sample() map[string]node {
	return map[string]node{
		"index.js":              file("console.log('hi')\n", 0o644),
		"run.sh":                file("#!/bin/sh\necho hi\n", 0o755),
		"lib/a.js":              file("module.exports = 1\n", 0o644),
		"lib/deep/b.txt":        file("b", 0o644),
		"empty":                 dir(),
		"lib/deep/up":           link("../a.js"),
		"node_modules/.bin/x":   link("../x/bin.js"),
		"node_modules/x/bin.js": file("#!/usr/bin/env node\n", 0o755),
		"dangling":              link("not/there"),
	}
}

// pack packs the tree at dir with the default limits.
func pack(t testing.TB, dir string) *bundle.Bundle {
	t.Helper()
	b, err := bundle.Pack(dir, bundle.PackOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// packTree writes tree into a new directory and packs it.
func packTree(t testing.TB, tree map[string]node) (*bundle.Bundle, string) {
	t.Helper()
	src := t.TempDir()
	writeTree(t, src, tree)
	return pack(t, src), src
}

// start starts a NATS server and returns it with a JetStream client and a
// context that bounds the test.
func start(t testing.TB) (*broker.Server, jetstream.JetStream, context.Context) {
	t.Helper()
	s := brokertest.Start(t)
	js, err := jetstream.New(brokertest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return s, js, ctx
}

// create starts a NATS server and creates the bucket on it.
func create(t testing.TB, opts ...bundle.Option) (*bundle.Store, jetstream.JetStream, context.Context) {
	t.Helper()
	_, js, ctx := start(t)
	s, err := bundle.Create(ctx, js, 1, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s, js, ctx
}

// objects opens the bucket with the plain jetstream API.
func objects(t testing.TB, ctx context.Context, js jetstream.JetStream) jetstream.ObjectStore {
	t.Helper()
	obs, err := js.ObjectStore(ctx, bundle.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return obs
}

// names lists the names in dir.
func names(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, de := range des {
		ns = append(ns, de.Name())
	}
	return ns
}
