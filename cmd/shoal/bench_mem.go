package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/platform/loadgen"
)

// Memory figures come from /proc (Linux): a process's VmRSS, and its open
// sockets to check that idle connections really reached it.

// errNoProc says why memory is not measured elsewhere than on Linux.
var errNoProc = fmt.Errorf("memory figures need /proc (Linux); this is %s", runtime.GOOS)

// procAvailable reports whether /proc can be read for memory figures.
func procAvailable() bool {
	if runtime.GOOS != "linux" {
		return false
	}
	_, err := os.Stat("/proc/self/status")
	return err == nil
}

// rssKiB reads a process's resident set size (VmRSS) in KiB.
func rssKiB(pid int) (int64, error) {
	if !procAvailable() {
		return 0, errNoProc
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("read the RSS of pid %d: %w", pid, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) == 2 && f[1] == "kB" {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// socketCount counts the sockets a process has open.
func socketCount(pid int) (int, error) {
	if !procAvailable() {
		return 0, errNoProc
	}
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("list the sockets of pid %d: %w", pid, err)
	}
	n := 0
	for _, e := range entries {
		if link, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(link, "socket:") {
			n++
		}
	}
	return n, nil
}

// cpuModel is the CPU's model name, from /proc/cpuinfo where there is one.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown (" + runtime.GOARCH + ")"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown (" + runtime.GOARCH + ")"
}

// loadAverage is /proc/loadavg's first three figures, or "" where there
// is none.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// fileLimit returns the soft limit on open files (Go raises it to the
// hard limit at start).
func fileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	return l.Cur, nil
}

// ProcRSS is one process's resident memory.
type ProcRSS struct {
	Worker int    `json:"worker,omitempty"`
	PID    int    `json:"pid"`
	KiB    int64  `json:"rss_kib"`
	Error  string `json:"error,omitempty"`
}

// readRSS reads the RSS of each process of ps, recording errors.
func readRSS(ps []ProcRSS) []ProcRSS {
	out := make([]ProcRSS, len(ps))
	for i, p := range ps {
		out[i] = ProcRSS{Worker: p.Worker, PID: p.PID}
		kib, err := rssKiB(p.PID)
		if err != nil {
			out[i].Error = err.Error()
		}
		out[i].KiB = kib
	}
	return out
}

// IdleReport is a gateway's memory before and while it holds idle
// keep-alive connections.
type IdleReport struct {
	Process   string `json:"process"`
	PID       int    `json:"pid"`
	Requested int    `json:"requested"`
	// Open is how many connections were opened and answered GET /healthz;
	// Alive how many of them the server still held when RSS was read.
	Open          int    `json:"open"`
	Alive         int    `json:"alive"`
	Failed        int    `json:"failed"`
	FirstError    string `json:"first_error,omitempty"`
	SocketsBefore int    `json:"server_sockets_before"`
	SocketsAfter  int    `json:"server_sockets_after"`
	BeforeKiB     int64  `json:"rss_before_kib"`
	AfterKiB      int64  `json:"rss_after_kib"`
	// PerConnKiB is (after - before) / alive.
	PerConnKiB float64 `json:"per_conn_kib"`
}

// measureIdle opens n idle keep-alive connections to the gateway at addr
// (process pid), each after one GET /healthz, and reads the process's RSS
// and sockets before and while they are held; then closes them.
func measureIdle(ctx context.Context, process string, pid int, addr string, n int) (*IdleReport, error) {
	rep := &IdleReport{Process: process, PID: pid, Requested: n}
	// Let the server drop the connections of what ran before.
	if err := sleepCtx(ctx, 300*time.Millisecond); err != nil {
		return nil, err
	}
	var err error
	if rep.SocketsBefore, err = socketCount(pid); err != nil {
		return nil, err
	}
	if rep.BeforeKiB, err = rssKiB(pid); err != nil {
		return nil, err
	}
	ic, err := loadgen.OpenIdle(ctx, loadgen.Target{Addr: addr, Path: "/healthz"}, n, 64)
	if ic != nil {
		defer ic.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("open %d idle connections to %s: %w", n, process, err)
	}
	rep.Open, rep.Failed = ic.Open(), ic.Failed
	if ic.FirstError != nil {
		rep.FirstError = ic.FirstError.Error()
	}
	// Let the server settle: each connection's goroutine is parked in
	// its read by now, but give the allocator a moment.
	if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
		return nil, err
	}
	if rep.AfterKiB, err = rssKiB(pid); err != nil {
		return nil, err
	}
	if rep.SocketsAfter, err = socketCount(pid); err != nil {
		return nil, err
	}
	rep.Alive = ic.Alive()
	if rep.Alive > 0 {
		rep.PerConnKiB = float64(rep.AfterKiB-rep.BeforeKiB) / float64(rep.Alive)
	}
	if rep.Open == 0 && n > 0 {
		return rep, errors.New("no idle connection could be opened: " + rep.FirstError)
	}
	return rep, nil
}

// sleepCtx waits for d, or less if ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
