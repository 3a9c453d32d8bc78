//go:build !linux

package process

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

func supported() error {
	return fmt.Errorf("process: functions run as processes on Linux only: %w", errors.ErrUnsupported)
}

func startLocked(string, []string, string, []string, *os.File, *os.File, *os.File, *cgroup, Limits) (int, func() *os.ProcessState, error) {
	return 0, nil, supported()
}

func signalGroup(int, syscall.Signal) error { return supported() }

func waitExited(int) error { return supported() }

func isCgroup2(string) bool { return false }

func running(int) bool { return true }

func ownedByMe(string) bool { return false }

func listensInGroup(string, int) error { return nil }
