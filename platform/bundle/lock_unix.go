//go:build unix

package bundle

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// tryLock takes the lock file at path without waiting: ok is false when
// someone else, in this process or another, holds it. flock locks belong
// to an open file, so two goroutines exclude each other too; the kernel
// releases the lock of a process that dies. Where the file system has no
// locks, it succeeds: processes may then download a version each.
func tryLock(path string) (unlock func(), ok bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	// LOCK_NB: the call does not block, so no signal interrupts it.
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, false, nil
	}
	if err != nil {
		// A file system without locks (some network ones): go on
		// without; the rename into place keeps the first download.
		f.Close()
		return func() {}, true, nil
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, true, nil
}
