//go:build !linux

package main

import (
	"os"
	"os/exec"
	"syscall"
)

// setChildProcAttr puts a benchmark child in a process group of its own;
// there is no parent-death signal here.
func setChildProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// killChildGroup sends SIGKILL to p's process group.
func killChildGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }
