//go:build !linux

package supervisor

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// Elsewhere than on Linux, a worker shares the supervisor's process
// group, has no parent-death signal, and only the worker itself is
// signalled, not the processes it starts.
func setProcAttr(*exec.Cmd) {}

func signalGroup(p *os.Process, sig syscall.Signal) error { return p.Signal(sig) }

func waitExited(int) error { return errors.ErrUnsupported }
