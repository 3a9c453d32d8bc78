//go:build unix

package loadgen

import (
	"net"
	"syscall"
)

// connAlive peeks at conn without blocking: alive while nothing is to be
// read and the peer has not closed it.
func connAlive(conn net.Conn) (alive, ok bool) {
	sc, isSyscall := conn.(syscall.Conn)
	if !isSyscall {
		return false, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false, true
	}
	var buf [1]byte
	cerr := raw.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true // never wait
	})
	return alive && cerr == nil, true
}
