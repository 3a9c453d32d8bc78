package process

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupRoot is where cgroup v2 is mounted when it is the only hierarchy.
const cgroupRoot = "/sys/fs/cgroup"

// cpuPeriod is the cpu.max period, in microseconds.
const cpuPeriod = 100000

// findCgroupParent returns the cgroup v2 directory in which each process
// gets a cgroup of its own: configured, or the runner's own cgroup. It
// returns "" without an error when the limits need no cgroup (only
// OpenFiles, or none), and an error saying why when no cgroup can be
// used.
func findCgroupParent(configured string, l Limits) (string, error) {
	if l.MemoryBytes == 0 && l.CPU == 0 {
		return "", nil
	}
	dir := configured
	if dir == "" {
		if !isCgroup2(cgroupRoot) {
			return "", errors.New("cgroup v2 is not mounted at " + cgroupRoot)
		}
		data, err := os.ReadFile("/proc/self/cgroup")
		if err != nil {
			return "", fmt.Errorf("own cgroup: %w", err)
		}
		own, ok := unifiedPath(data)
		if !ok {
			return "", errors.New("own cgroup: no cgroup v2 entry in /proc/self/cgroup")
		}
		dir = filepath.Join(cgroupRoot, own)
	} else if !isCgroup2(dir) {
		return "", fmt.Errorf("cgroup parent %s: not in a cgroup v2 file system", dir)
	}
	if err := checkDelegated(dir, l); err != nil {
		return "", err
	}
	return dir, nil
}

// unifiedPath returns the cgroup v2 path in the contents of
// /proc/self/cgroup: the "0::<path>" line.
func unifiedPath(data []byte) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok && strings.HasPrefix(p, "/") {
			return p, true
		}
	}
	return "", false
}

// neededControllers are the controllers the limits use.
func neededControllers(l Limits) []string {
	var c []string
	if l.MemoryBytes > 0 {
		c = append(c, "memory")
	}
	if l.CPU > 0 {
		c = append(c, "cpu")
	}
	return c
}

// checkDelegated reports why dir cannot hold the processes' cgroups: the
// controllers the limits need must be enabled for its children, and the
// runner must be allowed to create one.
func checkDelegated(dir string, l Limits) error {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	enabled := strings.Fields(string(data))
	for _, c := range neededControllers(l) {
		if !slices.Contains(enabled, c) {
			return fmt.Errorf("cgroup %s does not delegate the %s controller (cgroup.subtree_control: %q)", dir, c, strings.TrimSpace(string(data)))
		}
	}
	probe, err := os.MkdirTemp(dir, "shoal-probe-")
	if err != nil {
		return fmt.Errorf("cgroup %s: cannot create a cgroup: %w", dir, err)
	}
	if err := os.Remove(probe); err != nil {
		return fmt.Errorf("cgroup %s: cannot remove a cgroup: %w", dir, err)
	}
	return nil
}

// cpuMax is the cpu.max value for a number of cores.
func cpuMax(cores float64) string {
	quota := max(int64(cores*cpuPeriod), 1000) // the kernel's minimum quota is 1 ms
	return strconv.FormatInt(quota, 10) + " " + strconv.Itoa(cpuPeriod)
}

// cgroup is a process's own cgroup.
type cgroup struct {
	dir string
	fd  *os.File // the directory, for CLONE_INTO_CGROUP; closed by remove
}

// newCgroup creates the cgroup parent/name with the limits l.
func newCgroup(parent, name string, l Limits) (*cgroup, error) {
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	cg := &cgroup{dir: dir}
	write := func(file, value string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		return nil
	}
	var err error
	if l.MemoryBytes > 0 {
		err = write("memory.max", strconv.FormatInt(l.MemoryBytes, 10))
		if err == nil {
			// Without it, memory.max pushes the process into swap
			// rather than ending it. Absent when there is no swap.
			_ = write("memory.swap.max", "0")
		}
	}
	if err == nil && l.CPU > 0 {
		err = write("cpu.max", cpuMax(l.CPU))
	}
	if err == nil {
		cg.fd, err = os.Open(dir)
	}
	if err != nil {
		cg.remove()
		return nil, err
	}
	return cg, nil
}

// remove kills what is left in the cgroup and removes it. A nil cgroup
// is none.
func (cg *cgroup) remove() error {
	if cg == nil {
		return nil
	}
	if cg.fd != nil {
		_ = cg.fd.Close()
	}
	// cgroup.kill (Linux 5.14) ends processes that left the process
	// group; the cgroup can only be removed once it is empty.
	_ = os.WriteFile(filepath.Join(cg.dir, "cgroup.kill"), []byte("1"), 0o644)
	var err error
	for range 50 {
		err = os.Remove(cg.dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			// A plain directory (in tests) holds the files written.
			if err = os.RemoveAll(cg.dir); err == nil {
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup: %w", err)
}
