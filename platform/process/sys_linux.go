//go:build linux

package process

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func supported() error { return nil }

// The rlimits of a function's processes are set before its program runs,
// by a trampoline: the process is started as this very binary, whose
// init (below) sets the limits named in envLimits and then execs the
// program named in envExec, with the argv and environment it was given
// minus those two variables. Setting them on the child after it started
// (prlimit) would leave a window in which a fast program reads or uses
// the runner's limits: measured, bash's `ulimit -n` saw the runner's
// 20000 instead of 64 in 3 runs of 8. The cost is one start of this
// binary per process (a few milliseconds), paid only by functions with
// rlimits.
const (
	envLimits = "SHOAL_PROCESS_RLIMITS" // "NOFILE AS", 0 for none
	envExec   = "SHOAL_PROCESS_EXEC"    // the program's path
)

func init() {
	if os.Getenv(envExec) == "" {
		return
	}
	// This process is a function's trampoline: nothing else of the
	// binary it belongs to runs.
	os.Exit(trampoline())
}

// trampoline sets the limits and execs the program; it returns only on
// failure, with the exit status to end with.
func trampoline() int {
	path, spec := os.Getenv(envExec), os.Getenv(envLimits)
	var nofile, as uint64
	if _, err := fmt.Sscanf(spec, "%d %d", &nofile, &as); err != nil {
		fmt.Fprintf(os.Stderr, "shoal: bad %s %q: %v\n", envLimits, spec, err)
		return 126
	}
	set := func(resource int, name string, v uint64) bool {
		if v == 0 {
			return true
		}
		var old syscall.Rlimit
		if err := syscall.Getrlimit(resource, &old); err != nil {
			fmt.Fprintf(os.Stderr, "shoal: getrlimit %s: %v\n", name, err)
			return false
		}
		// A limit above the hard one cannot be raised without
		// privileges, and the process cannot go beyond it anyway.
		v = min(v, old.Max)
		// syscall.Setrlimit, not x/sys/unix's: it keeps the Go runtime
		// from restoring its own RLIMIT_NOFILE at the exec.
		if err := syscall.Setrlimit(resource, &syscall.Rlimit{Cur: v, Max: v}); err != nil {
			fmt.Fprintf(os.Stderr, "shoal: setrlimit %s: %v\n", name, err)
			return false
		}
		return true
	}
	if !set(unix.RLIMIT_NOFILE, "RLIMIT_NOFILE", nofile) || !set(unix.RLIMIT_AS, "RLIMIT_AS", as) {
		return 126
	}
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envLimits+"=") && !strings.HasPrefix(kv, envExec+"=") {
			env = append(env, kv)
		}
	}
	err := syscall.Exec(path, os.Args, env)
	fmt.Fprintf(os.Stderr, "shoal: exec %s: %v\n", path, err)
	return 127
}

// self is this binary, the trampoline; "" if it cannot be found, and
// then limits are set on the started process instead.
var self = sync.OnceValue(func() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	return exe
})

// startLocked starts a process in a process group of its own, with the
// parent-death signal, in cg if not nil, and sets its rlimits. It must
// run on a goroutine locked to its thread until the process has exited.
// wait reaps the process.
func startLocked(path string, args []string, dir string, env []string, stdin, stdout, stderr *os.File, cg *cgroup, l Limits) (pid int, wait func() *os.ProcessState, err error) {
	cmd := &exec.Cmd{Path: path, Args: args, Dir: dir, Env: env, Stdout: stdout, Stderr: stderr}
	memory := cg == nil && l.MemoryBytes > 0
	trampolined := false
	if exe := self(); exe != "" && (l.OpenFiles > 0 || memory) {
		as := uint64(0)
		if memory {
			as = uint64(l.MemoryBytes)
		}
		cmd.Path = exe
		cmd.Env = append(slices.Clip(env), envExec+"="+path, fmt.Sprintf("%s=%d %d", envLimits, l.OpenFiles, as))
		trampolined = true
	}
	if stdin != nil {
		cmd.Stdin = stdin
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if cg != nil {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cg.fd.Fd())
	}
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	wait = func() *os.ProcessState {
		_ = cmd.Wait() // its error is in the state
		return cmd.ProcessState
	}
	if trampolined {
		return cmd.Process.Pid, wait, nil
	}
	if err := setRlimits(cmd.Process.Pid, l, cg == nil); err != nil {
		_ = signalGroup(cmd.Process.Pid, syscall.SIGKILL)
		wait()
		return 0, nil, err
	}
	return cmd.Process.Pid, wait, nil
}

// setRlimits sets RLIMIT_NOFILE, and RLIMIT_AS when memory has no
// cgroup, on a started process. A limit above the process's hard limit
// is lowered to it: it could not be raised without privileges, and the
// process cannot go beyond it anyway.
func setRlimits(pid int, l Limits, memory bool) error {
	set := func(resource int, name string, v uint64) error {
		var old unix.Rlimit
		if err := unix.Prlimit(pid, resource, nil, &old); err != nil {
			return &os.SyscallError{Syscall: "prlimit " + name, Err: err}
		}
		v = min(v, old.Max)
		if err := unix.Prlimit(pid, resource, &unix.Rlimit{Cur: v, Max: v}, nil); err != nil {
			return &os.SyscallError{Syscall: "prlimit " + name, Err: err}
		}
		return nil
	}
	if l.OpenFiles > 0 {
		if err := set(unix.RLIMIT_NOFILE, "RLIMIT_NOFILE", l.OpenFiles); err != nil {
			return err
		}
	}
	if memory && l.MemoryBytes > 0 {
		if err := set(unix.RLIMIT_AS, "RLIMIT_AS", uint64(l.MemoryBytes)); err != nil {
			return err
		}
	}
	return nil
}

// signalGroup signals the process group that pid leads.
func signalGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}

// waitExited blocks until the child pid has exited, without reaping it
// (waitid with WNOWAIT): its pid, and its process group's id, stay
// reserved until it is reaped.
func waitExited(pid int) error {
	var info [128]byte // siginfo_t, not read
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, unix.P_PID, uintptr(pid), uintptr(unsafe.Pointer(&info)), syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		switch errno {
		case 0:
			return nil
		case syscall.EINTR:
		default:
			return errno
		}
	}
}

// isCgroup2 reports whether dir is in a cgroup v2 file system.
func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// running reports whether pid is a process, of any user (EPERM: it is
// someone else's).
func running(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// ownedByMe reports whether path belongs to the runner's user.
func ownedByMe(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Getuid()
}
