//go:build linux

package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestUnifiedPath(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
		ok               bool
	}{
		{name: "cgroup v2 only", data: "0::/system.slice/shoal.service\n", want: "/system.slice/shoal.service", ok: true},
		{name: "hybrid", data: "4:memory:/x\n1:cpu:/\n0::/user.slice\n", want: "/user.slice", ok: true},
		{name: "v1 only", data: "4:memory:/x\n1:cpu:/\n", ok: false},
		{name: "empty", data: "", ok: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := unifiedPath([]byte(tc.data))
			if got != tc.want || ok != tc.ok {
				t.Errorf("got %q %v, want %q %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestCPUMax(t *testing.T) {
	for cores, want := range map[float64]string{
		0.5:    "50000 100000",
		2:      "200000 100000",
		0.0001: "1000 100000", // the kernel's minimum
	} {
		if got := cpuMax(cores); got != want {
			t.Errorf("cpuMax(%v) = %q, want %q", cores, got, want)
		}
	}
}

// fakeCgroup is a plain directory standing for a delegated cgroup.
func fakeCgroup(t *testing.T, subtree string) string {
	dir := t.TempDir()
	if subtree != "-" {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(subtree), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCheckDelegated(t *testing.T) {
	for _, tc := range []struct {
		name, subtree string
		limits        Limits
		err           string
	}{
		{name: "both delegated", subtree: "cpu io memory pids\n", limits: Limits{MemoryBytes: 1 << 20, CPU: 1}},
		{name: "memory only needed", subtree: "memory\n", limits: Limits{MemoryBytes: 1 << 20}},
		{name: "cpu missing", subtree: "memory\n", limits: Limits{MemoryBytes: 1 << 20, CPU: 0.5}, err: "does not delegate the cpu controller"},
		{name: "nothing delegated", subtree: "\n", limits: Limits{MemoryBytes: 1 << 20}, err: "does not delegate the memory controller"},
		{name: "not a cgroup", subtree: "-", limits: Limits{MemoryBytes: 1 << 20}, err: "cgroup.subtree_control"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeCgroup(t, tc.subtree)
			err := checkDelegated(dir, tc.limits)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("got %v, want %q", err, tc.err)
			}
			if entries, _ := os.ReadDir(dir); len(entries) > 1 {
				t.Errorf("left behind: %v", entries)
			}
		})
	}
}

func TestFindCgroupParent(t *testing.T) {
	if got, err := findCgroupParent("", Limits{OpenFiles: 10}); got != "" || err != nil {
		t.Errorf("no cgroup needed: got %q, %v", got, err)
	}
	if _, err := findCgroupParent(t.TempDir(), Limits{CPU: 1}); err == nil || !strings.Contains(err.Error(), "not in a cgroup v2 file system") {
		t.Errorf("plain directory: got %v", err)
	}
	if !isCgroup2(cgroupRoot) {
		if _, err := findCgroupParent("", Limits{CPU: 1}); err == nil || !strings.Contains(err.Error(), "not mounted") {
			t.Errorf("no cgroup v2 here: got %v", err)
		}
	}
}

func TestNewCgroupWritesLimits(t *testing.T) {
	parent := fakeCgroup(t, "cpu memory")
	cg, err := newCgroup(parent, "shoal-fn-1", Limits{MemoryBytes: 64 << 20, CPU: 0.25, OpenFiles: 100})
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"memory.max": "67108864", "memory.swap.max": "0", "cpu.max": "25000 100000"} {
		if got, err := os.ReadFile(filepath.Join(cg.dir, file)); string(got) != want {
			t.Errorf("%s = %q (%v), want %q", file, got, err, want)
		}
	}
	if err := cg.remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup not removed: %v", err)
	}
	if err := (*cgroup)(nil).remove(); err != nil {
		t.Errorf("nil cgroup: %v", err)
	}
}

// A cgroup given that cannot be used is an error, not a silent fallback
// to rlimits.
func TestStartWithUnusableCgroupParent(t *testing.T) {
	_, err := NewExec(ExecConfig{Config: Config{Name: "f", Command: []string{"cat"}, Dir: t.TempDir(),
		Limits: Limits{MemoryBytes: 1 << 30}, CgroupParent: t.TempDir()}})
	if err == nil || !strings.Contains(err.Error(), "cgroup v2") {
		t.Fatalf("got %v", err)
	}
}

// The process starts inside its own cgroup (CLONE_INTO_CGROUP), which is
// removed after it exits. It needs a writable cgroup v2 hierarchy: on a
// hybrid system, the unified one (with no controllers, so no limits).
func TestProcessInItsCgroup(t *testing.T) {
	var parent string
	for _, root := range []string{cgroupRoot, filepath.Join(cgroupRoot, "unified")} {
		data, err := os.ReadFile("/proc/self/cgroup")
		own, ok := unifiedPath(data)
		if err != nil || !ok || !isCgroup2(root) {
			continue
		}
		dir := filepath.Join(root, own)
		if probe, err := os.MkdirTemp(dir, "shoal-probe-"); err == nil {
			_ = os.Remove(probe)
			parent = dir
			break
		}
	}
	if parent == "" {
		t.Skip("no writable cgroup v2 here")
	}
	e, err := NewExec(ExecConfig{Config: Config{Name: "cg", Command: []string{"cat", "/proc/self/cgroup"}, Dir: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	e.sp.cgroup = parent // as findCgroupParent would, given limits
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	got, _ := unifiedPath(rec.Body.Bytes())
	if rec.Code != http.StatusOK || !strings.HasPrefix(filepath.Base(got), "shoal-cg-") {
		t.Fatalf("got %d %q, want the process in a cgroup shoal-cg-N", rec.Code, rec.Body.String())
	}
	root := strings.TrimSuffix(parent, strings.TrimSuffix(mustOwn(t), "/"))
	if _, err := os.Stat(filepath.Join(root, got)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s left behind: %v", got, err)
	}
}

func mustOwn(t *testing.T) string {
	data, _ := os.ReadFile("/proc/self/cgroup")
	own, _ := unifiedPath(data)
	return own
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{filepath.Join(bin, "node"), 0o755}, {filepath.Join(dir, "app"), 0o755}, {filepath.Join(dir, "data"), 0o644}} {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.path, nil, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, arg0, path, want, err string
	}{
		{name: "in PATH", arg0: "node", path: "/nonexistent:" + bin, want: filepath.Join(bin, "node")},
		{name: "relative PATH entries ignored", arg0: "node", path: "bin", err: "node not found in PATH bin"},
		{name: "not in PATH", arg0: "python3", path: bin, err: "runtime missing: python3 not found in PATH"},
		{name: "relative to the directory", arg0: "./app", path: "", want: filepath.Join(dir, "app")},
		{name: "absolute", arg0: filepath.Join(dir, "app"), path: "", want: filepath.Join(dir, "app")},
		{name: "not executable", arg0: "./data", err: "runtime missing: ./data: is not executable"},
		{name: "a directory", arg0: "./bin", err: "is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolve(tc.arg0, dir, tc.path)
			if tc.err != "" {
				if !errors.Is(err, ErrRuntimeMissing) || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("got %q, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if got != tc.want || err != nil {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestRequestEnv(t *testing.T) {
	r := httptest.NewRequest("POST", "/a/b?q=1", strings.NewReader("xy"))
	r.Header = http.Header{
		"Content-Type":      {"application/json"},
		"Authorization":     {"Bearer t"},
		"X-Forwarded-For":   {"1.2.3.4", "5.6.7.8"},
		"X-Request-Id":      {"id-9"},
		"X-Has-Nul":         {"a\x00b"},
		"Accept-Language":   {"fr"},
		"Shoal-Not-Special": {"s"},
		"Proxy":             {"http://evil:8080"},  // httpoxy: would be HTTP_PROXY
		"X_Real_Ip":         {"6.6.6.6"},           // would pass for X-Real-Ip
		"X-Weird.Name":      {"v"},                 // would pass for X-Weird-Name
		"Api-Key":           {"the caller's"},      // the function's HTTP_API_KEY
		"X-Tenant":          {"the caller's"},      // allowed: not the function's
		"x-tenant":          {"a second spelling"}, // the first one is kept
	}
	fnNames := map[string]bool{"HTTP_API_KEY": true, "CONTENT_LENGTH": true}
	wantShoal := []string{"SHOAL_METHOD=POST", "SHOAL_PATH=/a/b", "SHOAL_QUERY=q=1", "SHOAL_REQUEST_ID=id-9"}
	wantRequest := []string{
		"CONTENT_TYPE=application/json",
		"HTTP_ACCEPT_LANGUAGE=fr", "HTTP_SHOAL_NOT_SPECIAL=s", "HTTP_X_FORWARDED_FOR=1.2.3.4, 5.6.7.8",
		"HTTP_X_REQUEST_ID=id-9", "HTTP_X_TENANT=the caller's",
	}
	shoal, request := requestEnv(r, fnNames)
	if !slices.Equal(shoal, wantShoal) {
		t.Errorf("Shoal's: got  %q\nwant %q", shoal, wantShoal)
	}
	if !slices.Equal(request, wantRequest) {
		t.Errorf("the request's: got  %q\nwant %q", request, wantRequest)
	}
}

func TestListensInGroup(t *testing.T) {
	for _, network := range []string{"127.0.0.1:0", "0.0.0.0:0", "[::]:0"} {
		t.Run(network, func(t *testing.T) {
			l, err := net.Listen("tcp", network)
			if err != nil {
				t.Skip(err) // e.g. no IPv6
			}
			defer l.Close()
			host := net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
			if err := listensInGroup(host, syscall.Getpgrp()); err != nil {
				t.Errorf("the test's own group: %v", err)
			}
			if err := listensInGroup(host, 1<<30); err == nil || !strings.Contains(err.Error(), "is held by another process") {
				t.Errorf("another group: %v, want the port held by another process", err)
			}
			// sock_diag and its fallback, /proc/net/tcp{,6}, agree.
			port := uint16(l.Addr().(*net.TCPAddr).Port)
			var found [2][]string
			for i, list := range []func(func(netip.Addr, uint16, string)) error{diagListeners, procListeners} {
				err := list(func(addr netip.Addr, p uint16, inode string) {
					if p == port {
						found[i] = append(found[i], addr.Unmap().String()+" "+inode)
					}
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			if len(found[0]) != 1 || !slices.Equal(found[0], found[1]) {
				t.Errorf("sock_diag lists %q, /proc/net/tcp %q; want the one listener", found[0], found[1])
			}
		})
	}
	free := freePortT(t)
	if err := listensInGroup(free, syscall.Getpgrp()); err == nil || !strings.Contains(err.Error(), "no socket listens") {
		t.Errorf("a port no one listens on: %v", err)
	}
}

func freePortT(t *testing.T) string {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// sweepStale removes the private directories of dead runners, and only
// those.
func TestSweepStale(t *testing.T) {
	tmp := t.TempDir()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPid := dead.Process.Pid
	mk := func(name string, dir bool) string {
		p := filepath.Join(tmp, name)
		var err error
		if dir {
			err = os.MkdirAll(filepath.Join(p, "tmp"), 0o700)
		} else {
			err = os.WriteFile(p, nil, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	gone := []string{
		mk(privatePrefix(deadPid, "fn")+"123", true),
		mk(privatePrefix(deadPid, "other")+"456", true),
	}
	kept := []string{
		mk(privatePrefix(os.Getpid(), "fn")+"1", true),      // this runner's
		mk(privatePrefix(os.Getppid(), "fn")+"1", true),     // a running one's
		mk(fmt.Sprintf("shoal-%d-fn-file", deadPid), false), // not a directory
		mk("shoal-srv-123", true),                           // no pid
		mk(fmt.Sprintf("shoal-0%d-fn-1", deadPid), true),    // not as a runner names it
		mk(fmt.Sprintf("other-%d-fn-1", deadPid), true),
	}
	if os.Getuid() == 0 {
		// Another user's: not this runner's to remove.
		p := mk(privatePrefix(deadPid, "theirs")+"1", true)
		if err := os.Chown(p, 12345, 12345); err != nil {
			t.Fatal(err)
		}
		kept = append(kept, p)
	}
	sweepStale(tmp, slog.New(slog.DiscardHandler))
	for _, p := range gone {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want it removed", filepath.Base(p), err)
		}
	}
	for _, p := range kept {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v, want it kept", filepath.Base(p), err)
		}
	}
}
