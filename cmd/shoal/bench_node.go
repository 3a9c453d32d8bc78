package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The Node.js reference: the cluster module with one worker per CPU, each
// serving Express's app.get('/ping', (req, res) => res.send('pong!')).

// nodeServerJS is the reference server. The primary forks the workers,
// which all listen on the one port the first picks (the cluster module
// shares a listen(0) port among workers), and prints one line once every
// worker listens.
const nodeServerJS = `'use strict';
// Written by shoal bench: the Node.js cluster + Express reference.
const cluster = require('node:cluster');
const os = require('node:os');
const workers = Number(process.env.BENCH_WORKERS) ||
  (os.availableParallelism ? os.availableParallelism() : os.cpus().length);

if (cluster.isPrimary) {
  let ready = 0;
  let port = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('message', (worker, msg) => {
    if (!msg || !msg.listening) return;
    if (port && msg.port !== port) {
      console.error('workers listen on different ports: ' + port + ', ' + msg.port);
      process.exit(1);
    }
    port = msg.port;
    if (++ready === workers) {
      console.log('listening http://127.0.0.1:' + port + ' workers=' + workers);
    }
  });
  cluster.on('exit', (worker, code, signal) => {
    console.error('worker ' + worker.process.pid + ' exited (' + (signal || code) + ')');
    process.exit(1);
  });
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGKILL');
    process.exit(0);
  });
} else {
  const express = require('express');
  const app = express();
  app.get('/ping', (req, res) => res.send('pong!'));
  const server = app.listen(0, '127.0.0.1', () => {
    process.send({ listening: true, port: server.address().port });
  });
}
`

const nodePackageJSON = `{
  "name": "shoal-bench-node",
  "private": true,
  "description": "The Node.js cluster + Express reference of shoal bench",
  "dependencies": {
    "express": "^4"
  }
}
`

// npmInstallTimeout bounds npm install express@4.
const npmInstallTimeout = 3 * time.Minute

// nodeSetup is a ready Node.js reference, or why there is none.
type nodeSetup struct {
	dir     string // holds server.js and node_modules
	node    string // node's path
	version string // node --version
	express string // the installed Express version
}

// prepareNode finds node and npm, writes the reference server into the
// cache directory and installs Express there once. The error says why the
// configuration is skipped.
func prepareNode(ctx context.Context, progress func(string)) (*nodeSetup, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, errors.New("node is not on PATH")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return nil, errors.New("npm is not on PATH")
	}
	version, err := commandOutput(ctx, 10*time.Second, node, "--version")
	if err != nil {
		return nil, fmt.Errorf("node --version: %w", err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return nil, fmt.Errorf("no cache directory for the Node.js server: %w", err)
	}
	dir := filepath.Join(cache, "shoal", "bench-node")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	for name, content := range map[string]string{"server.js": nodeServerJS, "package.json": nodePackageJSON} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
	}
	s := &nodeSetup{dir: dir, node: node, version: version}
	s.express, err = expressVersion(dir)
	if errors.Is(err, fs.ErrNotExist) {
		progress(fmt.Sprintf("installing express@4 with npm into %s (once; at most %s)", dir, npmInstallTimeout))
		out, ierr := commandOutput(ctx, npmInstallTimeout, npm, "install", "--prefix", dir, "--no-audit", "--no-fund", "--loglevel", "error", "express@4")
		if ierr != nil {
			return nil, fmt.Errorf("npm install express@4 failed: %w%s", ierr, firstLines(out, 5))
		}
		s.express, err = expressVersion(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("express in %s: %w", dir, err)
	}
	return s, nil
}

// expressVersion reads the installed Express's version.
func expressVersion(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "express", "package.json"))
	if err != nil {
		return "", err
	}
	const key = `"version": "`
	i := strings.Index(string(b), key)
	if i < 0 {
		return "", errors.New("no version in express's package.json")
	}
	v, _, _ := strings.Cut(string(b[i+len(key):]), `"`)
	return v, nil
}

// commandOutput runs a command to completion within timeout and returns
// its output, trimmed.
func commandOutput(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	setChildProcAttr(cmd)
	cmd.Cancel = func() error { return killChildGroup(cmd.Process) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (after %s)", ctx.Err(), timeout)
	}
	return strings.TrimSpace(string(out)), err
}

// firstLines returns up to n lines of s, indented on lines of their own.
func firstLines(s string, n int) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	return "\n" + indent(strings.Join(lines[:min(n, len(lines))], "\n"))
}
