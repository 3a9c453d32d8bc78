//go:build linux

package process

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
		"X-Weird.Name":      {"v"},
		"X-Request-Id":      {"id-9"},
		"X-Has-Nul":         {"a\x00b"},
		"Accept-Language":   {"fr"},
		"Shoal-Not-Special": {"s"},
	}
	want := []string{
		"SHOAL_METHOD=POST", "SHOAL_PATH=/a/b", "SHOAL_QUERY=q=1", "SHOAL_REQUEST_ID=id-9",
		"CONTENT_TYPE=application/json", "CONTENT_LENGTH=2",
		"HTTP_ACCEPT_LANGUAGE=fr", "HTTP_SHOAL_NOT_SPECIAL=s", "HTTP_X_FORWARDED_FOR=1.2.3.4, 5.6.7.8",
		"HTTP_X_REQUEST_ID=id-9", "HTTP_X_WEIRD_NAME=v",
	}
	if got := requestEnv(r); !slices.Equal(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}
