//go:build linux

package process

import (
	"os"
	"os/exec"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func supported() error { return nil }

// startLocked starts a process in a process group of its own, with the
// parent-death signal, in cg if not nil, and sets its rlimits. It must
// run on a goroutine locked to its thread until the process has exited.
// wait reaps the process.
func startLocked(path string, args []string, dir string, env []string, stdin, stdout, stderr *os.File, cg *cgroup, l Limits) (pid int, wait func() *os.ProcessState, err error) {
	cmd := &exec.Cmd{Path: path, Args: args, Dir: dir, Env: env, Stdout: stdout, Stderr: stderr}
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
