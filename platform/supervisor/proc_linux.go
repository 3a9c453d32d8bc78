//go:build linux

package supervisor

import (
	"os"
	"os/exec"
	"syscall"
	"unsafe"
)

// setProcAttr puts the worker in a process group of its own and has it
// killed when the supervisor's process dies.
func setProcAttr(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	a := cmd.SysProcAttr
	if !a.Setsid { // a new session is a new group already
		a.Setpgid, a.Pgid = true, 0
	}
	a.Pdeathsig = syscall.SIGKILL
}

// signalGroup signals the worker's process group: the worker and the
// processes it started.
func signalGroup(p *os.Process, sig syscall.Signal) error {
	return syscall.Kill(-p.Pid, sig)
}

// pPID is waitid's P_PID: wait for the process whose pid is given.
const pPID = 1

// waitExited blocks until the child pid has exited, without reaping it
// (waitid with WNOWAIT): its pid, and its process group id, stay
// reserved until cmd.Wait.
func waitExited(pid int) error {
	var info [128]byte // siginfo_t, not read
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info)), syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		switch errno {
		case 0:
			return nil
		case syscall.EINTR:
		default:
			return errno
		}
	}
}
