//go:build linux

package main

import (
	"os"
	"os/exec"
	"syscall"
)

// setChildProcAttr puts a benchmark child in a process group of its own
// and has it killed if the benchmark dies.
func setChildProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killChildGroup sends SIGKILL to p's process group.
func killChildGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }
